// Portico's health model, after Exchange's IMAP health sets: probes (real
// IMAP clients on the control loop), consecutive-failure and sampled
// monitors, health sets (worst monitor wins), responders on a timed ladder,
// and the HTTP status endpoint (llhttp) that shows it all.
//
// Threading: everything here runs on the control loop (one libuv loop, one
// thread). The proxy is reached only through ProxyView, whose methods must be
// cheap and non-blocking (they read relaxed atomics).
//
// Secrets: probe passwords live only in BackendTarget::probe_password and the
// probe's LOGIN command; they never reach a ProbeResult, a log line, the
// status endpoint or an error text.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "portico/status.h"

namespace portico::health {

using Millis = std::chrono::milliseconds;
using SystemTime = std::chrono::system_clock::time_point;

enum class AlertValue : std::uint8_t {
  kUnknown,
  kHealthy,
  kDegraded,
  kUnhealthy,
  kRepairing,
  kDisabled
};
const char* alertValueName(AlertValue value);
// Worse-first order used to combine monitors into a health set: higher is
// worse (Unhealthy > Repairing > Degraded > Unknown > Healthy > Disabled).
int severity(AlertValue value);

enum class ResultType : std::uint8_t { kSucceeded, kFailed, kTimedOut };
const char* resultTypeName(ResultType type);

enum class ProbeStep : std::uint8_t {
  kConnect,
  kTls,
  kGreeting,
  kCapability,
  kLogin,
  kSelect,
  kLogout,
  kDone
};
const char* probeStepName(ProbeStep step);

struct ProbeResult {
  std::string probe;       // e.g. "ImapDeepTestProbe"
  std::string health_set;  // e.g. "IMAP.Protocol"
  std::string target;      // backend name, or "" for the proxy itself
  ResultType result = ResultType::kFailed;
  SystemTime start{};
  SystemTime end{};
  double sample_ms = 0;  // latency
  std::string error;     // empty on success; never holds a password
  ProbeStep failed_step = ProbeStep::kDone;
  std::vector<std::string> trace;  // "greeting ok 1.2ms", "login NO ...", ...
  std::uint32_t retry_count = 0;
};

struct Endpoint {
  std::string host;  // literal IP
  std::uint16_t port = 0;
  bool ipv6 = false;
};

// How a probe speaks TLS to its target. Trust: `ca` (a PEM file, or a
// directory of hashed certificates) or, when empty, the system store. The
// expected name is `server_name`, or the endpoint's host when empty; a name
// is checked with SSL_set1_host and sent as SNI, an IP address is checked
// with X509_VERIFY_PARAM_set1_ip_asc and sends no SNI. Any failure (trust,
// name, pin, handshake, timeout) ends the probe at step `tls`.
enum class ProbeTls : std::uint8_t { kNone, kStartTls, kImplicit };

struct ProbeTlsSettings {
  ProbeTls mode = ProbeTls::kNone;
  std::string ca;           // CA file or directory; "" for the system store
  std::string server_name;  // expected name and SNI; "" for the endpoint's host
  std::string pin_sha256;   // optional: hex SHA-256 of the certificate's SPKI (64 hex digits)
  bool verify = true;       // false: no chain or name check (a pin still applies)
  // Portico's own listener: the name is not checked (the probe does not
  // know which name the listener's certificate carries), but the chain
  // still has to verify.
  bool verify_name = true;
  // Every certificate in `ca` is a trust anchor, even one that is not
  // self-signed (X509_V_FLAG_PARTIAL_CHAIN): lets a listener's own chain
  // file serve as its trust store.
  bool partial_chain = false;
  // Optional client certificate chain and key (PEM), for backends that ask.
  std::string client_cert;
  std::string client_key;
};

struct BackendTarget {
  BackendTarget() = default;
  // Not an aggregate, so that `{name, address, user, password}` (without
  // TLS) stays free of -Wmissing-field-initializers.
  BackendTarget(std::string name_in, Endpoint address_in, std::string user_in = {},
                std::string password_in = {}, ProbeTlsSettings tls_in = {})
      : name(std::move(name_in)),
        address(std::move(address_in)),
        probe_user(std::move(user_in)),
        probe_password(std::move(password_in)),
        tls(std::move(tls_in)) {}

