#include "responder.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "portico/logging.h"

extern char** environ;

namespace portico::health {
namespace {

constexpr std::array kKindNames = {"take-offline", "drain-backend", "hook-and-escalate",
                                   "escalate-only"};
static_assert(kKindNames.size() == static_cast<std::size_t>(ResponderKind::kEscalateOnly) + 1);

constexpr std::array kStepNames = {"offline", "online", "drain", "undrain", "hook", "escalate"};
static_assert(kStepNames.size() == static_cast<std::size_t>(ResponderStep::kEscalate) + 1);

// "45s", "2m", "1h20m": how long a monitor has been Unhealthy, for reasons.
std::string formatDuration(Millis duration) {
  const long long total = std::max<long long>(0, duration.count() / 1000);
  const long long hours = total / 3600;
  const long long minutes = (total % 3600) / 60;
  const long long seconds = total % 60;
  std::string text;
  if (hours > 0) {
    text += fmt::format("{}h", hours);
  }
  if (minutes > 0) {
    text += fmt::format("{}m", minutes);
  }
  if (seconds > 0 || text.empty()) {
    text += fmt::format("{}s", seconds);
  }
  return text;
}

std::string describe(const MonitorKey& key) {
  return key.target.empty() ? key.monitor : fmt::format("{} of {}", key.monitor, key.target);
}

}  // namespace

const char* responderKindName(ResponderKind kind) {
  const auto index = static_cast<std::size_t>(kind);
  return index < kKindNames.size() ? kKindNames[index] : "unknown";
}

ResponderKind responderKindFor(const std::string& monitor) {
  if (monitor == "ImapProxyTestMonitor") {
    return ResponderKind::kTakeOffline;
  }
  if (monitor == "ImapSelfTestMonitor" || monitor == "ImapDeepTestMonitor") {
    return ResponderKind::kDrainBackend;
  }
  if (monitor == "ImapCTPMonitor") {
    return ResponderKind::kHookAndEscalate;
  }
  return ResponderKind::kEscalateOnly;
}

const char* responderStepName(ResponderStep step) {
  const auto index = static_cast<std::size_t>(step);
  return index < kStepNames.size() ? kStepNames[index] : "unknown";
}

// ---------------------------------------------------------------------------
// ResponderLadder

ResponderLadder::ResponderLadder(ResponderSettings settings, std::size_t max_actions)
    : settings_(std::move(settings)), max_actions_(std::max<std::size_t>(1, max_actions)) {}

std::vector<ResponderAction> ResponderLadder::update(const MonitorKey& key,
                                                     const std::string& health_set,
                                                     AlertValue value, const std::string& error,
                                                     SteadyTime now, SystemTime wall) {
  std::vector<ResponderAction> out;
  auto [it, inserted] = ladders_.try_emplace(key);
  Ladder& ladder = it->second;
  if (inserted) {
    ladder.kind = responderKindFor(key.monitor);
  }
  ladder.health_set = health_set;
  ladder.value = value;
  if (!error.empty()) {
    ladder.error = error;
  }
  if (value == AlertValue::kUnhealthy) {
    if (!ladder.alerting) {
      ladder.alerting = true;
      ladder.since = now;
      ladder.next_hook = 0;
      const bool holds =
          ladder.kind == ResponderKind::kTakeOffline || ladder.kind == ResponderKind::kDrainBackend;
      if (holds && !ladder.holding) {
        const bool first = holders(ladder.kind, key.target) == 0;
        ladder.holding = true;
        if (first && ladder.kind == ResponderKind::kTakeOffline) {
          emit(key, ladder, ResponderStep::kOffline,
               fmt::format("{} is Unhealthy: {}", describe(key), ladder.error), wall, out);
        } else if (first) {
          emit(key, ladder, ResponderStep::kDrain,
               fmt::format("{} is Unhealthy: {}", describe(key), ladder.error), wall, out);
        }
      }
    }
    fireDue(key, ladder, now, wall, out);
  } else if (value == AlertValue::kRepairing) {
    ladder.alerting = false;  // an operator is on it: no hooks, keep the hold
  } else {
    ladder.alerting = false;
    release(key, ladder, wall, out);
  }
  return out;
}

std::vector<ResponderAction> ResponderLadder::forget(const MonitorKey& key, SteadyTime /*now*/,
                                                     SystemTime wall) {
  std::vector<ResponderAction> out;
  auto it = ladders_.find(key);
  if (it == ladders_.end()) {
    return out;
  }
  it->second.alerting = false;
  it->second.value = AlertValue::kUnknown;
  release(key, it->second, wall, out);
  ladders_.erase(it);
  return out;
}

std::vector<ResponderAction> ResponderLadder::tick(SteadyTime now, SystemTime wall) {
  std::vector<ResponderAction> out;
  for (auto& [key, ladder] : ladders_) {
    fireDue(key, ladder, now, wall, out);
  }
  return out;
}

std::optional<SteadyTime> ResponderLadder::nextDue(const Ladder& ladder) const {
  if (!ladder.alerting) {
    return std::nullopt;
  }
  SteadyTime escalate = ladder.since + settings_.escalate_after;
  if (ladder.last_escalation) {
    escalate = std::max(escalate, *ladder.last_escalation + settings_.escalate_every);
  }
  std::optional<SteadyTime> due = escalate;
  if (ladder.kind != ResponderKind::kEscalateOnly &&
      ladder.next_hook < settings_.hook_after.size()) {
    due = std::min(*due, ladder.since + settings_.hook_after[ladder.next_hook]);
  }
  return due;
}

std::optional<SteadyTime> ResponderLadder::nextDue() const {
  std::optional<SteadyTime> due;
  for (const auto& [key, ladder] : ladders_) {
    if (auto next = nextDue(ladder); next && (!due || *next < *due)) {
      due = next;
    }
  }
  return due;
}

void ResponderLadder::fireDue(const MonitorKey& key, Ladder& ladder, SteadyTime now,
                              SystemTime wall, std::vector<ResponderAction>& out) {
  if (!ladder.alerting) {
    return;
  }
  const std::string unhealthy_for = formatDuration(now - ladder.since);
  if (ladder.kind != ResponderKind::kEscalateOnly) {
    while (ladder.next_hook < settings_.hook_after.size() &&
           now >= ladder.since + settings_.hook_after[ladder.next_hook]) {
      ++ladder.next_hook;
      emit(key, ladder, ResponderStep::kHook,
           fmt::format("{} Unhealthy for {}: {}", describe(key), unhealthy_for, ladder.error), wall,
           out);
    }
  }
  SteadyTime escalate = ladder.since + settings_.escalate_after;
  if (ladder.last_escalation) {
    escalate = std::max(escalate, *ladder.last_escalation + settings_.escalate_every);
  }
  if (now >= escalate) {
    ladder.last_escalation = now;
    emit(key, ladder, ResponderStep::kEscalate,
         fmt::format("{} Unhealthy for {}: {}", describe(key), unhealthy_for, ladder.error), wall,
         out);
  }
}

void ResponderLadder::release(const MonitorKey& key, Ladder& ladder, SystemTime wall,
                              std::vector<ResponderAction>& out) {
  if (!ladder.holding) {
    return;
  }
  ladder.holding = false;
  if (holders(ladder.kind, key.target) > 0) {
    return;  // another monitor still holds it (the other drain monitor of the backend)
  }
  if (ladder.kind == ResponderKind::kTakeOffline) {
    emit(key, ladder, ResponderStep::kOnline,
         fmt::format("{} is {}", describe(key), alertValueName(ladder.value)), wall, out);
  } else {
    emit(key, ladder, ResponderStep::kUndrain,
         fmt::format("{} is {}; no drain monitor of {} is Unhealthy", describe(key),
                     alertValueName(ladder.value), key.target),
         wall, out);
  }
}

std::size_t ResponderLadder::holders(ResponderKind kind, const std::string& target) const {
  return static_cast<std::size_t>(
      std::count_if(ladders_.begin(), ladders_.end(), [&](const auto& entry) {
        const auto& [key, ladder] = entry;
        return ladder.holding && ladder.kind == kind &&
               (kind == ResponderKind::kTakeOffline || key.target == target);
      }));
}

void ResponderLadder::emit(const MonitorKey& key, const Ladder& ladder, ResponderStep step,
                           std::string reason, SystemTime wall, std::vector<ResponderAction>& out) {
  ResponderAction action;
  action.id = next_id_++;
  action.time = wall;
  action.key = key;
  action.health_set = ladder.health_set;
  action.step = step;
  action.state = ladder.value;
  action.reason = std::move(reason);
  actions_.push_back(action);
  while (actions_.size() > max_actions_) {
    actions_.pop_front();
  }
  out.push_back(std::move(action));
}

bool ResponderLadder::offline() const {
  return holders(ResponderKind::kTakeOffline, "") > 0;
}

bool ResponderLadder::drained(const std::string& backend) const {
  return holders(ResponderKind::kDrainBackend, backend) > 0;
}

void ResponderLadder::setOutcome(std::uint64_t id, std::string outcome) {
  for (auto it = actions_.rbegin(); it != actions_.rend(); ++it) {
    if (it->id == id) {
      it->outcome = std::move(outcome);
      return;
    }
  }
}

// ---------------------------------------------------------------------------
// HookRunner

struct HookRunner::Process {
  HookRunner* owner = nullptr;
  uv_process_t process{};
  uv_timer_t timer{};
  Done done;
  std::string outcome;
  Millis timeout{0};
  int open = 0;  // handles not yet closed
  bool exited = false;
  bool killed = false;  // by the timeout or stop()
  bool stopped = false;
};

HookRunner::HookRunner(uv_loop_t* loop, std::size_t max_running)
    : loop_(loop), max_running_(std::max<std::size_t>(1, max_running)) {}

HookRunner::~HookRunner() = default;

void HookRunner::run(const std::string& command, const Env& env, Millis timeout, Done done) {
  if (stopping_) {
    done("not run: stopping");
    return;
  }
  if (command.empty()) {
    done("not run: no hook configured");
    return;
  }
  if (processes_.size() >= max_running_) {
    done(fmt::format("not run: {} hooks still running", processes_.size()));
    return;
  }
  // Portico's environment, minus the variables the hook gets from us.
  std::vector<std::string> vars;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    const bool ours = std::any_of(env.begin(), env.end(), [&](const auto& kv) {
      return entry.size() > kv.first.size() && entry.substr(0, kv.first.size()) == kv.first &&
             entry[kv.first.size()] == '=';
    });
    if (!ours) {
      vars.emplace_back(entry);
    }
  }
  for (const auto& [name, value] : env) {
    vars.push_back(name + "=" + value);
  }
  std::vector<char*> envp;
  envp.reserve(vars.size() + 1);
  for (auto& var : vars) {
    envp.push_back(var.data());
  }
  envp.push_back(nullptr);
  std::string shell = "/bin/sh";
  std::string dash_c = "-c";
  std::string script = command;
  std::array<char*, 4> args = {shell.data(), dash_c.data(), script.data(), nullptr};

