// Portico's configuration: one TOML file (toml++), validated as a whole at
// start-up. Key names follow ../shared/DESIGN.md's configuration sketch and
// are a contract with operators. config_schema.h declares each key once
// (type, default, one line of documentation); conf/portico.toml documents
// each key with its default, and a test holds the file to the schema.
//
// loadConfig() never throws: on any error it returns the errors, each
// "FILE:LINE: what is wrong" (unknown key, bad address, duplicate backend,
// unreadable map file, bad duration, ...), and the caller refuses to start.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fleet/fleet_config.h"
#include "lookup/lookup_config.h"
#include "net_types.h"

namespace portico::proxy {

using Millis = std::chrono::milliseconds;

enum class TlsMode : std::uint8_t { kNone, kStarttls, kImplicit };
const char* tlsModeName(TlsMode mode);

struct HostPort {
  std::string host;  // literal IPv4 or IPv6 address, no brackets
  std::uint16_t port = 0;
  bool ipv6 = false;
  std::string text() const;  // "1.2.3.4:143" or "[::1]:143"
};

// One certificate a TLS listener can present, chosen by SNI.
struct CertificateConfig {
  std::string server_name;  // SNI name it answers ("" for the default)
  std::string cert;         // PEM chain
  std::string key;          // PEM private key
};

struct ListenConfig {
  HostPort address;
  TlsMode tls = TlsMode::kNone;
  std::string cert;  // default certificate chain (PEM)
  std::string key;
  std::vector<CertificateConfig> certificates;  // more, by SNI name: [[listen.certificate]]
  bool require_tls = false;                     // starttls: LOGINDISABLED until STARTTLS
  bool compress = true;                         // offer COMPRESS=DEFLATE after login
  std::string tls_min_version = "TLSv1.2";      // TLSv1.2 | TLSv1.3
  // Inbound PROXY protocol (v1/v2) from a load balancer: every connection
  // starts with a header, accepted only from a peer in trusted_networks
  // (required with it), bounded by timeouts.tls_handshake.
  bool proxy_protocol = false;
  std::vector<Network> trusted_networks;
};

struct BackendConfig {
  std::string name;
  HostPort address;
  double weight = 1.0;
  TlsMode tls = TlsMode::kNone;
  std::string ca;           // CA file or directory; system default store if empty
  std::string server_name;  // expected in the certificate and sent as SNI; default: address host
  bool verify = true;       // certificate verification (on whenever tls is, unless turned off)
  std::string pin_sha256;   // optional: hex SHA-256 of the certificate's public key (SPKI)
  std::string client_cert;  // optional client certificate (PEM) and key
  std::string client_key;
  bool proxy_protocol = false;
  bool forward_id = false;
  std::string probe_user;
  std::string probe_password_file;
};

struct Timeouts {
  Millis prelogin{60'000};
  Millis idle{30 * 60'000};
  Millis backend_connect{10'000};
  Millis backend_login{30'000};
  Millis shutdown{10'000};
  Millis tls_handshake{10'000};
};

struct Limits {
  std::uint32_t max_connections = 10'000;  // per process
  std::uint32_t max_connections_per_ip = 1'000;
  std::uint32_t max_bad_commands = 10;   // in a row, then BYE
  std::uint32_t max_login_failures = 5;  // per session, then BYE
  Millis login_failure_delay{1'000};     // doubled per failure
  std::uint32_t prelogin_max_line = 8'192;
  std::uint32_t prelogin_max_literal = 8'192;
  std::uint32_t max_line = 65'536;                  // relay framer limit after login
  std::uint32_t write_high_watermark = 256 * 1024;  // low watermark is half
  // Commands sent to the backend and not yet answered, per session; at the
  // cap Portico stops reading the client until half of them are answered.
  std::uint32_t max_commands_in_flight = 1'000;
  // Open sessions of one user (logins in progress included), across this
  // process's workers or, in fleet mode, across the fleet; 0: no limit.
  std::uint32_t max_sessions_per_user = 0;
  // Fleet mode: failed logins from one client IP / for one user name, across
  // the fleet, within login_failure_window before further logins from that
  // IP / for that user are refused for the rest of the window; 0: off.
  std::uint32_t login_failures_per_ip = 0;
  std::uint32_t login_failures_per_user = 0;
  Millis login_failure_window{10 * 60'000};
  bool loginPenalties() const { return login_failures_per_ip != 0 || login_failures_per_user != 0; }
};

// [backend_pool]: per worker and backend, connections opened and greeted
// ahead of logins (session/backend_pool.h). 0: no pool.
struct BackendPoolConfig {
  std::uint32_t size = 0;
  Millis idle_timeout{30'000};  // a pooled connection unused this long is closed
  bool operator==(const BackendPoolConfig&) const = default;
};

struct RoutingConfig {
  std::string map_file;
  std::uint32_t connect_retries = 2;  // further candidates tried after the first
  // user (normalised) -> backend name, from map_file, plus each backend's
  // probe_user pinned to that backend.
  std::map<std::string, std::string> map;
};

struct StatusConfig {
  HostPort listen{"127.0.0.1", 8080, false};
  std::string token;  // optional bearer token
};

struct AdminConfig {
  std::string socket = "/run/portico/admin.sock";
  std::string group;            // optional: socket mode 0660 with this group (else 0600)
  Millis idle_timeout{60'000};  // a connection with no request this long is closed
};

// [process]: how the process guards its memory, and what it becomes once
// its sockets are bound.
struct ProcessConfig {
  // false: PR_SET_DUMPABLE 0, so no core dump and no ptrace attach by other
  // processes of the same user can read passwords from memory.
  bool dumpable = false;
  // Started as root with `user` set: after binding the listeners, the
  // status endpoint and the admin socket, switch to this user (and `group`,
  // default the user's primary group) for good. Empty: stay as started.
  std::string user;
  std::string group;
};

struct ProtocolLogConfig {
  bool enabled = false;
  std::string directory = "/var/log/portico/imap";
  std::string rollover = "hourly";            // hourly | daily
  std::uint64_t max_file_size = 10ull << 20;  // bytes; 0: no size rollover
  Millis retention{7 * 24 * 3'600'000LL};     // files older than this are deleted
  std::uint64_t max_total_size = 1ull << 30;  // bytes; then oldest files go
};

// [health.probe.<Name>] and [health.monitor.<Name>]: kept as given; the
// health library applies its own defaults for absent tables and keys.
struct ProbeSettings {
  std::optional<Millis> interval;
  std::optional<Millis> timeout;
  std::optional<std::uint32_t> retries;
};
struct MonitorSettings {
  std::optional<std::uint32_t> unhealthy_after;
  std::optional<std::uint32_t> healthy_after;
  std::optional<double> threshold;
  std::optional<std::uint32_t> samples;
  std::optional<Millis> interval;  // sampled monitors: how often to sample
};

// [health]: settings shared by the responders.
struct HealthConfig {
  std::string hook;  // command the operator-hook responder runs; empty: none
  Millis hook_timeout{30'000};
  bool move_sessions = false;          // drained backends: BYE their sessions between commands
  bool responders_dry_run = false;     // responders = "dry-run": record, do nothing
  std::uint32_t action_history = 256;  // entries kept for GET /health/actions
};

struct Config {
  std::string path;           // file it was read from
  std::uint32_t workers = 0;  // 0: one per core
  std::string greeting = "Portico IMAP proxy ready";
  std::vector<ListenConfig> listen;
  std::vector<BackendConfig> backends;
  RoutingConfig routing;
  Timeouts timeouts;
  Limits limits;
  StatusConfig status;
  AdminConfig admin;
  ProcessConfig process;
  ProtocolLogConfig protocol_log;
  std::map<std::string, ProbeSettings> probes;
  std::map<std::string, MonitorSettings> monitors;
  HealthConfig health;
  LookupConfig lookup;  // [lookup]: lookup/lookup_config.h
  FleetConfig fleet;    // [fleet]: fleet/fleet_config.h
  BackendPoolConfig backend_pool;
};

struct ConfigResult {
  std::optional<Config> config;     // set when errors is empty
  std::vector<std::string> errors;  // "FILE:LINE: message"
};

ConfigResult loadConfig(const std::string& path);
ConfigResult parseConfig(const std::string& text, const std::string& path_for_errors);

// "500ms", "60s", "2m", "4h" -> milliseconds; nullopt if malformed.
std::optional<Millis> parseDuration(const std::string& text);
// "1.2.3.4:143", "[::1]:143" -> HostPort; nullopt if malformed.
std::optional<HostPort> parseHostPort(const std::string& text);

}  // namespace portico::proxy
