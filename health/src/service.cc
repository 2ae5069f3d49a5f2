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
#include <ctime>
#include <random>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "imap_probe.h"
#include "monitor.h"
#include "portico/health.h"
#include "portico/logging.h"
#include "responder.h"
#include "status_server.h"

namespace portico::health {
namespace {

using nlohmann::json;

constexpr std::size_t kHistory = 20;
constexpr Millis kMaxFirstRunOffset{5'000};
constexpr const char* kGt60 = "AverageCommandProcessingTimeGt60sMonitor";
constexpr const char* kQueued = "RequestsQueuedGt500Monitor";

std::string isoTime(SystemTime time) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
  const auto secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char out[40];
  const std::size_t n = std::strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03}Z", std::string_view(out, n), ((ms % 1000) + 1000) % 1000);
}

json timeOrNull(const std::optional<SystemTime>& time) {
  return time ? json(isoTime(*time)) : json(nullptr);
}

bool equalsNoCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string percentDecode(std::string_view text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else if (text[i] == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> parseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const std::size_t eq = pair.find('=');
    out[percentDecode(pair.substr(0, eq), true)] =
        eq == std::string_view::npos ? "" : percentDecode(pair.substr(eq + 1), true);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
  }
  return out;
}

std::string promLabel(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

json resultJson(const ProbeResult& r) {
  return {
      {"ProbeName", r.probe},
      {"HealthSetName", r.health_set},
      {"TargetResource", r.target},
      {"ResultType", resultTypeName(r.result)},
      {"ExecutionStartTime", isoTime(r.start)},
      {"ExecutionEndTime", isoTime(r.end)},
      {"SampleValue", r.sample_ms},
      {"Error", r.error},
      {"FailureContext",
       r.result == ResultType::kSucceeded ? json(nullptr) : json(probeStepName(r.failed_step))},
      {"RetryCount", r.retry_count},
      {"Trace", r.trace},
  };
}

HttpResponse jsonResponse(int status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  return response;
}

HttpResponse errorResponse(int status, std::string_view message) {
  return jsonResponse(status, jsonError(status, message));
}

HttpResponse methodNotAllowed(std::string_view allow) {
  HttpResponse response = errorResponse(405, "method not allowed");
  response.headers.emplace_back("Allow", std::string(allow));
  return response;
}

}  // namespace

// A uv_timer_t that frees itself after its close callback.
struct ServiceTimer {
  uv_timer_t handle{};
  HealthService::Impl* owner = nullptr;
  std::function<void()> fire;
};

struct ProbeDefinition {
  std::string probe;
  std::string health_set;
  std::string monitor;
  std::string target;
  ProbeSettings settings;
  ImapProbeSpec spec;
  std::deque<ProbeResult> history;  // newest last
  ImapProbe* running = nullptr;     // the scheduled execution in flight
  ServiceTimer* timer = nullptr;
};

using ProbeKey = std::pair<std::string, std::string>;  // probe, target

struct HealthService::Impl {
  Impl(uv_loop_t* loop, HealthConfig config, ProxyView& proxy)
      : loop_(loop),
        config_(std::move(config)),
        proxy_(proxy),
        ladder_(config_.responders),
        hooks_(loop),
        executor_(ladder_, hooks_, proxy),
        random_(std::random_device{}()) {
    build();
  }

  // --- configuration -------------------------------------------------------

  ProbeSettings probeSettings(const std::string& name) const {
    auto it = config_.probes.find(name);
    return it != config_.probes.end() ? it->second : defaultProbeSettings(name);
  }
  MonitorSettings monitorSettings(const std::string& name) const {
    auto it = config_.monitors.find(name);
    return it != config_.monitors.end() ? it->second : defaultMonitorSettings(name);
  }