  std::array<uv_stdio_container_t, 3> stdio{};
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 2;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;

  uv_process_options_t options{};
  options.file = shell.c_str();
  options.args = args.data();
  options.env = envp.data();
  options.exit_cb = &HookRunner::onExit;
  // Its own session and process group, so a timeout kills the shell's
  // children too.
  options.flags = UV_PROCESS_DETACHED;
  options.stdio_count = static_cast<int>(stdio.size());
  options.stdio = stdio.data();

  auto* process = new Process();
  process->owner = this;
  process->done = std::move(done);
  process->timeout = timeout;
  process->process.data = process;
  process->timer.data = process;
  processes_.insert(process);
  const int rc = uv_spawn(loop_, &process->process, &options);
  if (rc != 0) {
    // libuv wants the handle closed even though no process started.
    process->outcome = fmt::format("not run: spawn failed: {}", uv_strerror(rc));
    process->exited = true;
    process->open = 1;
    uv_close(reinterpret_cast<uv_handle_t*>(&process->process), &HookRunner::onClosed);
    return;
  }
  uv_timer_init(loop_, &process->timer);
  uv_timer_start(&process->timer, &HookRunner::onTimeout,
                 static_cast<std::uint64_t>(std::max<long long>(0, timeout.count())), 0);
  process->open = 2;
}

