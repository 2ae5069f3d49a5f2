// The responder ladder (pure, fake time), the hook runner (real processes on
// a real loop) and the executor's effects on a fake ProxyView.
#include <gtest/gtest.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "portico/health.h"
#include "responder.h"

namespace portico::health {
namespace {

using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;
using A = AlertValue;
using S = ResponderStep;

const SystemTime kWall = SystemTime(std::chrono::hours(24 * 365 * 56));

const MonitorKey kProxy{"ImapProxyTestMonitor", ""};
const MonitorKey kSelf1{"ImapSelfTestMonitor", "mbx1"};
const MonitorKey kDeep1{"ImapDeepTestMonitor", "mbx1"};
const MonitorKey kSelf2{"ImapSelfTestMonitor", "mbx2"};
const MonitorKey kCtp1{"ImapCTPMonitor", "mbx1"};
const MonitorKey kGt60{"AverageCommandProcessingTimeGt60sMonitor", "mbx1"};
const MonitorKey kQueued{"RequestsQueuedGt500Monitor", "mbx1"};

std::vector<S> steps(const std::vector<ResponderAction>& actions) {
  std::vector<S> out;
  for (const auto& a : actions) {
    out.push_back(a.step);
  }
  return out;
}

// Drives a ladder through fake time.
struct LadderClock {
  ResponderLadder ladder{ResponderSettings{}};
  SteadyTime now{1'000'000};