  // Builds (or, on reconfigure, rebuilds) the probe definitions and monitors
  // from config_, keeping the history of those that stay.
  void build() {
    std::map<ProbeKey, ProbeDefinition> next;
    auto add = [&](const char* probe, const char* set, const char* monitor,
                   const std::string& target, const Endpoint& endpoint,
                   const BackendTarget* login) {
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
          nullptr);
    }
    for (const BackendTarget& b : config_.backends) {
      const bool full = !b.probe_user.empty();
      if (full && config_.proxy_listener.port != 0) {
        add("ImapCTPProbe", "IMAP", "ImapCTPMonitor", b.name, config_.proxy_listener, &b);
      }
      add("ImapSelfTestProbe", "IMAP.Protocol", "ImapSelfTestMonitor", b.name, b.address, nullptr);
      if (full) {
        add("ImapDeepTestProbe", "IMAP.Protocol", "ImapDeepTestMonitor", b.name, b.address, &b);
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
      keep(std::make_unique<ConsecutiveFailureMonitor>(
          MonitorKey{def.monitor, def.target}, def.health_set, monitorSettings(def.monitor)));
    }
    for (const BackendTarget& b : config_.backends) {
      keep(std::make_unique<SampledThresholdMonitor>(MonitorKey{kGt60, b.name}, "IMAP",
                                                     monitorSettings(kGt60),
                                                     "average command processing time", "ms"));
      keep(std::make_unique<SampledThresholdMonitor>(MonitorKey{kQueued, b.name}, "IMAP",
                                                     monitorSettings(kQueued), "commands queued",
                                                     "commands"));
    }
    for (const auto& [key, monitor] : monitors_) {
      executor_.execute(ladder_.forget(key, steadyNow(), wallNow()));
    }
    monitors_ = std::move(monitors);
    updateSets(wallNow());
  }

  // --- time and timers -----------------------------------------------------

  SteadyTime steadyNow() const { return SteadyTime(static_cast<long long>(uv_now(loop_))); }
  static SystemTime wallNow() { return std::chrono::system_clock::now(); }