  std::string name;
  Endpoint address;
  std::string probe_user;
  std::string probe_password;  // secret
  ProbeTlsSettings tls;        // ImapSelfTestProbe and ImapDeepTestProbe
};

struct ProbeSettings {
  Millis interval{60'000};
  Millis timeout{55'000};
  std::uint32_t retries = 0;
};

struct MonitorSettings {
  std::uint32_t unhealthy_after = 4;  // failures (or samples over threshold) in a row
  std::uint32_t healthy_after = 2;    // successes in a row to recover
  double threshold = 0;               // sampled monitors: ms or queued commands
  Millis sample_interval{60'000};     // sampled monitors
};

struct ResponderSettings {
  std::string hook;  // command run through /bin/sh -c; empty: none
  Millis hook_timeout{30'000};
  std::vector<Millis> hook_after{Millis(2 * 60'000), Millis(20 * 60'000)};
  Millis escalate_after{40 * 60'000};
  Millis escalate_every{4 * 3600'000};
  bool move_sessions = false;  // drained backend: BYE its sessions between commands
  // [health] responders = "dry-run": every action the ladder takes is logged
  // and recorded (result "dry-run") but not done: no drain, no hook, no
  // /readyz 503. Switching act -> dry-run releases the drains responders
  // hold; dry-run -> act applies the ones the ladder holds now.
  bool dry_run = false;
};

struct HealthConfig {
  std::string server_name;  // "Server" column; the host name by default
  Endpoint proxy_listener;  // Portico's own listener, for the proxy test and CTP
  // How ImapProxyTestProbe and ImapCTPProbe reach that listener. The proxy
  // fills it from the listener's `tls` mode with its certificate chain file
  // as `ca`, verify_name off and partial_chain on: the chain must verify,
  // the name is not checked.
  ProbeTlsSettings proxy_listener_tls;
  // What those probes send first on that listener: a PROXY v2 LOCAL header
  // when it has proxy_protocol (the connection then keeps its own address).
  std::string proxy_listener_preamble;
  std::vector<BackendTarget> backends;
  std::map<std::string, ProbeSettings> probes;      // by probe name; Exchange's defaults if absent
  std::map<std::string, MonitorSettings> monitors;  // by monitor name
  ResponderSettings responders;
  Endpoint status_listen{"127.0.0.1", 8080, false};
  std::string status_token;          // optional bearer token
  std::size_t action_history = 256;  // entries GET /health/actions keeps (at least 1)
  // The proxy's directory lookup service ("http 127.0.0.1:9000"), or "" for
  // none. When set, DirectoryLookupMonitor (health set IMAP.Directory,
  // target this text) counts its answers: recordDirectoryResult().
  std::string directory;
  // Fleet mode's Redis ("redis 127.0.0.1:6379"), or "" when not in a fleet.
  // When set, FleetStateMonitor (health set IMAP.Fleet, target this text)
  // counts the fleet state reads: recordFleetResult().
  std::string fleet;
};

// Exchange's defaults for the probe and monitor names in DESIGN.md.
ProbeSettings defaultProbeSettings(const std::string& probe);
MonitorSettings defaultMonitorSettings(const std::string& monitor);

// What the health service reads from and asks of the proxy.
struct BackendLoad {
  std::string name;
  bool drained_by_responder = false;
  bool drained_by_operator = false;
  bool drained_by_fleet = false;  // fleet mode: Unhealthy on a quorum of nodes
  std::uint64_t sessions = 0;
  std::uint64_t queued = 0;           // commands sent, not yet answered
  double average_processing_ms = 0;   // moving average of the last 1,024 commands
  std::uint64_t recent_commands = 0;  // how many commands that average covers
  double weight = 1.0;                // routing weight from the config
};

// One entry of the action history (GET /health/actions, `porticoctl
// actions`): what a responder or an operator did, why, and what came of it.
struct ActionRecord {
  SystemTime time{};
  std::string kind;    // "responder" or "operator"
  std::string action;  // "drain", "hook", "backend drain", "monitor override", ...
  std::string target;  // a backend, "Monitor/target", a user, ...; "" for Portico itself
  std::string reason;
  std::string by;      // the monitor whose responder acted, or the operator ("root (uid 0)")
  std::string result;  // "done", "dry-run", "exit 0", "refused: ...", "" while running
};

// An operator's override of a monitor (Add-ServerMonitoringOverride): the
// shown AlertValue is `state` until `expires` (or until removed when
// nullopt), and the responders act on that value, not the computed one.
struct OverrideInfo {
  AlertValue state = AlertValue::kDisabled;
  std::optional<SystemTime> expires;
  std::string by;
};

class ProxyView {
 public:
  virtual ~ProxyView() = default;
  virtual std::vector<BackendLoad> backendLoad() = 0;
  // Responder drain: routing skips the backend; with move_sessions its open
  // sessions get `* BYE [UNAVAILABLE]` between commands.
  virtual void setDrainedByResponder(const std::string& backend, bool drained,
                                     bool move_sessions) = 0;
  virtual bool listenersUp() = 0;
  // Prometheus text for the proxy's own counters (connections, commands,
  // histograms, bytes, per-backend sessions); appended to /metrics.
  virtual std::string proxyMetrics() = 0;
  // JSON for GET /commands: per backend and command, the processing-time
  // histogram (bucket upper bounds in seconds, non-cumulative counts), count,
  // NO/BAD and the sum. Empty: the route answers 404.
  virtual std::string commandsJson() { return {}; }
  // JSON for GET /protocol-log: the protocol log's state and the active
  // trace, as `porticoctl protocol-log status` shows it. Empty: 404.
  virtual std::string protocolLogJson() { return {}; }
};

class HealthService {
 public:
  HealthService(uv_loop_t* loop, HealthConfig config, ProxyView& proxy);
  ~HealthService();
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;

  // Binds the status endpoint and schedules the probes (first run jittered).
  Status start();
  // Closes the status endpoint and cancels probes; `done` runs once every
  // handle is closed.
  void stop(std::function<void()> done);
  // New backends/probe settings (SIGHUP); monitor history is kept by name.
  void reconfigure(HealthConfig config);

  // True while the proxy test's responder has taken Portico out of rotation.
  bool offline() const;

  // Runs one probe now (Invoke-MonitoringProbe); the callback gets the result.
  // Returns false if no such probe/target.
  bool invokeProbe(const std::string& health_set, const std::string& probe,
                   const std::string& target, std::function<void(const ProbeResult&)> done);

  // JSON texts, as served by the status endpoint and the admin socket.
  std::string healthJson(const std::string& set_glob) const;  // Get-ServerHealth
  std::string reportJson() const;                             // Get-HealthReport
  std::string probesJson(const std::string& health_set, const std::string& probe) const;
  std::string backendsJson() const;
  // Prometheus text, as served on /metrics (the proxy's metrics appended).
  std::string metricsText() const;
  // The /readyz answer: listeners up, a backend not drained, not offline.
  // On false, `reason` (if given) says why.
  bool ready(std::string* reason) const;
  // The status endpoint's bound port (the chosen one when
  // HealthConfig::status_listen.port is 0); 0 before start().
  std::uint16_t statusPort() const;

  // One answer of the directory lookup service (not a cache hit): a
  // failure (timeout, refused, malformed) with its error text, which never
  // holds a password. Consecutive failures make DirectoryLookupMonitor
  // Unhealthy (escalate-only responder). Ignored when no directory is set.
  void recordDirectoryResult(bool ok, const std::string& error);
  // One read of the fleet's shared state in Redis (or a tick while it cannot
  // be reached). Consecutive failures make FleetStateMonitor Unhealthy
  // (escalate-only responder). Ignored when no fleet is set.
  void recordFleetResult(bool ok, const std::string& error);

  // Operator overrides: AlertValue::kDisabled or kRepairing, or kUnknown to clear.
  bool setMonitorOverride(const std::string& monitor, const std::string& target, AlertValue value,
                          const std::string& by = {});

  // Timed overrides (Add-ServerMonitoringOverride -Duration). `state` is one
  // of kDisabled, kRepairing, kHealthy, kDegraded; `target` nullopt means
  // every target the monitor has now; `duration` nullopt means until
  // removed. Returns the "Monitor/target" keys it set, or an empty list
  // with `error` saying why (no such monitor, state not allowed). The
  // override ends by itself at its expiry (recorded in the action history).
  Result<std::vector<std::string>> addMonitorOverride(const std::string& monitor,
                                                      const std::optional<std::string>& target,
                                                      AlertValue state,
                                                      std::optional<Millis> duration,
                                                      const std::string& by);
  // Removes overrides (timed or not); returns the keys cleared.
  std::vector<std::string> removeMonitorOverride(const std::string& monitor,
                                                 const std::optional<std::string>& target);

  // The action history, newest first, as {"actions":[{time, kind, action,
  // target, reason, by, result}]}. Responder actions are recorded by the
  // service; operators' actions by whoever carries them out (the admin
  // socket) through recordAction(). Returns the entry's id for
  // setActionResult().
  std::uint64_t recordAction(ActionRecord record);
  void setActionResult(std::uint64_t id, std::string result);
  std::string actionsJson() const;
  // True when [health] responders = "dry-run".
  bool dryRun() const;

  // The ImapProxy component's operator state (Set-ServerComponentState
  // -Component ImapProxy -State Inactive): while Inactive, /readyz answers
  // 503 so load balancers take Portico out of rotation; sessions and
  // logins go on. `by` is who set it.
  void setComponentActive(bool active, const std::string& by);
  bool componentActive() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace portico::health
