// HealthService: probes on timers, monitors, health sets, the responder
// ladder and the status endpoint, all on the control loop.
//
// Scheduling: every probe target runs every `interval`, each execution
// bounded by `timeout` (retries inside it). The first run of each target is
// at a random offset in [0, min(interval, 5 s)): enough to spread the probes
// of many backends so they do not all connect in the same millisecond, and
// short enough that every monitor has a first result within seconds of
// start-up. If an execution outlives its interval (timeout > interval), the
// next tick is skipped rather than run twice in parallel.
//
// Invoked probes (POST /probes/..., invokeProbe) run at once, land in the
// probe's history, and do not feed the monitor: like Invoke-MonitoringProbe,
// they answer "does it work now?" without moving the alert state.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <random>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "portico/ascii.h"
#include "portico/logging.h"
#include "service_impl.h"

namespace portico::health {
namespace {

constexpr std::size_t kHistory = 20;
constexpr Millis kMaxFirstRunOffset{5'000};

}  // namespace

HealthService::Impl::Impl(uv_loop_t* loop, HealthConfig config, ProxyView& proxy)
    : loop_(loop),
      config_(std::move(config)),
      proxy_(proxy),
      ladder_(config_.responders),
      hooks_(loop),
      actions_(config_.action_history),
      executor_(ladder_, hooks_, proxy, &actions_),
      random_(std::random_device{}()) {
  build();
}

// --- configuration ---------------------------------------------------------

ProbeSettings HealthService::Impl::probeSettings(const std::string& name) const {
  auto it = config_.probes.find(name);
  return it != config_.probes.end() ? it->second : defaultProbeSettings(name);
}

MonitorSettings HealthService::Impl::monitorSettings(const std::string& name) const {
  auto it = config_.monitors.find(name);
  return it != config_.monitors.end() ? it->second : defaultMonitorSettings(name);
}

void HealthService::Impl::build() {
  std::map<ProbeKey, ProbeDefinition> next;
  auto add = [&](const char* probe, const char* set, const char* monitor, const std::string& target,
                 const Endpoint& endpoint, const ProbeTlsSettings& tls, const BackendTarget* login,
                 const std::string& preamble) {
    ProbeDefinition def;
    def.probe = probe;
    def.health_set = set;
    def.monitor = monitor;
    def.target = target;
    def.settings = probeSettings(probe);
    def.spec.probe = probe;
    def.spec.health_set = set;
    def.spec.target = target;
    def.spec.endpoint = endpoint;
    def.spec.tls = tls;
    def.spec.preamble = preamble;
    if (login != nullptr) {
      def.spec.login = true;
      def.spec.select = true;
      def.spec.user = login->probe_user;
      def.spec.password = login->probe_password;
    }
    next.emplace(ProbeKey{probe, target}, std::move(def));
  };
  if (config_.proxy_listener.port != 0) {
    add("ImapProxyTestProbe", "IMAP.Proxy", "ImapProxyTestMonitor", "", config_.proxy_listener,
        config_.proxy_listener_tls, nullptr, config_.proxy_listener_preamble);
  }
  for (const BackendTarget& b : config_.backends) {
    const bool full = !b.probe_user.empty();
    if (full && config_.proxy_listener.port != 0) {
      add("ImapCTPProbe", "IMAP", "ImapCTPMonitor", b.name, config_.proxy_listener,
          config_.proxy_listener_tls, &b, config_.proxy_listener_preamble);
    }
    add("ImapSelfTestProbe", "IMAP.Protocol", "ImapSelfTestMonitor", b.name, b.address, b.tls,
        nullptr, "");
    if (full) {
      add("ImapDeepTestProbe", "IMAP.Protocol", "ImapDeepTestMonitor", b.name, b.address, b.tls, &b,
          "");
    }
  }
  // Keep what stays; cancel and close what goes.
  for (auto& [key, def] : definitions_) {
    auto it = next.find(key);
    if (it != next.end()) {
      it->second.history = std::move(def.history);
      it->second.running = def.running;
      it->second.timer = def.timer;
    } else {
      if (def.running != nullptr) {
        def.running->cancel();
      }
      closeTimer(def.timer);
    }
  }
  definitions_ = std::move(next);

  std::map<MonitorKey, std::unique_ptr<Monitor>> monitors;
  auto keep = [&](std::unique_ptr<Monitor> fresh) {
    auto it = monitors_.find(fresh->key());
    if (it != monitors_.end()) {
      it->second->setSettings(fresh->settings());
      fresh = std::move(it->second);
      monitors_.erase(it);
    }
    MonitorKey key = fresh->key();
    monitors.emplace(std::move(key), std::move(fresh));
  };
  for (const auto& [key, def] : definitions_) {
    keep(std::make_unique<ConsecutiveFailureMonitor>(MonitorKey{def.monitor, def.target},
                                                     def.health_set, monitorSettings(def.monitor)));
  }
  for (const BackendTarget& b : config_.backends) {
    keep(std::make_unique<SampledThresholdMonitor>(MonitorKey{kGt60, b.name}, "IMAP",
                                                   monitorSettings(kGt60),
                                                   "average command processing time", "ms"));
    keep(std::make_unique<SampledThresholdMonitor>(MonitorKey{kQueued, b.name}, "IMAP",
                                                   monitorSettings(kQueued), "commands queued",
                                                   "commands"));
  }
  if (!config_.directory.empty()) {
    keep(std::make_unique<ConsecutiveFailureMonitor>(MonitorKey{kDirectory, config_.directory},
                                                     kDirectorySet, monitorSettings(kDirectory)));
  }
  if (!config_.fleet.empty()) {
    keep(std::make_unique<ConsecutiveFailureMonitor>(MonitorKey{kFleet, config_.fleet}, kFleetSet,
                                                     monitorSettings(kFleet)));
  }
  for (const auto& [key, monitor] : monitors_) {
    executor_.execute(ladder_.forget(key, steadyNow(), wallNow()));
  }
  monitors_ = std::move(monitors);
  updateSets(wallNow());
}

// --- time and timers -------------------------------------------------------

ServiceTimer* HealthService::Impl::newTimer(std::function<void()> fire) {
  auto* timer = new ServiceTimer();
  timer->owner = this;
  timer->fire = std::move(fire);
  timer->handle.data = timer;
  uv_timer_init(loop_, &timer->handle);
  ++timers_open_;
  return timer;
}

void HealthService::Impl::onTimer(uv_timer_t* handle) {
  auto* timer = static_cast<ServiceTimer*>(handle->data);
  if (timer->fire) {
    timer->fire();
  }
}

void HealthService::Impl::startTimer(ServiceTimer* timer, Millis first, Millis repeat) {
  uv_timer_start(&timer->handle, &Impl::onTimer,
                 static_cast<std::uint64_t>(std::max<long long>(0, first.count())),
                 static_cast<std::uint64_t>(std::max<long long>(0, repeat.count())));
}

void HealthService::Impl::closeTimer(ServiceTimer*& timer) {
  if (timer == nullptr) {
    return;
  }
  uv_timer_stop(&timer->handle);
  timer->fire = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&timer->handle), [](uv_handle_t* handle) {
    auto* closed = static_cast<ServiceTimer*>(handle->data);
    Impl* owner = closed->owner;
    delete closed;
    --owner->timers_open_;
    owner->checkStopped();
  });
  timer = nullptr;
}

