#include "log_throttle.h"

#include <utility>

namespace portico::proxy {

std::uint64_t LogThrottle::takeIfDue(Clock::time_point now) {
  if (pending_ == 0 || (last_line_ && now - *last_line_ < interval_)) {
    return 0;
  }
  std::uint64_t n = pending_;
  pending_ = 0;
  last_line_ = now;
  return n;
}

std::uint64_t LogThrottle::event(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  ++pending_;
  return takeIfDue(now);
}

std::uint64_t LogThrottle::flush(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  return takeIfDue(now);
}

std::uint64_t LogThrottle::drain() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(pending_, 0);
}

std::uint64_t LogThrottle::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_;
}

}  // namespace portico::proxy