void HookRunner::onExit(uv_process_t* handle, std::int64_t exit_status, int term_signal) {
  auto* process = static_cast<Process*>(handle->data);
  process->exited = true;
  if (process->stopped) {
    process->outcome = "killed: Portico is stopping";
  } else if (process->killed) {
    process->outcome = fmt::format("killed after {} ms", process->timeout.count());
  } else if (term_signal != 0) {
    process->outcome = fmt::format("signal {}", term_signal);
  } else {
    process->outcome = fmt::format("exit {}", exit_status);
  }
  uv_timer_stop(&process->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&process->timer), &HookRunner::onClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&process->process), &HookRunner::onClosed);
}

void HookRunner::onTimeout(uv_timer_t* timer) {
  auto* process = static_cast<Process*>(timer->data);
  if (process->exited) {
    return;
  }
  process->killed = true;
  // The whole group (the shell and what it started); the shell alone if the
  // group is already gone.
  if (uv_kill(-process->process.pid, SIGKILL) != 0) {
    uv_process_kill(&process->process, SIGKILL);
  }
}

void HookRunner::onClosed(uv_handle_t* handle) {
  auto* process = static_cast<Process*>(handle->data);
  if (--process->open == 0) {
    process->owner->finished(process);
  }
}

void HookRunner::finished(Process* process) {
  processes_.erase(process);
  Done done = std::move(process->done);
  std::string outcome = std::move(process->outcome);
  delete process;
  if (done) {
    done(std::move(outcome));
  }
  if (stopping_ && processes_.empty()) {
    stopping_ = false;
    if (auto stop_done = std::move(stop_done_)) {
      stop_done_ = nullptr;
      stop_done();
    }
  }
}

