// Monitor rules, health-set roll-up, glob matching, enum names and
// Exchange's defaults. Pure logic: fake wall time, no loop.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "monitor.h"
#include "portico/health.h"

namespace portico::health {

inline void PrintTo(AlertValue value, std::ostream* os) {
  *os << alertValueName(value);
}

namespace {

using std::chrono::seconds;

const SystemTime kT0 = SystemTime(std::chrono::hours(24 * 365 * 56));  // ~2026

ProbeResult result(ResultType type, ProbeStep step = ProbeStep::kDone, std::string error = "") {
  ProbeResult r;
  r.result = type;
  r.failed_step = step;
  r.error = std::move(error);
  return r;
}

MonitorSettings settings(std::uint32_t unhealthy_after, std::uint32_t healthy_after,
                         double threshold = 0) {
  MonitorSettings s;
  s.unhealthy_after = unhealthy_after;
  s.healthy_after = healthy_after;
  s.threshold = threshold;
  return s;
}

ConsecutiveFailureMonitor selfTest(std::uint32_t unhealthy_after = 4,
                                   std::uint32_t healthy_after = 2) {
  return ConsecutiveFailureMonitor({"ImapSelfTestMonitor", "mbx1"}, "IMAP.Protocol",
                                   settings(unhealthy_after, healthy_after));
}

TEST(ConsecutiveFailureMonitor, StartsUnknownWithNoTimes) {
  auto m = selfTest();
  EXPECT_EQ(m.value(), AlertValue::kUnknown);
  EXPECT_FALSE(m.firstAlertObservedTime());
  EXPECT_FALSE(m.lastTransitionTime());
  EXPECT_FALSE(m.lastExecutionTime());
  EXPECT_FALSE(m.lastExecutionResult());
  EXPECT_EQ(m.error(), "");
}

TEST(ConsecutiveFailureMonitor, FirstSuccessMakesUnknownHealthy) {
  auto m = selfTest();
  EXPECT_TRUE(m.record(result(ResultType::kSucceeded), kT0));
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  EXPECT_EQ(m.lastTransitionTime(), kT0);
  EXPECT_EQ(m.lastExecutionTime(), kT0);
  EXPECT_EQ(m.lastExecutionResult(), ResultType::kSucceeded);
}

TEST(ConsecutiveFailureMonitor, UnhealthyAfterExactlyNFailuresInARow) {
  auto m = selfTest(4);
  m.record(result(ResultType::kSucceeded), kT0);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_FALSE(m.record(result(ResultType::kFailed, ProbeStep::kConnect, "refused"),
                          kT0 + seconds(60 * i)));
    EXPECT_EQ(m.value(), AlertValue::kHealthy) << i;
  }
  EXPECT_TRUE(
      m.record(result(ResultType::kTimedOut, ProbeStep::kGreeting, "slow"), kT0 + seconds(240)));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_EQ(m.firstAlertObservedTime(), kT0 + seconds(240));
  EXPECT_EQ(m.lastTransitionTime(), kT0 + seconds(240));
  EXPECT_EQ(m.lastExecutionResult(), ResultType::kTimedOut);
  EXPECT_EQ(m.error(), "TimedOut at greeting: slow");
}

TEST(ConsecutiveFailureMonitor, ASuccessResetsTheFailureStreak) {
  auto m = selfTest(4);
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 3; ++i) {
      m.record(result(ResultType::kFailed), kT0);
    }
    m.record(result(ResultType::kSucceeded), kT0);
  }
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  EXPECT_EQ(m.badInARow(), 0u);
}

TEST(ConsecutiveFailureMonitor, FromUnknownFailuresBelowThresholdStayUnknown) {
  auto m = selfTest(5);
  for (int i = 0; i < 4; ++i) {
    m.record(result(ResultType::kFailed), kT0);
  }
  EXPECT_EQ(m.value(), AlertValue::kUnknown);
  m.record(result(ResultType::kFailed), kT0 + seconds(1));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
}

