// The proxy's side of the health library: the config mapping and the
// ProxyView that lets probes, monitors and responders read the workers'
// counters and drain backends. Runs on the control loop.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "portico/health.h"
#include "runtime.h"
#include "worker.h"

namespace portico::proxy {

// Builds the health library's view of a config. Probe passwords are read
// from their files here (and only here); unreadable files are logged and
// leave that backend without a login probe.
health::HealthConfig makeHealthConfig(const Config& config);

class WorkerProxyView final : public health::ProxyView {
 public:
  WorkerProxyView(const std::vector<std::unique_ptr<Worker>>& workers, ProcessState& shared,
                  BackendRegistry& registry, std::function<RuntimeConfigPtr()> config)
      : workers_(workers), shared_(shared), registry_(registry), config_(std::move(config)) {}

  std::vector<health::BackendLoad> backendLoad() override;
  void setDrainedByResponder(const std::string& backend, bool drained, bool move_sessions) override;
  bool listenersUp() override { return listening_; }
  std::string proxyMetrics() override;
  std::string commandsJson() override;
  std::string protocolLogJson() override {
    return protocol_log_status_ ? protocol_log_status_() : "";
  }
  // Where protocolLogJson() reads from (the control loop's protocol-log state).
  void setProtocolLogStatus(std::function<std::string()> status) {
    protocol_log_status_ = std::move(status);
  }

  void setListening(bool up) { listening_ = up; }
  // Operator drain (admin socket): same effect, separate flag.
  bool setDrainedByOperator(const std::string& backend, bool drained, bool move_sessions);
  // Fleet mode's quorum drain: same effect, separate flag.
  void setDrainedByFleet(const std::string& backend, bool drained, bool move_sessions);
  // The backends this node's responders drained (its fleet health votes).
  std::vector<std::string> drainedByResponder();
  // Called after each responder drain or restore (fleet mode votes then).
  void setOnResponderChange(std::function<void()> callback) {
    on_responder_change_ = std::move(callback);
  }

 private:
  StatsSnapshot snapshotNow() const;
  void moveSessions(const std::string& backend);

  const std::vector<std::unique_ptr<Worker>>& workers_;
  ProcessState& shared_;
  BackendRegistry& registry_;
  std::function<RuntimeConfigPtr()> config_;
  bool listening_ = false;
  std::function<std::string()> protocol_log_status_;
  std::function<void()> on_responder_change_;
};

}  // namespace portico::proxy