Millis HealthService::Impl::firstRunOffset(Millis interval) {
  const long long bound = std::min(interval, kMaxFirstRunOffset).count();
  if (bound <= 1) {
    return Millis(0);
  }
  return Millis(std::uniform_int_distribution<long long>(0, bound - 1)(random_));
}

void HealthService::Impl::schedule() {
  for (auto& [key, def] : definitions_) {
    if (def.timer == nullptr) {
      // By key: reconfigure() moves definitions to new map nodes.
      def.timer = newTimer([this, key = key] {
        if (auto it = definitions_.find(key); it != definitions_.end()) {
          runScheduled(it->second);
        }
      });
    }
    const Millis interval = std::max(def.settings.interval, Millis(1));
    startTimer(def.timer, firstRunOffset(interval), interval);
  }
  for (const char* name : {kGt60, kQueued}) {
    ServiceTimer*& timer = sample_timers_[name];
    if (timer == nullptr) {
      std::string monitor = name;
      timer = newTimer([this, monitor] { sample(monitor); });
    }
    const Millis interval = std::max(monitorSettings(name).sample_interval, Millis(1));
    startTimer(timer, interval, interval);
  }
  if (ladder_timer_ == nullptr) {
    ladder_timer_ = newTimer([this] {
      executor_.execute(ladder_.tick(steadyNow(), wallNow()));
      armLadder();
    });
  }
  armLadder();
}