void HookRunner::stop(std::function<void()> done) {
  if (processes_.empty()) {
    if (done) {
      done();
    }
    return;
  }
  stopping_ = true;
  stop_done_ = std::move(done);
  for (Process* process : processes_) {
    if (!process->exited) {
      process->killed = true;
      process->stopped = true;
      if (uv_kill(-process->process.pid, SIGKILL) != 0) {
        uv_process_kill(&process->process, SIGKILL);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// ResponderExecutor

ResponderExecutor::ResponderExecutor(ResponderLadder& ladder, HookRunner& hooks, ProxyView& proxy,
                                     ActionLog* log)
    : ladder_(ladder), hooks_(hooks), proxy_(proxy), log_(log) {}

HookRunner::Env ResponderExecutor::hookEnv(const ResponderAction& action) {
  return {
      {"PORTICO_MONITOR", action.key.monitor},          {"PORTICO_TARGET", action.key.target},
      {"PORTICO_STATE", alertValueName(action.state)},  {"PORTICO_HEALTH_SET", action.health_set},
      {"PORTICO_STEP", responderStepName(action.step)},
  };
}

void ResponderExecutor::outcome(const ResponderAction& action, std::uint64_t log_id,
                                std::string text) {
  if (log_ != nullptr) {
    log_->setResult(log_id, text);
  }
  ladder_.setOutcome(action.id, std::move(text));
}

void ResponderExecutor::execute(const std::vector<ResponderAction>& actions, SystemTime now) {
  using logging::Level;
  const ResponderSettings& settings = ladder_.settings();
  for (const ResponderAction& action : actions) {
    const MonitorKey& key = action.key;
    std::uint64_t log_id = 0;
    if (log_ != nullptr) {
      log_id = log_->add(ActionRecord{now, "responder", responderStepName(action.step), key.target,
                                      action.reason, key.monitor, ""});
    }
    if (settings.dry_run) {
      logging::log(Level::kWarn, "responder", "dry-run: would {} {}: {}",
                   responderStepName(action.step), key.target.empty() ? "Portico" : key.target,
                   action.reason);
      outcome(action, log_id, "dry-run");
      continue;
    }
    switch (action.step) {
      case ResponderStep::kOffline:
        logging::log(Level::kWarn, "responder", "taking Portico out of rotation: {}",
                     action.reason);
        outcome(action, log_id, "readyz answers 503");
        break;
      case ResponderStep::kOnline:
        logging::log(Level::kInfo, "responder", "back in rotation: {}", action.reason);
        outcome(action, log_id, "readyz follows the listeners and backends again");
        break;
      case ResponderStep::kDrain:
        proxy_.setDrainedByResponder(key.target, true, settings.move_sessions);
        logging::log(Level::kWarn, "responder", "draining backend {}{}: {}", key.target,
                     settings.move_sessions ? " and moving its sessions" : "", action.reason);
        outcome(action, log_id, settings.move_sessions ? "drained, sessions moved" : "drained");
        break;
      case ResponderStep::kUndrain:
        proxy_.setDrainedByResponder(key.target, false, false);
        logging::log(Level::kInfo, "responder", "undraining backend {}: {}", key.target,
                     action.reason);
        outcome(action, log_id, "undrained");
        break;
      case ResponderStep::kHook:
        runHook(action, log_id);
        break;
      case ResponderStep::kEscalate:
        logging::log(Level::kError, "responder",
                     "ESCALATION: health set {} monitor {} target {} is Unhealthy: {}",
                     action.health_set, key.monitor, key.target.empty() ? "-" : key.target,
                     action.reason);
        runHook(action, log_id);
        break;
    }
  }
}

void ResponderExecutor::runHook(const ResponderAction& action, std::uint64_t log_id) {
  const ResponderSettings& settings = ladder_.settings();
  const std::string what = fmt::format(
      "{} for {} {} ({})", action.step == ResponderStep::kEscalate ? "escalation hook" : "hook",
      action.key.monitor, action.key.target.empty() ? "-" : action.key.target, action.health_set);
  const std::string prefix = action.step == ResponderStep::kEscalate ? "logged; hook " : "";
  // The callback may run after this executor's caller moved on: it keeps
  // copies of what it needs, and the action by value.
  hooks_.run(settings.hook, hookEnv(action), settings.hook_timeout,
             [this, action, log_id, what, prefix](std::string result) {
               const bool ok = result == "exit 0" || result.starts_with("not run: no hook");
               logging::log(ok ? logging::Level::kInfo : logging::Level::kWarn, "responder",
                            "{}: {}", what, result);
               outcome(action, log_id, prefix + result);
             });
}

}  // namespace portico::health
