// What a worker needs to serve sessions, as one immutable snapshot. A
// reload builds a new RuntimeConfig and hands it to every worker; sessions
// keep the snapshot they started with, so a reload never changes a session
// under its feet.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "accounting.h"
#include "config/config.h"
#include "fleet/fleet_state.h"
#include "fleet/login_penalty.h"
#include "fleet/session_limit.h"
#include "log_throttle.h"
#include "lookup/lookup_shared.h"
#include "net_types.h"
#include "portico/logging.h"
#include "portico/status.h"
#include "protocol_trace.h"
#include "routing.h"

namespace portico::proxy {

struct RuntimeConfig {
  Config config;
  BackendSelector selector;
  std::vector<std::size_t> stats_slot;  // per backend index
  std::string capabilities;             // pre-login capability list Portico advertises
  // TLS contexts by listener and by backend index (null where tls = "none").
  std::vector<std::shared_ptr<const ServerTlsContext>> listener_tls;
  // Listen address (HostPort::text()) -> index into config.listen and
  // listener_tls. Bound sockets are matched to their settings by address,
  // never by position: a reload may reorder, add or remove [[listen]].
  std::map<std::string, std::size_t> listener_index;
  std::vector<std::shared_ptr<const ClientTlsContext>> backend_tls;
  // Each backend's probe_user (normalised) -> that backend's index. A probe
  // account always goes to its own backend, drained or down, never to a
  // failover choice: the CTP probe must test the backend it is named for.
  std::map<std::string, std::size_t> probe_users;

  RuntimeConfig(Config c, std::vector<std::size_t> slots);
};
using RuntimeConfigPtr = std::shared_ptr<const RuntimeConfig>;

// Builds the snapshot, loading every certificate and key the config names.
// An error when one cannot be loaded: at start-up Portico refuses to start;
// on reload the running snapshot stays in use.
Result<RuntimeConfigPtr> buildRuntime(Config config, std::vector<std::size_t> slots);

// What a reload changes about the listeners, matched by address. Reordering
// [[listen]] changes nothing. Added addresses are bound and removed ones
// closed; a changed entry's settings apply to connections accepted from
// then on (open sessions keep the ones they started with).
struct ListenerChanges {
  std::vector<std::string> added;    // addresses
  std::vector<std::string> removed;  // addresses
  std::vector<std::string> changed;  // "ADDRESS (tls implicit -> none, ...)"
  bool empty() const { return added.empty() && removed.empty() && changed.empty(); }
  std::string summary() const;  // for the "reload: done" line
};
ListenerChanges diffListeners(const Config& before, const Config& after);

// What every worker and the control loop share for the life of the
// process: backend drains, admission counts and gates (connections, fleet
// holds, per-user sessions, login penalties), the log throttles and the
// protocol-log switches. Written rarely; read at accept and at login.
struct ProcessState {
  // Per stats slot: drained backends are skipped by routing for new logins,
  // whether a responder or an operator drained them.
  std::array<std::atomic<bool>, kMaxBackends> drained_by_responder{};
  std::array<std::atomic<bool>, kMaxBackends> drained_by_operator{};
  // Fleet mode: Unhealthy on a quorum of the fleet's nodes.
  std::array<std::atomic<bool>, kMaxBackends> drained_by_fleet{};
  bool drained(std::size_t slot) const {
    return drained_by_responder[slot].load(std::memory_order_relaxed) ||
           drained_by_operator[slot].load(std::memory_order_relaxed) ||
           drained_by_fleet[slot].load(std::memory_order_relaxed);
  }
  std::atomic<std::uint64_t> connections{0};  // across workers, for max_connections
  // Accepts that found no file descriptor: answered with a BYE from the
  // reserve descriptor, or (none left) paused. One log line per second
  // across all workers, each with its count.
  LogThrottle accept_refused{std::chrono::seconds(1)};
  LogThrottle accept_paused{std::chrono::seconds(1)};
  // Connections a proxy_protocol listener closed without a greeting (peer
  // not trusted, no or a bad PROXY header): one line a second, counted.
  LogThrottle proxy_refused{std::chrono::seconds(1)};
  // Protocol logging: which sessions, and the writer (null: not available).
  ProtocolTrace trace;
  std::atomic<logging::ProtocolLog*> protocol_log{nullptr};
  // Directory lookups: counters, the health feed, the log rate limit.
  LookupShared lookup;
  // Fleet mode: user holds and on_redis_down = "refuse", kept by the
  // control loop (fleet/fleet_client.h), asked at each login.
  fleet::LoginGate fleet_gate;
  // Open sessions per user on this node, and the fleet's (as last read),
  // for limits.max_sessions_per_user.
  fleet::SessionCounts user_sessions;
  // Failed logins on their way to Redis, and the IPs and users the fleet
  // penalises (limits.login_failures_per_ip / _per_user).
  fleet::LoginPenalties login_penalties;
};

}  // namespace portico::proxy