void HealthService::Impl::armLadder() {
  if (ladder_timer_ == nullptr || stopping_) {
    return;
  }
  if (auto due = ladder_.nextDue()) {
    startTimer(ladder_timer_, std::max(Millis(0), *due - steadyNow()), Millis(0));
  } else {
    uv_timer_stop(&ladder_timer_->handle);
  }
}

// --- probes and monitors ---------------------------------------------------

ImapProbe* HealthService::Impl::launch(const ProbeDefinition& def,
                                       std::function<void(ProbeResult)> done) {
  ImapProbeSpec spec = def.spec;
  spec.timeout = def.settings.timeout;
  spec.retries = def.settings.retries;
  auto self = std::make_shared<ImapProbe*>(nullptr);
  ImapProbe* probe = ImapProbe::start(
      loop_, std::move(spec), [this, self, done = std::move(done)](ProbeResult result) {
        inflight_.erase(*self);  // the probe is already freed: only its address is used
        done(std::move(result));
        checkStopped();
      });
  *self = probe;
  inflight_.insert(probe);
  return probe;
}

void HealthService::Impl::runScheduled(ProbeDefinition& def) {
  if (def.running != nullptr || stopping_) {
    return;  // the last execution is still running
  }
  ProbeKey key{def.probe, def.target};
  def.running = launch(def, [this, key](ProbeResult result) {
    auto it = definitions_.find(key);
    if (it == definitions_.end()) {
      return;  // reconfigured away
    }
    it->second.running = nullptr;
    remember(it->second, result);
    auto m = monitors_.find(MonitorKey{it->second.monitor, it->second.target});
    if (m != monitors_.end() && !stopping_) {
      if (auto* monitor = dynamic_cast<ConsecutiveFailureMonitor*>(m->second.get())) {
        monitor->record(result, wallNow());
        monitorUpdated(*monitor);
      }
    }
  });
}

void HealthService::Impl::remember(ProbeDefinition& def, const ProbeResult& result) {
  def.history.push_back(result);
  while (def.history.size() > kHistory) {
    def.history.pop_front();
  }
}

void HealthService::Impl::sample(const std::string& name) {
  if (stopping_) {
    return;
  }
  for (const BackendLoad& load : proxy_.backendLoad()) {
    auto it = monitors_.find(MonitorKey{name, load.name});
    if (it == monitors_.end()) {
      continue;
    }
    if (auto* monitor = dynamic_cast<SampledThresholdMonitor*>(it->second.get())) {
      monitor->sample(name == kGt60 ? load.average_processing_ms : static_cast<double>(load.queued),
                      wallNow());
      monitorUpdated(*monitor);
    }
  }
}

void HealthService::Impl::monitorUpdated(const Monitor& monitor) {
  executor_.execute(ladder_.update(monitor.key(), monitor.healthSet(), monitor.value(),
                                   monitor.error(), steadyNow(), wallNow()));
  armLadder();
  updateSets(wallNow());
}

void HealthService::Impl::updateSets(SystemTime now) {
  std::map<std::string, std::vector<AlertValue>> values;
  for (const auto& [key, monitor] : monitors_) {
    values[monitor->healthSet()].push_back(monitor->value());
  }
  std::map<std::string, SetState> next;
  for (auto& [set, list] : values) {
    SetState state;
    state.value = worstAlertValue(list);
    state.monitors = list.size();
    auto old = sets_.find(set);
    if (old != sets_.end()) {
      state.last_transition = old->second.last_transition;
      if (old->second.value != state.value) {
        state.last_transition = now;
      }
    }
    next[set] = state;
  }
  sets_ = std::move(next);
}

ProbeDefinition* HealthService::Impl::findDefinition(const std::string& set,
                                                     const std::string& probe,
                                                     const std::string& target) {
  for (auto& [key, def] : definitions_) {
    if (equalsIgnoreCase(def.health_set, set) && equalsIgnoreCase(def.probe, probe) &&
        def.target == target) {
      return &def;
    }
  }
  return nullptr;
}