  std::vector<ResponderAction> set(const MonitorKey& key, A value, std::string set = "IMAP") {
    return ladder.update(key, set, value, "probe failed", now, kWall + (now - SteadyTime(0)));
  }
  // Advances to `to` (from the alert start) tick by tick, like the service's
  // timer, collecting what fires.
  std::vector<ResponderAction> advance(Millis by) {
    std::vector<ResponderAction> out;
    const SteadyTime end = now + by;
    while (true) {
      auto due = ladder.nextDue();
      if (!due || *due > end) {
        break;
      }
      now = std::max(now, *due);
      auto fired = ladder.tick(now, kWall);
      out.insert(out.end(), fired.begin(), fired.end());
    }
    now = end;
    return out;
  }
};

TEST(ResponderLadder, ProxyTestTakesPorticoOfflineAtOnceAndBackOnRecovery) {
  LadderClock c;
  EXPECT_TRUE(c.set(kProxy, A::kHealthy, "IMAP.Proxy").empty());
  EXPECT_FALSE(c.ladder.offline());
  auto actions = c.set(kProxy, A::kUnhealthy, "IMAP.Proxy");
  ASSERT_EQ(steps(actions), std::vector<S>{S::kOffline});
  EXPECT_TRUE(c.ladder.offline());
  EXPECT_EQ(actions[0].key, kProxy);
  EXPECT_EQ(actions[0].health_set, "IMAP.Proxy");
  EXPECT_EQ(actions[0].state, A::kUnhealthy);
  EXPECT_NE(actions[0].reason.find("probe failed"), std::string::npos);
  // Repeating the value does nothing new.
  EXPECT_TRUE(c.set(kProxy, A::kUnhealthy, "IMAP.Proxy").empty());
  actions = c.set(kProxy, A::kHealthy, "IMAP.Proxy");
  EXPECT_EQ(steps(actions), std::vector<S>{S::kOnline});
  EXPECT_FALSE(c.ladder.offline());
}

TEST(ResponderLadder, HooksAtTwoAndTwentyMinutesEscalateAtForty) {
  LadderClock c;
  c.set(kProxy, A::kUnhealthy, "IMAP.Proxy");
  const SteadyTime t0 = c.now;
  EXPECT_EQ(c.ladder.nextDue(), t0 + minutes(2));
  EXPECT_TRUE(c.advance(minutes(2) - Millis(1)).empty());
  auto fired = c.advance(Millis(1));
  ASSERT_EQ(steps(fired), std::vector<S>{S::kHook});
  EXPECT_NE(fired[0].reason.find("Unhealthy for 2m"), std::string::npos) << fired[0].reason;
  EXPECT_EQ(c.ladder.nextDue(), t0 + minutes(20));
  EXPECT_TRUE(c.advance(minutes(18) - Millis(1)).empty());
  EXPECT_EQ(steps(c.advance(Millis(1))), std::vector<S>{S::kHook});
  EXPECT_EQ(c.ladder.nextDue(), t0 + minutes(40));
  EXPECT_TRUE(c.advance(minutes(20) - Millis(1)).empty());
  fired = c.advance(Millis(1));
  ASSERT_EQ(steps(fired), std::vector<S>{S::kEscalate});
  EXPECT_NE(fired[0].reason.find("Unhealthy for 40m"), std::string::npos);
  // Still Unhealthy: the next escalation waits 4 hours.
  EXPECT_EQ(c.ladder.nextDue(), t0 + minutes(40) + hours(4));
  EXPECT_TRUE(c.advance(hours(4) - Millis(1)).empty());
  EXPECT_EQ(steps(c.advance(Millis(1))), std::vector<S>{S::kEscalate});
}

TEST(ResponderLadder, EscalatesAtMostOncePerFourHoursAcrossAlerts) {
  LadderClock c;
  c.set(kSelf2, A::kUnhealthy);
  auto fired = c.advance(minutes(40));
  EXPECT_EQ(steps(fired), (std::vector<S>{S::kHook, S::kHook, S::kEscalate}));
  // Recovers, fails again an hour later: hooks again, but no escalation
  // until four hours after the last one.
  c.set(kSelf2, A::kHealthy);
  c.advance(hours(1));
  c.set(kSelf2, A::kUnhealthy);
  const SteadyTime t1 = c.now;
  fired = c.advance(minutes(40));
  EXPECT_EQ(steps(fired), (std::vector<S>{S::kHook, S::kHook}));
  // The first escalation was at 40m; four hours later is t1 + 3h.
  fired = c.advance(hours(2) + minutes(20) - Millis(1));
  EXPECT_TRUE(fired.empty());
  fired = c.advance(Millis(1));
  EXPECT_EQ(steps(fired), std::vector<S>{S::kEscalate});
  EXPECT_EQ(c.now - t1, hours(3));
}

TEST(ResponderLadder, SelfTestDrainsTheBackendAtOnce) {
  LadderClock c;
  auto actions = c.set(kSelf1, A::kUnhealthy, "IMAP.Protocol");
  ASSERT_EQ(steps(actions), std::vector<S>{S::kDrain});
  EXPECT_EQ(actions[0].key.target, "mbx1");
  EXPECT_TRUE(c.ladder.drained("mbx1"));
  EXPECT_FALSE(c.ladder.drained("mbx2"));
  EXPECT_FALSE(c.ladder.offline());
}

TEST(ResponderLadder, UndrainsOnlyWhenBothSelfAndDeepAreNoLongerUnhealthy) {
  LadderClock c;
  EXPECT_EQ(steps(c.set(kDeep1, A::kUnhealthy)), std::vector<S>{S::kDrain});
  EXPECT_TRUE(c.set(kSelf1, A::kUnhealthy).empty());  // already drained
  EXPECT_TRUE(c.set(kDeep1, A::kHealthy).empty());    // self test still failing
  EXPECT_TRUE(c.ladder.drained("mbx1"));
  // Another backend's recovery does not touch mbx1.
  c.set(kSelf2, A::kUnhealthy);
  c.set(kSelf2, A::kHealthy);
  EXPECT_TRUE(c.ladder.drained("mbx1"));
  auto actions = c.set(kSelf1, A::kHealthy);
  ASSERT_EQ(steps(actions), std::vector<S>{S::kUndrain});
  EXPECT_EQ(actions[0].key.target, "mbx1");
  EXPECT_FALSE(c.ladder.drained("mbx1"));
}

TEST(ResponderLadder, DrainMonitorsAlsoGetHooksAndEscalation) {
  LadderClock c;
  c.set(kDeep1, A::kUnhealthy);
  EXPECT_EQ(steps(c.advance(hours(1))), (std::vector<S>{S::kHook, S::kHook, S::kEscalate}));
}

TEST(ResponderLadder, CtpGetsHooksAndEscalationButNoDrain) {
  LadderClock c;
  EXPECT_TRUE(c.set(kCtp1, A::kUnhealthy).empty());
  EXPECT_FALSE(c.ladder.drained("mbx1"));
  EXPECT_EQ(steps(c.advance(hours(1))), (std::vector<S>{S::kHook, S::kHook, S::kEscalate}));
}

TEST(ResponderLadder, Gt60AndQueuedOnlyEscalate) {
  for (const MonitorKey& key : {kGt60, kQueued}) {
    LadderClock c;
    EXPECT_TRUE(c.set(key, A::kUnhealthy).empty()) << key.monitor;
    EXPECT_FALSE(c.ladder.drained("mbx1"));
    EXPECT_FALSE(c.ladder.offline());
    EXPECT_TRUE(c.advance(minutes(40) - Millis(1)).empty()) << key.monitor;
    EXPECT_EQ(steps(c.advance(Millis(1))), std::vector<S>{S::kEscalate}) << key.monitor;
    EXPECT_TRUE(c.advance(hours(4) - Millis(1)).empty()) << key.monitor;
    EXPECT_TRUE(c.set(key, A::kHealthy).empty());
  }
}

TEST(ResponderLadder, RecoveryCancelsPendingSteps) {
  LadderClock c;
  c.set(kProxy, A::kUnhealthy, "IMAP.Proxy");
  c.advance(minutes(3));
  c.set(kProxy, A::kHealthy, "IMAP.Proxy");
  EXPECT_FALSE(c.ladder.nextDue());
  EXPECT_TRUE(c.advance(hours(5)).empty());
  // A new alert starts the ladder over.
  c.set(kProxy, A::kUnhealthy, "IMAP.Proxy");
  EXPECT_EQ(c.ladder.nextDue(), c.now + minutes(2));
}

TEST(ResponderLadder, RepairingPausesTheLadderAndKeepsTheDrain) {
  LadderClock c;
  c.set(kSelf1, A::kUnhealthy);
  EXPECT_TRUE(c.set(kSelf1, A::kRepairing).empty());
  EXPECT_TRUE(c.ladder.drained("mbx1"));
  EXPECT_FALSE(c.ladder.nextDue());
  EXPECT_TRUE(c.advance(hours(1)).empty());
  // Cleared while still failing: no second drain, the ladder starts over.
  EXPECT_TRUE(c.set(kSelf1, A::kUnhealthy).empty());
  EXPECT_EQ(c.ladder.nextDue(), c.now + minutes(2));
  // Disabled ends the alert and releases the drain.
  EXPECT_EQ(steps(c.set(kSelf1, A::kDisabled)), std::vector<S>{S::kUndrain});
  EXPECT_FALSE(c.ladder.drained("mbx1"));
}

TEST(ResponderLadder, ForgetReleasesTheHold) {
  LadderClock c;
  c.set(kSelf1, A::kUnhealthy);
  EXPECT_EQ(steps(c.ladder.forget(kSelf1, c.now, kWall)), std::vector<S>{S::kUndrain});
  EXPECT_FALSE(c.ladder.drained("mbx1"));
  EXPECT_TRUE(c.ladder.forget(kSelf1, c.now, kWall).empty());
}

TEST(ResponderLadder, ConfigurableStepsAndBoundedLog) {
  ResponderSettings settings;
  settings.hook_after = {Millis(0), seconds(30)};
  settings.escalate_after = minutes(1);
  settings.escalate_every = minutes(10);
  ResponderLadder ladder(settings, 5);
  auto now = SteadyTime(0);
  auto actions = ladder.update(kProxy, "IMAP.Proxy", A::kUnhealthy, "x", now, kWall);
  EXPECT_EQ(steps(actions), (std::vector<S>{S::kOffline, S::kHook}));
  for (int i = 0; i < 10; ++i) {
    ladder.update(kProxy, "IMAP.Proxy", A::kHealthy, "", now, kWall);
    ladder.update(kProxy, "IMAP.Proxy", A::kUnhealthy, "x", now, kWall);
  }
  EXPECT_EQ(ladder.actions().size(), 5u);
  const std::uint64_t last = ladder.actions().back().id;
  ladder.setOutcome(last, "exit 0");
  EXPECT_EQ(ladder.actions().back().outcome, "exit 0");
  ladder.setOutcome(1, "gone");  // dropped from the log: ignored
}

TEST(ResponderNames, StepsAndKinds) {
  EXPECT_STREQ(responderStepName(S::kOffline), "offline");
  EXPECT_STREQ(responderStepName(S::kOnline), "online");
  EXPECT_STREQ(responderStepName(S::kDrain), "drain");
  EXPECT_STREQ(responderStepName(S::kUndrain), "undrain");
  EXPECT_STREQ(responderStepName(S::kHook), "hook");
  EXPECT_STREQ(responderStepName(S::kEscalate), "escalate");
  EXPECT_EQ(responderKindFor("ImapProxyTestMonitor"), ResponderKind::kTakeOffline);
  EXPECT_EQ(responderKindFor("ImapSelfTestMonitor"), ResponderKind::kDrainBackend);
  EXPECT_EQ(responderKindFor("ImapDeepTestMonitor"), ResponderKind::kDrainBackend);
  EXPECT_EQ(responderKindFor("ImapCTPMonitor"), ResponderKind::kHookAndEscalate);
  EXPECT_EQ(responderKindFor("RequestsQueuedGt500Monitor"), ResponderKind::kEscalateOnly);
}

// ---------------------------------------------------------------------------
// Hooks and the executor, on a real loop.

class RecordingProxy : public ProxyView {
 public:
  std::vector<BackendLoad> backendLoad() override { return {}; }
  void setDrainedByResponder(const std::string& backend, bool drained, bool move) override {
    calls.push_back(backend + (drained ? " drained" : " undrained") + (move ? " move" : ""));
  }
  bool listenersUp() override { return true; }
  std::string proxyMetrics() override { return ""; }
  std::vector<std::string> calls;
};

std::string tempPath(const char* name) {
  return ::testing::TempDir() + name + std::to_string(::getpid());
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(HookRunner, RunsWithEnvironmentAndReportsExitStatus) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  const std::string out = tempPath("hook_env_");
  {
    HookRunner hooks(&loop);
    std::vector<std::string> outcomes;
    hooks.run("echo \"$PORTICO_STEP $PORTICO_MONITOR $PORTICO_TARGET\" > " + out + "; exit 3",
              {{"PORTICO_STEP", "hook"}, {"PORTICO_MONITOR", "M"}, {"PORTICO_TARGET", "T"}},
              seconds(10), [&](std::string outcome) { outcomes.push_back(outcome); });
    hooks.run("", {}, seconds(1), [&](std::string outcome) { outcomes.push_back(outcome); });
    EXPECT_EQ(hooks.running(), 1u);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(outcomes.size(), 2u);
    EXPECT_EQ(outcomes[0], "not run: no hook configured");
    EXPECT_EQ(outcomes[1], "exit 3");
    EXPECT_EQ(slurp(out), "hook M T\n");
    EXPECT_EQ(hooks.running(), 0u);
  }
  std::remove(out.c_str());
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(HookRunner, KillsAHookThatOutlivesItsTimeout) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  HookRunner hooks(&loop, 1);
  std::vector<std::string> outcomes;
  const auto start = std::chrono::steady_clock::now();
  // The shell's child must die too: it holds no pipe, so only the group
  // kill ends it; the test would still pass without, so check the time.
  hooks.run("sleep 30 & sleep 30; wait", {}, Millis(200),
            [&](std::string outcome) { outcomes.push_back(outcome); });
  hooks.run("true", {}, Millis(200), [&](std::string outcome) { outcomes.push_back(outcome); });
  uv_run(&loop, UV_RUN_DEFAULT);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0], "not run: 1 hooks still running");
  EXPECT_EQ(outcomes[1], "killed after 200 ms");
  EXPECT_LT(took, seconds(5));
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(HookRunner, StopKillsRunningHooks) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  HookRunner hooks(&loop);
  std::string outcome;
  bool stopped = false;
  hooks.run("sleep 30", {}, seconds(60), [&](std::string o) { outcome = o; });
  hooks.stop([&] { stopped = true; });
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(outcome, "killed: Portico is stopping");
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(ResponderExecutor, DrainsRunsHooksAndRecordsOutcomes) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  const std::string out = tempPath("hook_exec_");
  ResponderSettings settings;
  settings.hook =
      "echo \"$PORTICO_STEP|$PORTICO_MONITOR|$PORTICO_TARGET|$PORTICO_STATE|"
      "$PORTICO_HEALTH_SET\" >> " +
      out;
  settings.hook_after = {Millis(0)};
  settings.escalate_after = Millis(0);
  settings.move_sessions = true;
  ResponderLadder ladder(settings);
  HookRunner hooks(&loop);
  RecordingProxy proxy;
  ResponderExecutor executor(ladder, hooks, proxy);
  executor.execute(
      ladder.update(kSelf1, "IMAP.Protocol", A::kUnhealthy, "refused", SteadyTime(0), kWall));
  uv_run(&loop, UV_RUN_DEFAULT);
  executor.execute(ladder.update(kSelf1, "IMAP.Protocol", A::kHealthy, "", SteadyTime(10), kWall));
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(proxy.calls, (std::vector<std::string>{"mbx1 drained move", "mbx1 undrained"}));
  const std::string lines = slurp(out);
  EXPECT_NE(lines.find("hook|ImapSelfTestMonitor|mbx1|Unhealthy|IMAP.Protocol\n"),
            std::string::npos)
      << lines;
  EXPECT_NE(lines.find("escalate|ImapSelfTestMonitor|mbx1|Unhealthy|IMAP.Protocol\n"),
            std::string::npos)
      << lines;
  ASSERT_EQ(ladder.actions().size(), 4u);
  EXPECT_EQ(ladder.actions()[0].outcome, "drained, sessions moved");
  EXPECT_EQ(ladder.actions()[1].outcome, "exit 0");
  EXPECT_EQ(ladder.actions()[2].outcome, "logged; hook exit 0");
  EXPECT_EQ(ladder.actions()[3].outcome, "undrained");
  std::remove(out.c_str());
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(ResponderExecutor, EveryActionGoesToTheHistoryWithItsResult) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  ResponderSettings settings;
  settings.hook = "exit 0";
  settings.hook_after = {Millis(0)};
  ResponderLadder ladder(settings);
  HookRunner hooks(&loop);
  RecordingProxy proxy;
  ActionLog log(16);
  ResponderExecutor executor(ladder, hooks, proxy, &log);
  executor.execute(
      ladder.update(kSelf1, "IMAP.Protocol", A::kUnhealthy, "refused", SteadyTime(0), kWall),
      kWall);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(log.size(), 2u);
  // Newest first: the hook (its result arrived when it exited), then the drain.
  EXPECT_EQ(log.newest(0).action, "hook");
  EXPECT_EQ(log.newest(0).result, "exit 0");
  EXPECT_EQ(log.newest(1).kind, "responder");
  EXPECT_EQ(log.newest(1).action, "drain");
  EXPECT_EQ(log.newest(1).target, "mbx1");
  EXPECT_EQ(log.newest(1).by, "ImapSelfTestMonitor");
  EXPECT_EQ(log.newest(1).result, "drained");
  EXPECT_EQ(log.newest(1).time, kWall);
  EXPECT_NE(log.newest(1).reason.find("refused"), std::string::npos);
  EXPECT_EQ(proxy.calls, std::vector<std::string>{"mbx1 drained"});
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(ResponderExecutor, DryRunRecordsTheWholeLadderAndDoesNothing) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  const std::string out = tempPath("hook_dry_run_");
  std::remove(out.c_str());
  ResponderSettings settings;
  settings.dry_run = true;
  settings.hook = "echo ran >> " + out;
  ResponderLadder ladder(settings);
  HookRunner hooks(&loop);
  RecordingProxy proxy;
  ActionLog log(64);
  ResponderExecutor executor(ladder, hooks, proxy, &log);
  // Fake time: the proxy test and a self test fail, and stay failed for
  // 41 minutes (offline, drain, two hooks each, escalation), then recover.
  SteadyTime now(1'000);
  executor.execute(ladder.update(kProxy, "IMAP.Proxy", A::kUnhealthy, "timeout", now, kWall),
                   kWall);
  executor.execute(ladder.update(kSelf1, "IMAP.Protocol", A::kUnhealthy, "refused", now, kWall),
                   kWall);
  const SteadyTime end = now + minutes(41);
  while (auto due = ladder.nextDue()) {
    if (*due > end) {
      break;
    }
    now = std::max(now, *due);
    executor.execute(ladder.tick(now, kWall), kWall);
  }
  executor.execute(ladder.update(kSelf1, "IMAP.Protocol", A::kHealthy, "", end, kWall), kWall);
  executor.execute(ladder.update(kProxy, "IMAP.Proxy", A::kHealthy, "", end, kWall), kWall);
  uv_run(&loop, UV_RUN_DEFAULT);

  EXPECT_TRUE(proxy.calls.empty()) << proxy.calls.front();
  EXPECT_FALSE(std::ifstream(out).good()) << "a hook ran in dry-run";
  std::multiset<std::string> actions;
  for (std::size_t i = 0; i < log.size(); ++i) {
    actions.insert(log.newest(i).action + " " + log.newest(i).by);
    EXPECT_EQ(log.newest(i).result, "dry-run") << log.newest(i).action;
  }
  EXPECT_EQ(actions, (std::multiset<std::string>{
                         "offline ImapProxyTestMonitor", "hook ImapProxyTestMonitor",
                         "hook ImapProxyTestMonitor", "escalate ImapProxyTestMonitor",
                         "online ImapProxyTestMonitor", "drain ImapSelfTestMonitor",
                         "hook ImapSelfTestMonitor", "hook ImapSelfTestMonitor",
                         "escalate ImapSelfTestMonitor", "undrain ImapSelfTestMonitor"}));
  for (const ResponderAction& a : ladder.actions()) {
    EXPECT_EQ(a.outcome, "dry-run") << responderStepName(a.step);
  }
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace portico::health
