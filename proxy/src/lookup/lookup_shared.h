// What the workers' lookup stages share with the control thread: the
// stage's counters (for /metrics), the feed of directory answers for the
// health model's DirectoryLookupMonitor, and the rate limit of the
// "directory unavailable" log line. One per process, in ProcessState.
#pragma once

#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "log_throttle.h"
#include "lookup/lookup.h"

namespace portico::proxy {

// Directory answers (not cache hits) in order, for a consecutive-failure
// monitor on the control loop. Workers record, the control loop drains
// every 250 ms. Bounded: only the newest kMax observations are kept, which
// is all a consecutive-failure count needs. Error texts never hold a
// password (lookup.h's contract).
class LookupHealthFeed {
 public:
  static constexpr std::size_t kMax = 64;
  struct Observation {
    bool ok = true;
    std::string error;
  };

  void record(bool ok, std::string_view error) {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= kMax) {
      queue_.pop_front();
    }
    queue_.push_back({ok, std::string(error)});
  }

  std::vector<Observation> drain() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Observation> out(std::make_move_iterator(queue_.begin()),
                                 std::make_move_iterator(queue_.end()));
    queue_.clear();
    return out;
  }

 private:
  std::mutex mu_;
  std::deque<Observation> queue_;
};

struct LookupShared {
  LookupStats stats;  // every worker's stage counts here (relaxed atomics)
  LookupHealthFeed health;
  // "directory lookup failed" lines: at most one a second, with a count.
  LogThrottle unavailable_log{std::chrono::seconds(1)};
};

// Prometheus text for the lookup stage (appended to /metrics):
// portico_lookup_duration_seconds (histogram of directory queries; cache
// hits are not timed), portico_lookup_answers_total{outcome},
// portico_lookup_cache_hits_total, portico_lookup_cache_misses_total.
// Counters only: never a user name or a password.
std::string renderLookupMetrics(const LookupStats& stats);

}  // namespace portico::proxy
