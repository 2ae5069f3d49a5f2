// Responders, in two halves:
//
// - ResponderLadder is pure logic with injected time. It is told every
//   monitor's shown AlertValue and decides *when* to act; it returns the
//   actions to take and keeps a bounded log of them. No I/O.
// - HookRunner and ResponderExecutor do the actions on the control loop:
//   drain/undrain through ProxyView, run the operator hook with uv_spawn
//   (bounded run time, then SIGKILL to its process group), write the
//   escalation log line.
//
// The ladder, per monitor that turned Unhealthy at t0 (ResponderSettings
// holds the times; Exchange's defaults shown):
//   t0        ImapProxyTestMonitor: take Portico offline (Exchange's
//             CafeOffline); /readyz answers 503 until it recovers.
//             ImapSelfTestMonitor, ImapDeepTestMonitor: drain the backend
//             (DatabaseCopyActivationDisabledAndMoveNow). It is undrained
//             once neither monitor of that backend is Unhealthy.
//   t0+2m     operator hook (Exchange restarts the service here),
//   t0+20m    the hook again,
//   t0+40m    escalate: an error-level log line and the hook with
//             PORTICO_STEP=escalate; again while still Unhealthy, but at
//             most once per `escalate_every` (4 h) per monitor and target,
//             across alerts, so a flapping monitor does not page every hour.
// ImapCTPMonitor gets the hooks and the escalation but no drain: it goes
// through Portico, so a failure there does not single out a backend (the
// deep test does). AverageCommandProcessingTimeGt60sMonitor and
// RequestsQueuedGt500Monitor only escalate, as in Exchange.
//
// Repairing (an operator override) pauses the ladder and keeps a drain or
// offline in place: the operator is working on it. Any other value that is
// not Unhealthy ends the alert and releases the hold.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "action_log.h"
#include "monitor.h"
#include "portico/health.h"

namespace portico::health {

// Milliseconds on a monotonic clock with an arbitrary origin (uv_now()).
using SteadyTime = Millis;

enum class ResponderKind : std::uint8_t {
  kTakeOffline,
  kDrainBackend,
  kHookAndEscalate,
  kEscalateOnly
};
const char* responderKindName(ResponderKind kind);
ResponderKind responderKindFor(const std::string& monitor);

enum class ResponderStep : std::uint8_t { kOffline, kOnline, kDrain, kUndrain, kHook, kEscalate };
// "offline", "online", "drain", "undrain", "hook", "escalate": the values of
// PORTICO_STEP and of "Step" in the action log.
const char* responderStepName(ResponderStep step);

struct ResponderAction {
  std::uint64_t id = 0;
  SystemTime time{};
  MonitorKey key;  // the monitor that caused it; key.target is the backend
  std::string health_set;
  ResponderStep step = ResponderStep::kHook;
  AlertValue state = AlertValue::kUnhealthy;  // the monitor's shown value then
  std::string reason;
  std::string outcome;  // set by the executor: "exit 0", "killed after 30000 ms", ...
};

class ResponderLadder {
 public:
  explicit ResponderLadder(ResponderSettings settings, std::size_t max_actions = 200);

  void setSettings(ResponderSettings settings) { settings_ = std::move(settings); }
  const ResponderSettings& settings() const { return settings_; }

  // Tells the ladder a monitor's shown value; call it after every change
  // (repeating an unchanged value is harmless). `error` is the monitor's
  // Error text, used in reasons. Returns the actions to take now.
  std::vector<ResponderAction> update(const MonitorKey& key, const std::string& health_set,
                                      AlertValue value, const std::string& error, SteadyTime now,
                                      SystemTime wall);
  // The monitor is gone (reconfigure): ends its alert, releases its hold.
  std::vector<ResponderAction> forget(const MonitorKey& key, SteadyTime now, SystemTime wall);
  // Timed steps that are due at `now`.
  std::vector<ResponderAction> tick(SteadyTime now, SystemTime wall);
  // When tick() next has something to do; nullopt: nothing scheduled.
  std::optional<SteadyTime> nextDue() const;

  bool offline() const;
  bool drained(const std::string& backend) const;

  // The action log, oldest first, at most `max_actions` entries.
  const std::deque<ResponderAction>& actions() const { return actions_; }
  void setOutcome(std::uint64_t id, std::string outcome);

