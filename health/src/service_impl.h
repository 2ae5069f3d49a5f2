// HealthService::Impl and what its parts share. Internal to the health
// library; its methods live in three files:
// - service.cc: configuration, timers and scheduling, probes and monitors,
//   lifecycle;
// - views.cc: the JSON views (Get-ServerHealth, Get-HealthReport, probe
//   results, backends), /metrics and /readyz;
// - routes.cc: the status endpoint's HTTP routes.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "action_log.h"
#include "imap_probe.h"
#include "monitor.h"
#include "portico/health.h"
#include "portico/json_text.h"
#include "responder.h"
#include "status_server.h"

namespace portico::health {

inline constexpr const char* kGt60 = "AverageCommandProcessingTimeGt60sMonitor";
inline constexpr const char* kQueued = "RequestsQueuedGt500Monitor";
inline constexpr const char* kDirectory = "DirectoryLookupMonitor";
inline constexpr const char* kDirectorySet = "IMAP.Directory";
inline constexpr const char* kFleet = "FleetStateMonitor";
inline constexpr const char* kFleetSet = "IMAP.Fleet";

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

// A probe result as JSON (Exchange's field names); views.cc.
nlohmann::json resultJson(const ProbeResult& r);

struct HealthService::Impl {
  Impl(uv_loop_t* loop, HealthConfig config, ProxyView& proxy);

  // --- configuration (service.cc) ------------------------------------------
  ProbeSettings probeSettings(const std::string& name) const;
  MonitorSettings monitorSettings(const std::string& name) const;
  // Builds (or, on reconfigure, rebuilds) the probe definitions and monitors
  // from config_, keeping the history of those that stay.
  void build();

  // --- time and timers (service.cc) ----------------------------------------
  SteadyTime steadyNow() const { return SteadyTime(static_cast<long long>(uv_now(loop_))); }
  static SystemTime wallNow() { return std::chrono::system_clock::now(); }
  ServiceTimer* newTimer(std::function<void()> fire);
  static void onTimer(uv_timer_t* handle);
  void startTimer(ServiceTimer* timer, Millis first, Millis repeat);
  void closeTimer(ServiceTimer*& timer);
  Millis firstRunOffset(Millis interval);
  void schedule();
  void armLadder();

  // --- probes and monitors (service.cc) ------------------------------------
  // Starts an execution of `def`; `done` gets its result. Every execution
  // is in inflight_ until its result arrives, so stop() can cancel it and
  // wait for it.
  ImapProbe* launch(const ProbeDefinition& def, std::function<void(ProbeResult)> done);
  void runScheduled(ProbeDefinition& def);
  void remember(ProbeDefinition& def, const ProbeResult& result);
  void sample(const std::string& name);
  void monitorUpdated(const Monitor& monitor);
  // A result the proxy reports for a dependency it uses itself (the
  // directory, the fleet's Redis), fed to that dependency's monitor.
  void recordExternalResult(const char* monitor_name, const std::string& target, const char* probe,
                            const char* health_set, bool ok, const std::string& error);
  struct SetState {
    AlertValue value = AlertValue::kUnknown;
    std::optional<SystemTime> last_transition;
    std::size_t monitors = 0;
  };
  void updateSets(SystemTime now);
  ProbeDefinition* findDefinition(const std::string& set, const std::string& probe,
                                  const std::string& target);
  std::vector<const ProbeDefinition*> findProbe(const std::string& set,
                                                const std::string& probe) const;
  bool invoke(const std::string& set, const std::string& probe, const std::string& target,
              std::function<void(const ProbeResult&)> done);

  // --- overrides and dry-run (service.cc) ------------------------------------
  // Arms override_timer_ for the earliest override expiry.
  void armOverrides();
  // Clears the overrides that are due and records each in the history.
  void expireOverrides();
  // True while the proxy test's responder holds Portico out of rotation
  // and responders act (in dry-run the hold is only shown in the history).
  bool takenOffline() const { return !config_.responders.dry_run && ladder_.offline(); }
  // Makes the proxy's responder drains match the ladder after the mode
  // changed between "act" and "dry-run".
  void reconcileDrains();

  // --- JSON (views.cc) -----------------------------------------------------
  nlohmann::json monitorJson(const Monitor& m) const;
  std::string health(const std::string& glob) const;
  std::string report() const;
  nlohmann::json probes(const std::string& set, const std::string& probe,
                        const std::optional<std::string>& target) const;
  std::string backends() const;
  std::string metrics() const;
  bool ready(std::string* reason) const;

  // --- HTTP routes (routes.cc) ---------------------------------------------
  void handle(const HttpRequest& request, Responder respond);
  void handleProbe(const HttpRequest& request, std::map<std::string, std::string>& query,
                   Responder respond);

  // --- lifecycle (service.cc) ----------------------------------------------
  Status start();
  void stop(std::function<void()> done);
  bool idle() const;
  void checkStopped();
  void reconfigure(HealthConfig config);

  uv_loop_t* loop_;
  HealthConfig config_;
  ProxyView& proxy_;
  ResponderLadder ladder_;
  HookRunner hooks_;
  ActionLog actions_;
  ResponderExecutor executor_;
  std::mt19937_64 random_;
  std::map<ProbeKey, ProbeDefinition> definitions_;
  std::map<MonitorKey, std::unique_ptr<Monitor>> monitors_;
  std::map<std::string, SetState> sets_;
  std::map<std::string, ServiceTimer*> sample_timers_;
  ServiceTimer* ladder_timer_ = nullptr;
  ServiceTimer* override_timer_ = nullptr;
  std::optional<std::string> inactive_by_;  // ImapProxy set Inactive by an operator
  std::set<ImapProbe*> inflight_;
  std::unique_ptr<StatusServer> server_;
  std::function<void()> stop_done_;
  int timers_open_ = 0;
  bool started_ = false;
  bool stopping_ = false;
  bool hooks_stopped_ = true;
  bool server_stopped_ = true;
};

}  // namespace portico::health