std::vector<const ProbeDefinition*> HealthService::Impl::findProbe(const std::string& set,
                                                                   const std::string& probe) const {
  std::vector<const ProbeDefinition*> out;
  for (const auto& [key, def] : definitions_) {
    if (equalsIgnoreCase(def.health_set, set) && equalsIgnoreCase(def.probe, probe)) {
      out.push_back(&def);
    }
  }
  return out;
}

bool HealthService::Impl::invoke(const std::string& set, const std::string& probe,
                                 const std::string& target,
                                 std::function<void(const ProbeResult&)> done) {
  ProbeDefinition* def = findDefinition(set, probe, target);
  if (def == nullptr || stopping_) {
    return false;
  }
  ProbeKey key{def->probe, def->target};
  launch(*def, [this, key, done = std::move(done)](ProbeResult result) {
    auto it = definitions_.find(key);
    if (it != definitions_.end()) {
      remember(it->second, result);
    }
    if (done) {
      done(result);
    }
  });
  return true;
}

// --- lifecycle -------------------------------------------------------------

Status HealthService::Impl::start() {
  if (started_) {
    return Status::error("already started");
  }
  server_ = std::make_unique<StatusServer>(loop_, config_.status_listen, config_.status_token,
                                           [this](const HttpRequest& request, Responder respond) {
                                             handle(request, std::move(respond));
                                           });
  if (Status listening = server_->start(); !listening.ok()) {
    return listening;
  }
  started_ = true;
  schedule();
  logging::log(logging::Level::kInfo, "health", "status endpoint on {}:{}; {} probe targets",
               config_.status_listen.host, server_->port(), definitions_.size());
  return Status();
}

void HealthService::Impl::stop(std::function<void()> done) {
  stop_done_ = std::move(done);
  if (stopping_) {
    checkStopped();  // already under way: only the callback changes
    return;
  }
  stopping_ = true;
  for (auto& [key, def] : definitions_) {
    closeTimer(def.timer);
  }
  for (auto& [name, timer] : sample_timers_) {
    closeTimer(timer);
  }
  closeTimer(ladder_timer_);
  closeTimer(override_timer_);
  for (ImapProbe* probe : std::set<ImapProbe*>(inflight_)) {
    probe->cancel();
  }
  hooks_stopped_ = false;
  hooks_.stop([this] {
    hooks_stopped_ = true;
    checkStopped();
  });
  if (server_) {
    server_stopped_ = false;
    server_->stop([this] {
      server_stopped_ = true;
      checkStopped();
    });
  }
  checkStopped();
}

bool HealthService::Impl::idle() const {
  return timers_open_ == 0 && inflight_.empty() && hooks_stopped_ && server_stopped_;
}

void HealthService::Impl::checkStopped() {
  if (!stopping_ || !idle() || !stop_done_) {
    return;
  }
  auto done = std::move(stop_done_);
  stop_done_ = nullptr;
  done();
}

void HealthService::Impl::reconfigure(HealthConfig config) {
  const bool was_dry_run = config_.responders.dry_run;
  config_ = std::move(config);
  ladder_.setSettings(config_.responders);
  actions_.setCapacity(config_.action_history);
  build();
  if (config_.responders.dry_run != was_dry_run) {
    reconcileDrains();
  }
  if (started_ && !stopping_) {
    schedule();
    armOverrides();
  }
}

// --- overrides and dry-run -------------------------------------------------

void HealthService::Impl::armOverrides() {
  if (!started_ || stopping_) {
    return;
  }
  std::optional<SystemTime> next;
  for (const auto& [key, monitor] : monitors_) {
    const auto& info = monitor->overrideInfo();
    if (info && info->expires && (!next || *info->expires < *next)) {
      next = info->expires;
    }
  }
  if (!next) {
    if (override_timer_ != nullptr) {
      uv_timer_stop(&override_timer_->handle);
    }
    return;
  }
  if (override_timer_ == nullptr) {
    override_timer_ = newTimer([this] { expireOverrides(); });
  }
  // The expiry is wall-clock time (it is shown as such); the timer runs on
  // the loop's monotonic clock. If the wall clock moves, expireOverrides()
  // finds nothing due and arms again for what is left.
  const auto left = std::chrono::duration_cast<Millis>(*next - wallNow());
  startTimer(override_timer_, std::max(Millis(1), left + Millis(1)), Millis(0));
}

