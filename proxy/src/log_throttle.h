// Rate limit for a log line about an event that can repeat thousands of
// times a second (accept failing for lack of file descriptors): at most one
// line per interval, and each line says how many events it stands for, so
// the count in the log stays exact while the log itself stays small.
//
// Thread-safe (a mutex: only error paths take it). Time is passed in, so
// tests need no clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>

namespace portico::proxy {

class LogThrottle {
 public:
  using Clock = std::chrono::steady_clock;

  explicit LogThrottle(Clock::duration interval) : interval_(interval) {}

  // Records one event at `now`. Returns how many events to report in a line
  // now (this one and those held back since the last line), or 0 when the
  // last line is less than an interval old and this event is held back.
  std::uint64_t event(Clock::time_point now);

  // The held-back events once their interval has passed: their count (they
  // are then reported), else 0. A timer calls this so that the tail of a
  // burst is reported even when no further event comes.
  std::uint64_t flush(Clock::time_point now);

  // Every held-back event, due or not (at shutdown: report, don't lose).
  std::uint64_t drain();

  // Events held back and not reported yet.
  std::uint64_t pending() const;

  Clock::duration interval() const { return interval_; }

 private:
  std::uint64_t takeIfDue(Clock::time_point now);

  mutable std::mutex mu_;
  const Clock::duration interval_;
  std::optional<Clock::time_point> last_line_;
  std::uint64_t pending_ = 0;
};

}  // namespace portico::proxy