  ServiceTimer* newTimer(std::function<void()> fire) {
    auto* timer = new ServiceTimer();
    timer->owner = this;
    timer->fire = std::move(fire);
    timer->handle.data = timer;
    uv_timer_init(loop_, &timer->handle);
    ++timers_open_;
    return timer;
  }
  static void onTimer(uv_timer_t* handle) {
    auto* timer = static_cast<ServiceTimer*>(handle->data);
    if (timer->fire) {
      timer->fire();
    }
  }
  void startTimer(ServiceTimer* timer, Millis first, Millis repeat) {
    uv_timer_start(&timer->handle, &Impl::onTimer,
                   static_cast<std::uint64_t>(std::max<long long>(0, first.count())),
                   static_cast<std::uint64_t>(std::max<long long>(0, repeat.count())));
  }
  void closeTimer(ServiceTimer*& timer) {
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

  Millis firstRunOffset(Millis interval) {
    const long long bound = std::min(interval, kMaxFirstRunOffset).count();
    if (bound <= 1) {
      return Millis(0);
    }
    return Millis(std::uniform_int_distribution<long long>(0, bound - 1)(random_));
  }

  void schedule() {
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

  void armLadder() {
    if (ladder_timer_ == nullptr || stopping_) {
      return;
    }
    if (auto due = ladder_.nextDue()) {
      startTimer(ladder_timer_, std::max(Millis(0), *due - steadyNow()), Millis(0));
    } else {
      uv_timer_stop(&ladder_timer_->handle);
    }
  }

  // --- probes and monitors -------------------------------------------------

  // Starts an execution of `def`; `done` gets its result. Every execution
  // is in inflight_ until its result arrives, so stop() can cancel it and
  // wait for it.
  ImapProbe* launch(const ProbeDefinition& def, std::function<void(ProbeResult)> done) {
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

  void runScheduled(ProbeDefinition& def) {
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

  void remember(ProbeDefinition& def, const ProbeResult& result) {
    def.history.push_back(result);
    while (def.history.size() > kHistory) {
      def.history.pop_front();
    }
  }

  void sample(const std::string& name) {
    if (stopping_) {
      return;
    }
    for (const BackendLoad& load : proxy_.backendLoad()) {
      auto it = monitors_.find(MonitorKey{name, load.name});
      if (it == monitors_.end()) {
        continue;
      }
      if (auto* monitor = dynamic_cast<SampledThresholdMonitor*>(it->second.get())) {
        monitor->sample(
            name == kGt60 ? load.average_processing_ms : static_cast<double>(load.queued),
            wallNow());
        monitorUpdated(*monitor);
      }
    }
  }

  void monitorUpdated(const Monitor& monitor) {
    executor_.execute(ladder_.update(monitor.key(), monitor.healthSet(), monitor.value(),
                                     monitor.error(), steadyNow(), wallNow()));
    armLadder();
    updateSets(wallNow());
  }

  struct SetState {
    AlertValue value = AlertValue::kUnknown;
    std::optional<SystemTime> last_transition;
    std::size_t monitors = 0;
  };

  void updateSets(SystemTime now) {
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

  ProbeDefinition* findDefinition(const std::string& set, const std::string& probe,
                                  const std::string& target) {
    for (auto& [key, def] : definitions_) {
      if (equalsNoCase(def.health_set, set) && equalsNoCase(def.probe, probe) &&
          def.target == target) {
        return &def;
      }
    }
    return nullptr;
  }

  std::vector<const ProbeDefinition*> findProbe(const std::string& set,
                                                const std::string& probe) const {
    std::vector<const ProbeDefinition*> out;
    for (const auto& [key, def] : definitions_) {
      if (equalsNoCase(def.health_set, set) && equalsNoCase(def.probe, probe)) {
        out.push_back(&def);
      }
    }
    return out;
  }

  bool invoke(const std::string& set, const std::string& probe, const std::string& target,
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

  // --- JSON ----------------------------------------------------------------

  json monitorJson(const Monitor& m) const {
    const auto result = m.lastExecutionResult();
    return {
        {"Server", config_.server_name},
        {"State", "Online"},
        {"Name", m.key().monitor},
        {"TargetResource", m.key().target},
        {"HealthSetName", m.healthSet()},
        {"AlertValue", alertValueName(m.value())},
        {"ServerComponent", "Imap"},
        {"FirstAlertObservedTime", timeOrNull(m.firstAlertObservedTime())},
        {"LastTransitionTime", timeOrNull(m.lastTransitionTime())},
        {"LastExecutionTime", timeOrNull(m.lastExecutionTime())},
        {"LastExecutionResult", result ? json(resultTypeName(*result)) : json(nullptr)},
        {"Error", m.error()},
    };
  }

  std::string health(const std::string& glob) const {
    std::vector<const Monitor*> shown;
    for (const auto& [key, monitor] : monitors_) {
      if (globMatch(glob, monitor->healthSet())) {
        shown.push_back(monitor.get());
      }
    }
    std::stable_sort(shown.begin(), shown.end(), [](const Monitor* a, const Monitor* b) {
      return a->healthSet() < b->healthSet();
    });
    json monitors = json::array();
    for (const Monitor* m : shown) {
      monitors.push_back(monitorJson(*m));
    }
    json actions = json::array();
    for (const ResponderAction& a : ladder_.actions()) {
      if (!globMatch(glob, a.health_set)) {
        continue;
      }
      actions.push_back({{"Time", isoTime(a.time)},
                         {"Monitor", a.key.monitor},
                         {"TargetResource", a.key.target},
                         {"HealthSetName", a.health_set},
                         {"Step", responderStepName(a.step)},
                         {"AlertValue", alertValueName(a.state)},
                         {"Reason", a.reason},
                         {"Outcome", a.outcome}});
    }
    return json{{"Server", config_.server_name},
                {"Offline", ladder_.offline()},
                {"Monitors", std::move(monitors)},
                {"ResponderActions", std::move(actions)}}
        .dump();
  }

  std::string report() const {
    json sets = json::array();
    for (const auto& [name, state] : sets_) {
      sets.push_back({{"Server", config_.server_name},
                      {"State", "Online"},
                      {"HealthSet", name},
                      {"AlertValue", alertValueName(state.value)},
                      {"LastTransitionTime", timeOrNull(state.last_transition)},
                      {"MonitorCount", state.monitors}});
    }
    return json{{"Server", config_.server_name}, {"HealthSets", std::move(sets)}}.dump();
  }

  json probes(const std::string& set, const std::string& probe,
              const std::optional<std::string>& target) const {
    json targets = json::array();
    for (const ProbeDefinition* def : findProbe(set, probe)) {
      if (target && def->target != *target) {
        continue;
      }
      json results = json::array();
      for (auto it = def->history.rbegin(); it != def->history.rend(); ++it) {
        results.push_back(resultJson(*it));
      }
      targets.push_back({{"TargetResource", def->target},
                         {"IntervalMs", def->settings.interval.count()},
                         {"TimeoutMs", def->settings.timeout.count()},
                         {"Retries", def->settings.retries},
                         {"Running", def->running != nullptr},
                         {"Results", std::move(results)}});
    }
    return {{"HealthSetName", set}, {"ProbeName", probe}, {"Targets", std::move(targets)}};
  }

  std::string backends() const {
    json list = json::array();
    for (const BackendLoad& b : proxy_.backendLoad()) {
      const char* state = b.drained_by_operator    ? "drained-by-operator"
                          : b.drained_by_responder ? "drained-by-responder"
                                                   : "enabled";
      list.push_back({{"name", b.name},
                      {"state", state},
                      {"drained_by_responder", b.drained_by_responder},
                      {"drained_by_operator", b.drained_by_operator},
                      {"sessions", b.sessions},
                      {"queued", b.queued},
                      {"average_processing_ms", b.average_processing_ms},
                      {"recent_commands", b.recent_commands}});
    }
    return json{{"backends", std::move(list)}}.dump();
  }

  std::string metrics() const {
    std::string out;
    out +=
        "# HELP portico_probe_result Last result of a probe target: 1 Succeeded, 0 Failed or "
        "TimedOut.\n# TYPE portico_probe_result gauge\n";
    std::string latency =
        "# HELP portico_probe_latency_seconds Latency of the last execution of a probe target.\n"
        "# TYPE portico_probe_latency_seconds gauge\n";
    for (const auto& [key, def] : definitions_) {
      if (def.history.empty()) {
        continue;
      }
      const ProbeResult& last = def.history.back();
      const std::string labels =
          fmt::format("probe=\"{}\",target=\"{}\"", promLabel(def.probe), promLabel(def.target));
      out += fmt::format("portico_probe_result{{{}}} {}\n", labels,
                         last.result == ResultType::kSucceeded ? 1 : 0);
      latency += fmt::format("portico_probe_latency_seconds{{{}}} {:.6f}\n", labels,
                             last.sample_ms / 1000.0);
    }
    out += latency;
    out +=
        "# HELP portico_monitor_state Monitor AlertValue: 0 Unknown, 1 Healthy, 2 Degraded, 3 "
        "Unhealthy, 4 Repairing, 5 Disabled.\n# TYPE portico_monitor_state gauge\n";
    std::string unhealthy =
        "# HELP portico_monitor_unhealthy 1 while the monitor is Unhealthy.\n"
        "# TYPE portico_monitor_unhealthy gauge\n";
    for (const auto& [key, m] : monitors_) {
      const std::string labels =
          fmt::format("monitor=\"{}\",target=\"{}\",health_set=\"{}\"", promLabel(key.monitor),
                      promLabel(key.target), promLabel(m->healthSet()));
      out += fmt::format("portico_monitor_state{{{}}} {}\n", labels, static_cast<int>(m->value()));
      unhealthy += fmt::format("portico_monitor_unhealthy{{{}}} {}\n", labels,
                               m->value() == AlertValue::kUnhealthy ? 1 : 0);
    }
    out += unhealthy;
    out += fmt::format(
        "# HELP portico_offline 1 while the proxy test's responder keeps Portico out of "
        "rotation.\n# TYPE portico_offline gauge\nportico_offline {}\n",
        ladder_.offline() ? 1 : 0);
    out += proxy_.proxyMetrics();
    return out;
  }

  bool ready(std::string* reason) const {
    std::vector<std::string> reasons;
    if (!proxy_.listenersUp()) {
      reasons.emplace_back("listeners are down");
    }
    const auto loads = proxy_.backendLoad();
    const bool any = std::any_of(loads.begin(), loads.end(), [](const BackendLoad& b) {
      return !b.drained_by_responder && !b.drained_by_operator;
    });
    if (!any) {
      reasons.emplace_back(loads.empty() ? "no backends" : "every backend is drained");
    }
    if (ladder_.offline()) {
      reasons.emplace_back("taken offline by ImapProxyTestMonitor");
    }
    if (reason != nullptr) {
      *reason = fmt::format("{}", fmt::join(reasons, "; "));
    }
    return reasons.empty();
  }

  // --- HTTP routes ---------------------------------------------------------

  void handle(const HttpRequest& request, Responder respond) {
    const std::string& path = request.path;
    // HEAD too: the server sends the headers of the GET answer, no body.
    const bool get = request.method == "GET" || request.method == "HEAD";
    auto query = parseQuery(request.query);
    auto only_get = [&](auto&& body) {
      if (!get) {
        respond(methodNotAllowed("GET, HEAD"));
      } else {
        respond(body());
      }
    };
    if (path == "/healthz") {
      only_get([] { return jsonResponse(200, R"({"status":"alive"})"); });
    } else if (path == "/readyz") {
      only_get([&] {
        std::string why;
        return ready(&why)
                   ? jsonResponse(200, R"({"status":"ready"})")
                   : jsonResponse(503, json{{"status", "not ready"}, {"reason", why}}.dump());
      });
    } else if (path == "/health") {
      only_get([&] { return jsonResponse(200, health(query["set"])); });
    } else if (path == "/health/report") {
      only_get([&] { return jsonResponse(200, report()); });
    } else if (path == "/backends") {
      only_get([&] { return jsonResponse(200, backends()); });
    } else if (path == "/metrics") {
      only_get([&] {
        HttpResponse response = jsonResponse(200, metrics());
        response.content_type = "text/plain; version=0.0.4; charset=utf-8";
        return response;
      });
    } else if (path.starts_with("/probes/")) {
      handleProbe(request, query, std::move(respond));
    } else {
      respond(errorResponse(404, "no such path"));
    }
  }

  void handleProbe(const HttpRequest& request, std::map<std::string, std::string>& query,
                   Responder respond) {
    const std::string_view rest = std::string_view(request.path).substr(8);
    const std::size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 >= rest.size() ||
        rest.find('/', slash + 1) != std::string_view::npos) {
      respond(errorResponse(404, "expected /probes/<HealthSet>/<ProbeName>"));
      return;
    }
    const std::string set = percentDecode(rest.substr(0, slash), false);
    const std::string probe = percentDecode(rest.substr(slash + 1), false);
    const auto defs = findProbe(set, probe);
    if (defs.empty()) {
      respond(errorResponse(404, fmt::format("no probe {}\\{}", set, probe)));
      return;
    }
    auto target_it = query.find("target");
    std::optional<std::string> target;
    if (target_it != query.end()) {
      target = target_it->second;
    }
    if (request.method == "GET" || request.method == "HEAD") {
      json body = probes(defs.front()->health_set, defs.front()->probe, target);
      if (target && body["Targets"].empty()) {
        respond(errorResponse(404, fmt::format("no target \"{}\" for {}", *target, probe)));
        return;
      }
      respond(jsonResponse(200, body.dump()));
      return;
    }
    if (request.method != "POST") {
      respond(methodNotAllowed("GET, HEAD, POST"));
      return;
    }
    if (!target) {
      if (defs.size() != 1) {
        std::vector<std::string> names;
        for (const ProbeDefinition* def : defs) {
          names.push_back(def->target);
        }
        respond(
            errorResponse(400, fmt::format("target required, one of: {}", fmt::join(names, ", "))));
        return;
      }
      target = defs.front()->target;
    }
    auto shared = std::make_shared<Responder>(std::move(respond));
    if (!invoke(defs.front()->health_set, defs.front()->probe, *target,
                [shared](const ProbeResult& result) {
                  (*shared)(jsonResponse(200, resultJson(result).dump()));
                })) {
      (*shared)(errorResponse(stopping_ ? 503 : 404,
                              stopping_ ? "stopping" : fmt::format("no target \"{}\"", *target)));
    }
  }

  // --- lifecycle -----------------------------------------------------------

  bool start(std::string& error) {
    if (started_) {
      error = "already started";
      return false;
    }
    server_ = std::make_unique<StatusServer>(loop_, config_.status_listen, config_.status_token,
                                             [this](const HttpRequest& request, Responder respond) {
                                               handle(request, std::move(respond));
                                             });
    if (!server_->start(error)) {
      return false;
    }
    started_ = true;
    schedule();
    logging::log(logging::Level::kInfo, "health", "status endpoint on {}:{}; {} probe targets",
                 config_.status_listen.host, server_->port(), definitions_.size());
    return true;
  }

  void stop(std::function<void()> done) {
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

  bool idle() const {
    return timers_open_ == 0 && inflight_.empty() && hooks_stopped_ && server_stopped_;
  }

  void checkStopped() {
    if (!stopping_ || !idle() || !stop_done_) {
      return;
    }
    auto done = std::move(stop_done_);
    stop_done_ = nullptr;
    done();
  }

  void reconfigure(HealthConfig config) {
    config_ = std::move(config);
    ladder_.setSettings(config_.responders);
    build();
    if (started_ && !stopping_) {
      schedule();
    }
  }

  uv_loop_t* loop_;
  HealthConfig config_;
  ProxyView& proxy_;
  ResponderLadder ladder_;
  HookRunner hooks_;
  ResponderExecutor executor_;
  std::mt19937_64 random_;
  std::map<ProbeKey, ProbeDefinition> definitions_;
  std::map<MonitorKey, std::unique_ptr<Monitor>> monitors_;
  std::map<std::string, SetState> sets_;
  std::map<std::string, ServiceTimer*> sample_timers_;
  ServiceTimer* ladder_timer_ = nullptr;
  std::set<ImapProbe*> inflight_;
  std::unique_ptr<StatusServer> server_;
  std::function<void()> stop_done_;
  int timers_open_ = 0;
  bool started_ = false;
  bool stopping_ = false;
  bool hooks_stopped_ = true;
  bool server_stopped_ = true;
};

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

bool HealthService::start(std::string& error) {
  return impl_->start(error);
}
void HealthService::stop(std::function<void()> done) {
  impl_->stop(std::move(done));
}
void HealthService::reconfigure(HealthConfig config) {
  impl_->reconfigure(std::move(config));
}
bool HealthService::offline() const {
  return impl_->ladder_.offline();
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
  return impl_->probes(health_set, probe, std::nullopt).dump();
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

bool HealthService::setMonitorOverride(const std::string& monitor, const std::string& target,
                                       AlertValue value) {
  if (value != AlertValue::kDisabled && value != AlertValue::kRepairing &&
      value != AlertValue::kUnknown) {
    return false;
  }
  auto it = impl_->monitors_.find(MonitorKey{monitor, target});
  if (it == impl_->monitors_.end()) {
    return false;
  }
  std::optional<AlertValue> override_value;
  if (value != AlertValue::kUnknown) {
    override_value = value;
  }
  it->second->setOverride(override_value, Impl::wallNow());
  impl_->monitorUpdated(*it->second);
  return true;
}

}  // namespace portico::health