void HealthService::Impl::expireOverrides() {
  const SystemTime now = wallNow();
  for (auto& [key, monitor] : monitors_) {
    const std::optional<OverrideInfo> info = monitor->overrideInfo();
    if (!monitor->expireOverride(now)) {
      continue;
    }
    const std::string target = key.target.empty() ? key.monitor : key.monitor + "/" + key.target;
    logging::log(logging::Level::kInfo, "health", "override {} of {} (set by {}) expired",
                 alertValueName(info->state), target, info->by.empty() ? "-" : info->by);
    actions_.add(
        ActionRecord{now, "operator", "monitor override expired", target,
                     fmt::format("{} override reached its expiry", alertValueName(info->state)),
                     info->by, "done"});
    monitorUpdated(*monitor);
  }
  armOverrides();
}

void HealthService::Impl::reconcileDrains() {
  const bool act = !config_.responders.dry_run;
  for (const BackendLoad& load : proxy_.backendLoad()) {
    const bool want = act && ladder_.drained(load.name);
    if (load.drained_by_responder == want) {
      continue;
    }
    proxy_.setDrainedByResponder(load.name, want, want && config_.responders.move_sessions);
    const char* step = want ? "drain" : "undrain";
    logging::log(logging::Level::kInfo, "responder", "responders switched to {}: {} backend {}",
                 act ? "act" : "dry-run", want ? "draining" : "undraining", load.name);
    actions_.add(ActionRecord{wallNow(), "responder", step, load.name,
                              act ? "responders switched from dry-run to act while the ladder "
                                    "holds this backend drained"
                                  : "responders switched to dry-run: no responder drain stays",
                              "reload", want ? "drained" : "undrained"});
  }
}

HealthService::HealthService(uv_loop_t* loop, HealthConfig config, ProxyView& proxy)
    : impl_(std::make_unique<Impl>(loop, std::move(config), proxy)) {}

HealthService::~HealthService() {
  if (!impl_->idle()) {
    // Handles still point at the Impl: keep it alive rather than let a close
    // callback touch freed memory. stop() and its callback avoid this.
    logging::log(logging::Level::kError, "health",
                 "HealthService destroyed before stop() finished; leaking its state");
    impl_->stop(nullptr);
    (void)impl_.release();
  }
}

Status HealthService::start() {
  return impl_->start();
}
void HealthService::stop(std::function<void()> done) {
  impl_->stop(std::move(done));
}
void HealthService::reconfigure(HealthConfig config) {
  impl_->reconfigure(std::move(config));
}
bool HealthService::offline() const {
  return impl_->takenOffline();
}

bool HealthService::invokeProbe(const std::string& health_set, const std::string& probe,
                                const std::string& target,
                                std::function<void(const ProbeResult&)> done) {
  return impl_->invoke(health_set, probe, target, std::move(done));
}

std::string HealthService::healthJson(const std::string& set_glob) const {
  return impl_->health(set_glob);
}
std::string HealthService::reportJson() const {
  return impl_->report();
}
std::string HealthService::probesJson(const std::string& health_set,
                                      const std::string& probe) const {
  return jsonText(impl_->probes(health_set, probe, std::nullopt));
}
std::string HealthService::backendsJson() const {
  return impl_->backends();
}
std::string HealthService::metricsText() const {
  return impl_->metrics();
}
bool HealthService::ready(std::string* reason) const {
  return impl_->ready(reason);
}
std::uint16_t HealthService::statusPort() const {
  return impl_->server_ ? impl_->server_->port() : 0;
}

void HealthService::Impl::recordExternalResult(const char* monitor_name, const std::string& target,
                                               const char* probe, const char* health_set, bool ok,
                                               const std::string& error) {
  if (stopping_ || target.empty()) {
    return;
  }
  auto it = monitors_.find(MonitorKey{monitor_name, target});
  if (it == monitors_.end()) {
    return;
  }
  if (auto* monitor = dynamic_cast<ConsecutiveFailureMonitor*>(it->second.get())) {
    ProbeResult result;
    result.probe = probe;
    result.health_set = health_set;
    result.target = target;
    result.result = ok ? ResultType::kSucceeded : ResultType::kFailed;
    result.start = result.end = wallNow();
    result.error = ok ? std::string() : error;
    monitor->record(result, result.end);
    monitorUpdated(*monitor);
  }
}