 private:
  struct Ladder {
    std::string health_set;
    ResponderKind kind = ResponderKind::kEscalateOnly;
    AlertValue value = AlertValue::kUnknown;
    std::string error;
    bool alerting = false;  // Unhealthy and not paused: timed steps run
    bool holding = false;   // holds Portico offline or the backend drained
    SteadyTime since{0};    // start of the alert
    std::size_t next_hook = 0;
    std::optional<SteadyTime> last_escalation;  // kept across alerts
  };

  std::optional<SteadyTime> nextDue(const Ladder& ladder) const;
  void fireDue(const MonitorKey& key, Ladder& ladder, SteadyTime now, SystemTime wall,
               std::vector<ResponderAction>& out);
  void release(const MonitorKey& key, Ladder& ladder, SystemTime wall,
               std::vector<ResponderAction>& out);
  std::size_t holders(ResponderKind kind, const std::string& target) const;
  void emit(const MonitorKey& key, const Ladder& ladder, ResponderStep step, std::string reason,
            SystemTime wall, std::vector<ResponderAction>& out);

  ResponderSettings settings_;
  std::size_t max_actions_;
  std::map<MonitorKey, Ladder> ladders_;
  std::deque<ResponderAction> actions_;
  std::uint64_t next_id_ = 1;
};

// Runs operator hooks: `/bin/sh -c <command>` in its own process group, with
// the caller's variables added to Portico's environment, stdin from
// /dev/null and stdout/stderr on Portico's stderr. A hook that outlives its
// timeout is killed (SIGKILL to the whole group). At most `max_running` run
// at once; more are refused rather than queued, since a hook that piles up
// helps nobody. Every handle is freed after its close callback.
class HookRunner {
 public:
  using Env = std::vector<std::pair<std::string, std::string>>;
  // "exit 0", "exit 3", "signal 9", "killed after 30000 ms",
  // "not run: ...". Called from the loop once the hook's handles are closed;
  // for a hook that cannot start ("not run: ..."), before run() returns.
  using Done = std::function<void(std::string outcome)>;

  explicit HookRunner(uv_loop_t* loop, std::size_t max_running = 4);
  ~HookRunner();  // stop() must have finished (running() == 0)
  HookRunner(const HookRunner&) = delete;
  HookRunner& operator=(const HookRunner&) = delete;

  void run(const std::string& command, const Env& env, Millis timeout, Done done);
  // Kills every running hook; `done` runs once all have been reaped and
  // their handles closed (before stop() returns if none runs). Hooks asked
  // for meanwhile are not run.
  void stop(std::function<void()> done);
  std::size_t running() const { return processes_.size(); }

 private:
  struct Process;
  static void onExit(uv_process_t* handle, std::int64_t exit_status, int term_signal);
  static void onTimeout(uv_timer_t* timer);
  static void onClosed(uv_handle_t* handle);
  void finished(Process* process);

  uv_loop_t* loop_;
  std::size_t max_running_;
  std::set<Process*> processes_;
  std::function<void()> stop_done_;
  bool stopping_ = false;
};

// Carries out ladder actions on the control loop, and records each in the
// action history (`log`, optional) with kind "responder", by = the monitor.
// With ResponderSettings::dry_run nothing is done: each action is logged as
// "dry-run: would ..." and its outcome and result are "dry-run".
class ResponderExecutor {
 public:
  ResponderExecutor(ResponderLadder& ladder, HookRunner& hooks, ProxyView& proxy,
                    ActionLog* log = nullptr);
  void execute(const std::vector<ResponderAction>& actions, SystemTime now);
  void execute(const std::vector<ResponderAction>& actions) {
    execute(actions, std::chrono::system_clock::now());
  }
  // Hook environment for one action (exposed for tests).
  static HookRunner::Env hookEnv(const ResponderAction& action);

 private:
  void runHook(const ResponderAction& action, std::uint64_t log_id);
  // Sets the action's outcome in the ladder's log and the action history.
  void outcome(const ResponderAction& action, std::uint64_t log_id, std::string text);

  ResponderLadder& ladder_;
  HookRunner& hooks_;
  ProxyView& proxy_;
  ActionLog* log_;
};

}  // namespace portico::health
