#include "log_throttle.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace portico::proxy {
namespace {

using namespace std::chrono_literals;
using Clock = LogThrottle::Clock;

TEST(LogThrottle, FirstEventIsReportedAtOnce) {
  LogThrottle t(1s);
  Clock::time_point t0{};
  EXPECT_EQ(t.event(t0 + 5s), 1u);
  EXPECT_EQ(t.pending(), 0u);
}

TEST(LogThrottle, BurstIsOneLineThenOneSummary) {
  LogThrottle t(1s);
  Clock::time_point t0 = Clock::time_point{} + 100s;
  EXPECT_EQ(t.event(t0), 1u);
  for (int i = 1; i <= 9; ++i) {
    EXPECT_EQ(t.event(t0 + i * 10ms), 0u) << i;
  }
  EXPECT_EQ(t.pending(), 9u);
  // Not due before the interval has passed since the last line...
  EXPECT_EQ(t.flush(t0 + 999ms), 0u);
  // ...then the nine held back are reported once.
  EXPECT_EQ(t.flush(t0 + 1s), 9u);
  EXPECT_EQ(t.flush(t0 + 5s), 0u);
  EXPECT_EQ(t.pending(), 0u);
}

TEST(LogThrottle, EventAfterTheIntervalCarriesTheHeldBackCount) {
  LogThrottle t(1s);
  Clock::time_point t0 = Clock::time_point{} + 100s;
  EXPECT_EQ(t.event(t0), 1u);
  EXPECT_EQ(t.event(t0 + 200ms), 0u);
  EXPECT_EQ(t.event(t0 + 400ms), 0u);
  EXPECT_EQ(t.event(t0 + 1200ms), 3u);  // two held back + this one
  // The interval restarts at the line just reported.
  EXPECT_EQ(t.event(t0 + 1900ms), 0u);
  EXPECT_EQ(t.event(t0 + 2200ms), 2u);
}

TEST(LogThrottle, AtMostOneLinePerIntervalAndNoEventLost) {
  LogThrottle t(1s);
  Clock::time_point t0 = Clock::time_point{} + 100s;
  std::uint64_t reported = 0;
  int lines = 0;
  // 10,000 events over 5 s: at most one line per started second.
  for (int i = 0; i < 10'000; ++i) {
    std::uint64_t n = t.event(t0 + std::chrono::microseconds(i * 500));
    if (n > 0) {
      ++lines;
      reported += n;
    }
  }
  reported += t.flush(t0 + 60s);
  EXPECT_EQ(reported, 10'000u);
  EXPECT_LE(lines, 5);
  EXPECT_GE(lines, 5);
}

TEST(LogThrottle, CountsAreExactAcrossThreads) {
  LogThrottle t(1h);
  std::atomic<std::uint64_t> reported{0};
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1'000; ++i) {
        reported += t.event(Clock::now());
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(reported.load(), 1u);  // one line in the hour
  EXPECT_EQ(t.pending(), 3'999u);
  EXPECT_EQ(t.flush(Clock::now() + 2h), 3'999u);
}

}  // namespace
}  // namespace portico::proxy