void HealthService::recordDirectoryResult(bool ok, const std::string& error) {
  impl_->recordExternalResult(kDirectory, impl_->config_.directory, "DirectoryLookup",
                              kDirectorySet, ok, error);
}

void HealthService::recordFleetResult(bool ok, const std::string& error) {
  impl_->recordExternalResult(kFleet, impl_->config_.fleet, "FleetState", kFleetSet, ok, error);
}

bool HealthService::setMonitorOverride(const std::string& monitor, const std::string& target,
                                       AlertValue value, const std::string& by) {
  if (value != AlertValue::kDisabled && value != AlertValue::kRepairing &&
      value != AlertValue::kUnknown) {
    return false;
  }
  auto it = impl_->monitors_.find(MonitorKey{monitor, target});
  if (it == impl_->monitors_.end()) {
    return false;
  }
  std::optional<OverrideInfo> info;
  if (value != AlertValue::kUnknown) {
    info = OverrideInfo{value, std::nullopt, by};
  }
  it->second->applyOverride(std::move(info), Impl::wallNow());
  impl_->monitorUpdated(*it->second);
  impl_->armOverrides();
  return true;
}

Result<std::vector<std::string>> HealthService::addMonitorOverride(
    const std::string& monitor, const std::optional<std::string>& target, AlertValue state,
    std::optional<Millis> duration, const std::string& by) {
  std::vector<std::string> set;
  if (state != AlertValue::kDisabled && state != AlertValue::kRepairing &&
      state != AlertValue::kHealthy && state != AlertValue::kDegraded) {
    return Status::error(
        fmt::format("an override sets Disabled, Repairing, Healthy or Degraded, not {}",
                    alertValueName(state)));
  }
  if (duration && duration->count() <= 0) {
    return Status::error("the duration must be positive");
  }
  const SystemTime now = Impl::wallNow();
  OverrideInfo info{state, std::nullopt, by};
  if (duration) {
    info.expires = now + *duration;
  }
  for (auto& [key, m] : impl_->monitors_) {
    if (key.monitor != monitor || (target && key.target != *target)) {
      continue;
    }
    m->applyOverride(info, now);
    impl_->monitorUpdated(*m);
    set.push_back(key.target.empty() ? key.monitor : key.monitor + "/" + key.target);
  }
  if (set.empty()) {
    return Status::error(
        fmt::format("no monitor {}{}", monitor, target ? " for target " + *target : ""));
  }
  impl_->armOverrides();
  return set;
}

std::vector<std::string> HealthService::removeMonitorOverride(
    const std::string& monitor, const std::optional<std::string>& target) {
  std::vector<std::string> cleared;
  const SystemTime now = Impl::wallNow();
  for (auto& [key, m] : impl_->monitors_) {
    if (key.monitor != monitor || (target && key.target != *target) || !m->overrideInfo()) {
      continue;
    }
    m->applyOverride(std::nullopt, now);
    impl_->monitorUpdated(*m);
    cleared.push_back(key.target.empty() ? key.monitor : key.monitor + "/" + key.target);
  }
  impl_->armOverrides();
  return cleared;
}

std::uint64_t HealthService::recordAction(ActionRecord record) {
  if (record.time == SystemTime{}) {
    record.time = Impl::wallNow();
  }
  return impl_->actions_.add(std::move(record));
}

void HealthService::setActionResult(std::uint64_t id, std::string result) {
  impl_->actions_.setResult(id, std::move(result));
}

std::string HealthService::actionsJson() const {
  return impl_->actions_.text();
}

bool HealthService::dryRun() const {
  return impl_->config_.responders.dry_run;
}

void HealthService::setComponentActive(bool active, const std::string& by) {
  if (active) {
    impl_->inactive_by_.reset();
  } else {
    impl_->inactive_by_ = by;
  }
}

bool HealthService::componentActive() const {
  return !impl_->inactive_by_;
}

}  // namespace portico::health
