// HealthService's views: the JSON texts (Get-ServerHealth,
// Get-HealthReport, probe results, backends), the Prometheus text for
// /metrics and the /readyz answer.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "action_log.h"
#include "portico/prometheus_text.h"
#include "service_impl.h"

namespace portico::health {
namespace {

using nlohmann::json;

json timeOrNull(const std::optional<SystemTime>& time) {
  return time ? json(formatIsoTime(*time)) : json(nullptr);
}

}  // namespace

json resultJson(const ProbeResult& r) {
  return {
      {"ProbeName", r.probe},
      {"HealthSetName", r.health_set},
      {"TargetResource", r.target},
      {"ResultType", resultTypeName(r.result)},
      {"ExecutionStartTime", formatIsoTime(r.start)},
      {"ExecutionEndTime", formatIsoTime(r.end)},
      {"SampleValue", r.sample_ms},
      {"Error", r.error},
      {"FailureContext",
       r.result == ResultType::kSucceeded ? json(nullptr) : json(probeStepName(r.failed_step))},
      {"RetryCount", r.retry_count},
      {"Trace", r.trace},
  };
}

// --- JSON ------------------------------------------------------------------

json HealthService::Impl::monitorJson(const Monitor& m) const {
  const auto result = m.lastExecutionResult();
  json out = {
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
  // An operator's override (Add-ServerMonitoringOverride): only on the
  // monitors that have one, so the plain shape stays Get-ServerHealth's.
  if (const auto& o = m.overrideInfo()) {
    out["Override"] = {
        {"State", alertValueName(o->state)}, {"Expires", timeOrNull(o->expires)}, {"By", o->by}};
  }
  return out;
}

std::string HealthService::Impl::health(const std::string& glob) const {
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
    actions.push_back({{"Time", formatIsoTime(a.time)},
                       {"Monitor", a.key.monitor},
                       {"TargetResource", a.key.target},
                       {"HealthSetName", a.health_set},
                       {"Step", responderStepName(a.step)},
                       {"AlertValue", alertValueName(a.state)},
                       {"Reason", a.reason},
                       {"Outcome", a.outcome}});
  }
  return jsonText(json{{"Server", config_.server_name},
                       {"Offline", takenOffline()},
                       {"Responders", config_.responders.dry_run ? "dry-run" : "act"},
                       {"ComponentState", inactive_by_ ? "Inactive" : "Active"},
                       {"Monitors", std::move(monitors)},
                       {"ResponderActions", std::move(actions)}});
}

std::string HealthService::Impl::report() const {
  json sets = json::array();
  for (const auto& [name, state] : sets_) {
    sets.push_back({{"Server", config_.server_name},
                    {"State", "Online"},
                    {"HealthSet", name},
                    {"AlertValue", alertValueName(state.value)},
                    {"LastTransitionTime", timeOrNull(state.last_transition)},
                    {"MonitorCount", state.monitors}});
  }
  return jsonText(json{{"Server", config_.server_name}, {"HealthSets", std::move(sets)}});
}

json HealthService::Impl::probes(const std::string& set, const std::string& probe,
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

std::string HealthService::Impl::backends() const {
  json list = json::array();
  for (const BackendLoad& b : proxy_.backendLoad()) {
    const char* state = b.drained_by_operator    ? "drained-by-operator"
                        : b.drained_by_responder ? "drained-by-responder"
                        : b.drained_by_fleet     ? "drained-by-fleet"
                                                 : "enabled";
    list.push_back({{"name", b.name},
                    {"weight", b.weight},
                    {"state", state},
                    {"drained_by_responder", b.drained_by_responder},
                    {"drained_by_operator", b.drained_by_operator},
                    {"drained_by_fleet", b.drained_by_fleet},
                    {"sessions", b.sessions},
                    {"queued", b.queued},
                    {"average_processing_ms", b.average_processing_ms},
                    {"recent_commands", b.recent_commands}});
  }
  return jsonText(json{{"backends", std::move(list)}});
}

std::string HealthService::Impl::metrics() const {
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
    const std::string labels = fmt::format("probe=\"{}\",target=\"{}\"", prometheusLabel(def.probe),
                                           prometheusLabel(def.target));
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
        fmt::format("monitor=\"{}\",target=\"{}\",health_set=\"{}\"", prometheusLabel(key.monitor),
                    prometheusLabel(key.target), prometheusLabel(m->healthSet()));
    out += fmt::format("portico_monitor_state{{{}}} {}\n", labels, static_cast<int>(m->value()));
    unhealthy += fmt::format("portico_monitor_unhealthy{{{}}} {}\n", labels,
                             m->value() == AlertValue::kUnhealthy ? 1 : 0);
  }
  out += unhealthy;
  out += fmt::format(
      "# HELP portico_offline 1 while the proxy test's responder keeps Portico out of "
      "rotation.\n# TYPE portico_offline gauge\nportico_offline {}\n",
      takenOffline() ? 1 : 0);
  out += proxy_.proxyMetrics();
  return out;
}

bool HealthService::Impl::ready(std::string* reason) const {
  std::vector<std::string> reasons;
  if (!proxy_.listenersUp()) {
    reasons.emplace_back("listeners are down");
  }
  const auto loads = proxy_.backendLoad();
  const bool any = std::any_of(loads.begin(), loads.end(), [](const BackendLoad& b) {
    return !b.drained_by_responder && !b.drained_by_operator && !b.drained_by_fleet;
  });
  if (!any) {
    reasons.emplace_back(loads.empty() ? "no backends" : "every backend is drained");
  }
  if (takenOffline()) {
    reasons.emplace_back("taken offline by ImapProxyTestMonitor");
  }
  if (inactive_by_) {
    reasons.emplace_back("ImapProxy set Inactive by " + *inactive_by_);
  }
  if (reason != nullptr) {
    *reason = fmt::format("{}", fmt::join(reasons, "; "));
  }
  return reasons.empty();
}

}  // namespace portico::health
