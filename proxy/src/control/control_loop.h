// ControlLoop: the control thread's state: config snapshots, workers, the health service,
// the admin socket and the protocol log writer. Everything here is touched
// only on the control loop (the main thread), except what workers reach
// through ProcessState.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/admin.h"
#include "control/worker_proxy_view.h"
#include "fleet/fleet_client.h"
#include "net_types.h"
#include "portico/health.h"
#include "portico/logging.h"
#include "runtime.h"
#include "worker.h"

namespace portico::proxy {

struct ControlLoop {
  std::string config_path;
  BackendRegistry registry;
  ProcessState shared;
  IpLimiter limiter;
  std::vector<std::unique_ptr<Worker>> workers;
  RuntimeConfigPtr config;
  uv_loop_t loop;
  std::unique_ptr<TaskQueue> tasks;  // workers' answers to admin queries
  uv_signal_t sigterm, sigint, sighup, sigusr1;
  uv_timer_t trace_timer;  // ends a protocol-log trace at its TTL
  bool stopping = false;
  std::unique_ptr<WorkerProxyView> view;
  std::unique_ptr<health::HealthService> health;
  std::unique_ptr<AdminServer> admin;
  std::unique_ptr<logging::ProtocolLog> protocol_log;
  std::unique_ptr<fleet::FleetClient> fleet;  // null unless [fleet] redis is set
};

// Runs `query` on every worker and calls `done` on the control loop with
// the answers in worker order.
template <typename T>
void gather(ControlLoop& c, std::function<T(Worker&)> query,
            std::function<void(std::vector<T>)> done) {
  struct State {
    std::vector<T> results;
    std::size_t left;
    std::function<void(std::vector<T>)> done;
  };
  auto state = std::make_shared<State>();
  state->results.resize(c.workers.size());
  state->left = c.workers.size();
  state->done = std::move(done);
  if (state->left == 0) {
    state->done({});
    return;
  }
  TaskQueue* tasks = c.tasks.get();
  for (std::size_t i = 0; i < c.workers.size(); ++i) {
    c.workers[i]->post([state, query, tasks, i](Worker& w) {
      T result = query(w);
      tasks->post([state, i, result = std::move(result)]() mutable {
        state->results[i] = std::move(result);
        if (--state->left == 0) {
          state->done(std::move(state->results));
        }
      });
    });
  }
}

// fleet/fleet_control.cc: starts fleet mode when [fleet] redis is set.
void startFleet(ControlLoop& control);
// The admin socket's `user hold|release|list` and `fleet` commands.
void fleetCommand(ControlLoop& control, const std::vector<std::string>& words,
                  AdminServer::Reply reply);
// `sessions --fleet`: every node's registered sessions matching `filter`.
void fleetSessions(ControlLoop& control, const SessionFilter& filter, AdminServer::Reply reply);
// `kick --user U --fleet`: ends (normalised) `user`'s sessions on every node.
void fleetKick(ControlLoop& control, const std::string& user, AdminServer::Reply reply);
// After an operator's drain or enable on this node: publishes it to the
// fleet (when there is one), then replies `result` with a "fleet" field.
void publishOperatorDrain(ControlLoop& control, const std::string& backend, bool drained,
                          bool move_sessions, nlohmann::json result, AdminServer::Reply reply);

// Re-reads the config file; an error when it is refused (the running
// snapshot then stays).
Status reloadConfig(ControlLoop& control);

// Starts the protocol log writer if it is not running (directory from the
// config).
Status ensureProtocolLog(ControlLoop& control);

// `porticoctl protocol-log status` as JSON text, for the status endpoint's
// GET /protocol-log.
std::string protocolLogStatusText(ControlLoop& control);

// Serves one admin socket command.
void handleAdminCommand(ControlLoop& control, const AdminRequest& request,
                        AdminServer::Reply reply);

}  // namespace portico::proxy