TEST(ConsecutiveFailureMonitor, RecoversOnlyAfterHealthyAfterSuccessesInARow) {
  auto m = selfTest(2, 3);
  m.record(result(ResultType::kFailed), kT0);
  m.record(result(ResultType::kFailed), kT0 + seconds(1));
  ASSERT_EQ(m.value(), AlertValue::kUnhealthy);
  m.record(result(ResultType::kSucceeded), kT0 + seconds(2));
  m.record(result(ResultType::kSucceeded), kT0 + seconds(3));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_EQ(m.error(), "");                                 // the last execution succeeded
  m.record(result(ResultType::kFailed), kT0 + seconds(4));  // breaks the streak
  m.record(result(ResultType::kSucceeded), kT0 + seconds(5));
  m.record(result(ResultType::kSucceeded), kT0 + seconds(6));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_TRUE(m.record(result(ResultType::kSucceeded), kT0 + seconds(7)));
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  EXPECT_FALSE(m.firstAlertObservedTime());  // the alert is over
  EXPECT_EQ(m.lastTransitionTime(), kT0 + seconds(7));
}

TEST(ConsecutiveFailureMonitor, FirstAlertObservedTimeIsTheStartOfTheAlert) {
  auto m = selfTest(1);
  m.record(result(ResultType::kFailed), kT0);
  m.record(result(ResultType::kFailed), kT0 + seconds(60));
  m.record(result(ResultType::kFailed), kT0 + seconds(120));
  EXPECT_EQ(m.firstAlertObservedTime(), kT0);
  EXPECT_EQ(m.lastTransitionTime(), kT0);
  EXPECT_EQ(m.lastExecutionTime(), kT0 + seconds(120));
}

TEST(ConsecutiveFailureMonitor, ZeroThresholdsActAsOne) {
  auto m = selfTest(0, 0);
  m.record(result(ResultType::kFailed), kT0);
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  m.record(result(ResultType::kSucceeded), kT0);
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
}

TEST(MonitorOverride, DisabledAndRepairingReplaceTheShownValue) {
  auto m = selfTest(1);
  m.record(result(ResultType::kFailed), kT0);
  ASSERT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_TRUE(m.setOverride(AlertValue::kRepairing, kT0 + seconds(10)));
  EXPECT_EQ(m.value(), AlertValue::kRepairing);
  EXPECT_EQ(m.computedValue(), AlertValue::kUnhealthy);
  EXPECT_EQ(m.lastTransitionTime(), kT0 + seconds(10));
  EXPECT_TRUE(m.setOverride(AlertValue::kDisabled, kT0 + seconds(20)));
  EXPECT_EQ(m.value(), AlertValue::kDisabled);
  EXPECT_FALSE(m.setOverride(AlertValue::kDisabled, kT0 + seconds(30)));
  EXPECT_EQ(m.lastTransitionTime(), kT0 + seconds(20));
}

TEST(MonitorOverride, ObservationsContinueUnderneath) {
  auto m = selfTest(1, 1);
  m.setOverride(AlertValue::kDisabled, kT0);
  m.record(result(ResultType::kFailed), kT0 + seconds(1));
  EXPECT_EQ(m.value(), AlertValue::kDisabled);
  EXPECT_EQ(m.firstAlertObservedTime(), kT0 + seconds(1));
  EXPECT_EQ(m.lastTransitionTime(), kT0);  // the shown value did not change
  EXPECT_TRUE(m.setOverride(std::nullopt, kT0 + seconds(2)));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_EQ(m.lastTransitionTime(), kT0 + seconds(2));
}

TEST(MonitorOverride, TimedOverrideExpiresAtItsTimeOnTheFakeClock) {
  auto m = selfTest(1);
  m.record(result(ResultType::kFailed), kT0);
  ASSERT_EQ(m.value(), AlertValue::kUnhealthy);
  const SystemTime expires = kT0 + std::chrono::hours(2);
  EXPECT_TRUE(m.applyOverride(OverrideInfo{AlertValue::kDisabled, expires, "root (uid 0)"}, kT0));
  EXPECT_EQ(m.value(), AlertValue::kDisabled);
  ASSERT_TRUE(m.overrideInfo());
  EXPECT_EQ(m.overrideInfo()->by, "root (uid 0)");
  EXPECT_EQ(m.overrideInfo()->expires, expires);
  // A millisecond before its expiry it holds; at its expiry it goes, and
  // the computed value (still Unhealthy underneath) shows again.
  EXPECT_FALSE(m.expireOverride(expires - Millis(1)));
  EXPECT_EQ(m.value(), AlertValue::kDisabled);
  EXPECT_TRUE(m.expireOverride(expires));
  EXPECT_FALSE(m.overrideInfo());
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_EQ(m.lastTransitionTime(), expires);
  EXPECT_FALSE(m.expireOverride(expires + std::chrono::hours(1)));  // nothing left to expire
}

TEST(MonitorOverride, OverrideWithoutExpiryNeverExpires) {
  auto m = selfTest(1);
  m.setOverride(AlertValue::kRepairing, kT0);
  EXPECT_FALSE(m.expireOverride(kT0 + std::chrono::hours(24 * 365)));
  EXPECT_EQ(m.value(), AlertValue::kRepairing);
  // Healthy as a timed override: shown, and replaced by the next override.
  m.applyOverride(OverrideInfo{AlertValue::kHealthy, kT0 + seconds(5), "ops"}, kT0);
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  EXPECT_TRUE(m.expireOverride(kT0 + seconds(5)));
  EXPECT_EQ(m.value(), AlertValue::kUnknown);
}

TEST(SampledThresholdMonitor, UnhealthyAfterTwoSamplesAboveThreshold) {
  SampledThresholdMonitor m({"AverageCommandProcessingTimeGt60sMonitor", "mbx1"}, "IMAP",
                            defaultMonitorSettings("AverageCommandProcessingTimeGt60sMonitor"),
                            "average command processing time", "ms");
  EXPECT_EQ(m.value(), AlertValue::kUnknown);
  m.sample(100, kT0);
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  m.sample(60'001, kT0 + seconds(60));
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  m.sample(60'000, kT0 + seconds(120));  // at the threshold is not above it
  m.sample(75'000, kT0 + seconds(180));
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  m.sample(72'000, kT0 + seconds(240));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  EXPECT_EQ(m.firstAlertObservedTime(), kT0 + seconds(240));
  EXPECT_EQ(m.error(), "average command processing time 72000 ms is above 60000 ms");
  EXPECT_EQ(m.lastExecutionResult(), ResultType::kFailed);
  EXPECT_EQ(m.lastSample(), 72'000);
  m.sample(10, kT0 + seconds(300));
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  m.sample(10, kT0 + seconds(360));
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
  EXPECT_EQ(m.lastExecutionResult(), ResultType::kSucceeded);
}

TEST(SampledThresholdMonitor, QueuedThresholdAndCustomHealthyAfter) {
  MonitorSettings s = defaultMonitorSettings("RequestsQueuedGt500Monitor");
  s.healthy_after = 1;
  SampledThresholdMonitor m({"RequestsQueuedGt500Monitor", "mbx1"}, "IMAP", s, "commands queued",
                            "commands");
  m.sample(501, kT0);
  m.sample(900, kT0);
  EXPECT_EQ(m.value(), AlertValue::kUnhealthy);
  m.sample(500, kT0);
  EXPECT_EQ(m.value(), AlertValue::kHealthy);
}

TEST(HealthSet, IsTheWorstMonitor) {
  using A = AlertValue;
  EXPECT_EQ(worstAlertValue({}), A::kUnknown);
  EXPECT_EQ(worstAlertValue({A::kHealthy, A::kHealthy}), A::kHealthy);
  EXPECT_EQ(worstAlertValue({A::kHealthy, A::kUnhealthy, A::kHealthy}), A::kUnhealthy);
  EXPECT_EQ(worstAlertValue({A::kHealthy, A::kUnknown}), A::kUnknown);
  EXPECT_EQ(worstAlertValue({A::kHealthy, A::kDisabled}), A::kHealthy);
  EXPECT_EQ(worstAlertValue({A::kDisabled, A::kDisabled}), A::kDisabled);
  EXPECT_EQ(worstAlertValue({A::kRepairing, A::kHealthy}), A::kRepairing);
  EXPECT_EQ(worstAlertValue({A::kRepairing, A::kUnhealthy}), A::kUnhealthy);
  EXPECT_EQ(worstAlertValue({A::kDegraded, A::kHealthy}), A::kDegraded);
  EXPECT_GT(severity(A::kUnhealthy), severity(A::kRepairing));
  EXPECT_GT(severity(A::kRepairing), severity(A::kDegraded));
  EXPECT_GT(severity(A::kDegraded), severity(A::kUnknown));
  EXPECT_GT(severity(A::kUnknown), severity(A::kHealthy));
  EXPECT_GT(severity(A::kHealthy), severity(A::kDisabled));
}

TEST(Glob, StarQuestionAndCase) {
  EXPECT_TRUE(globMatch("", "IMAP.Proxy"));
  EXPECT_TRUE(globMatch("*", ""));
  EXPECT_TRUE(globMatch("*", "IMAP"));
  EXPECT_TRUE(globMatch("IMAP", "imap"));
  EXPECT_FALSE(globMatch("IMAP", "IMAP.Proxy"));
  EXPECT_TRUE(globMatch("IMAP*", "IMAP"));
  EXPECT_TRUE(globMatch("IMAP*", "IMAP.Protocol"));
  EXPECT_TRUE(globMatch("imap.p*", "IMAP.Proxy"));
  EXPECT_FALSE(globMatch("imap.p*", "IMAP"));
  EXPECT_TRUE(globMatch("IMAP.Pro??", "IMAP.Proxy"));
  EXPECT_FALSE(globMatch("IMAP.Pro??", "IMAP.Protocol"));
  EXPECT_TRUE(globMatch("*.*o*", "IMAP.Protocol"));
  EXPECT_TRUE(globMatch("*Proxy", "IMAP.Proxy"));
  EXPECT_FALSE(globMatch("?", ""));
  EXPECT_TRUE(globMatch("a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"));
  EXPECT_FALSE(globMatch("a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

TEST(Names, ExchangeSpellings) {
  EXPECT_STREQ(alertValueName(AlertValue::kUnknown), "Unknown");
  EXPECT_STREQ(alertValueName(AlertValue::kHealthy), "Healthy");
  EXPECT_STREQ(alertValueName(AlertValue::kDegraded), "Degraded");
  EXPECT_STREQ(alertValueName(AlertValue::kUnhealthy), "Unhealthy");
  EXPECT_STREQ(alertValueName(AlertValue::kRepairing), "Repairing");
  EXPECT_STREQ(alertValueName(AlertValue::kDisabled), "Disabled");
  EXPECT_STREQ(resultTypeName(ResultType::kSucceeded), "Succeeded");
  EXPECT_STREQ(resultTypeName(ResultType::kFailed), "Failed");
  EXPECT_STREQ(resultTypeName(ResultType::kTimedOut), "TimedOut");
  EXPECT_STREQ(probeStepName(ProbeStep::kConnect), "connect");
  EXPECT_STREQ(probeStepName(ProbeStep::kGreeting), "greeting");
  EXPECT_STREQ(probeStepName(ProbeStep::kLogin), "login");
  EXPECT_STREQ(probeStepName(ProbeStep::kSelect), "select");
  EXPECT_STREQ(probeStepName(static_cast<ProbeStep>(200)), "unknown");
}

TEST(Defaults, ExchangeIntervalsTimeoutsAndThresholds) {
  auto p = defaultProbeSettings("ImapProxyTestProbe");
  EXPECT_EQ(p.interval, Millis(60'000));
  EXPECT_EQ(p.timeout, Millis(55'000));
  EXPECT_EQ(p.retries, 3u);
  p = defaultProbeSettings("ImapCTPProbe");
  EXPECT_EQ(p.interval, Millis(240'000));
  EXPECT_EQ(p.timeout, Millis(115'000));
  p = defaultProbeSettings("ImapSelfTestProbe");
  EXPECT_EQ(p.interval, Millis(60'000));
  EXPECT_EQ(p.timeout, Millis(55'000));
  p = defaultProbeSettings("ImapDeepTestProbe");
  EXPECT_EQ(p.interval, Millis(180'000));
  EXPECT_EQ(p.timeout, Millis(110'000));
  EXPECT_EQ(p.retries, 3u);

  EXPECT_EQ(defaultMonitorSettings("ImapProxyTestMonitor").unhealthy_after, 4u);
  EXPECT_EQ(defaultMonitorSettings("ImapCTPMonitor").unhealthy_after, 5u);
  EXPECT_EQ(defaultMonitorSettings("ImapSelfTestMonitor").unhealthy_after, 4u);
  EXPECT_EQ(defaultMonitorSettings("ImapDeepTestMonitor").unhealthy_after, 5u);
  EXPECT_EQ(defaultMonitorSettings("ImapDeepTestMonitor").healthy_after, 2u);
  auto gt60 = defaultMonitorSettings("AverageCommandProcessingTimeGt60sMonitor");
  EXPECT_EQ(gt60.unhealthy_after, 2u);
  EXPECT_EQ(gt60.threshold, 60'000);
  EXPECT_EQ(gt60.sample_interval, Millis(60'000));
  auto queued = defaultMonitorSettings("RequestsQueuedGt500Monitor");
  EXPECT_EQ(queued.unhealthy_after, 2u);
  EXPECT_EQ(queued.threshold, 500);
}

}  // namespace
}  // namespace portico::health
