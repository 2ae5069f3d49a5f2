#include "config/config_schema.h"

#include <algorithm>
#include <array>
#include <string>

#include "fleet/fleet_state.h"

namespace portico::proxy {

namespace {

// Each section's fields stand in the order the reader reads them, which is
// also the order "did you mean" prefers among equally likely keys.

constexpr std::size_t kMaxGreeting = 512;
// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
constexpr std::size_t kMaxUnixSocketPath = 107;
constexpr std::size_t kMinStatusToken = 16;
constexpr std::int64_t kMaxSize = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kHour = 3'600'000;

using VT = ValueType;

bool isPrintableLine(const std::string& text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
}

// [process] user and group: a name, not a path or a list.
std::string accountNameProblem(const std::string& name, std::string_view key) {
  if (name.size() > 32 || name.find_first_of(" \t:/\n") != std::string::npos) {
    return "'" + std::string(key) + "' must be a user or group name";
  }
  return "";
}

constexpr Field<Config> kTopLevel[] = {
    {{"workers", VT::kInteger, "0", "Worker threads, each with its own event loop; 0: one per core",
      0, 1024},
     &Config::workers},
    {{"greeting", VT::kString, "\"Portico IMAP proxy ready\"",
      "Text of the untagged OK greeting: one printable line"},
     &Config::greeting,
     [](const Config& c) -> std::string {
       if (!isPrintableLine(c.greeting) || c.greeting.size() > kMaxGreeting) {
         return "'greeting' must be one line of at most " + std::to_string(kMaxGreeting) +
                " printable characters";
       }
       return "";
     }},
    {{"listen", VT::kTableArray, "", "Where clients connect; at least one"}},
    {{"backend", VT::kTableArray, "", "The mailbox servers; at least one"}},
    {{"routing", VT::kTable, "", "How a user picks a backend"}},
    {{"timeouts", VT::kTable, "", "How long each phase may take"}},
    {{"limits", VT::kTable, "", "Bounds on connections, lines and memory"}},
    {{"status", VT::kTable, "", "The HTTP status endpoint"}},
    {{"admin", VT::kTable, "", "The admin socket for porticoctl"}},
    {{"process", VT::kTable, "", "Memory guard and the user to switch to"}},
    {{"protocol_log", VT::kTable, "", "The per-command protocol log"}},
    {{"health", VT::kTable, "", "Probes, monitors and responders"}},
    {{"lookup", VT::kTable, "", "The directory that says where a user lives"}},
    {{"fleet", VT::kTable, "", "Nodes sharing drains and user holds through Redis"}},
    {{"backend_pool", VT::kTable, "", "Backend connections opened ahead of logins"}},
};

constexpr Field<ListenConfig> kListen[] = {
    {{"address", VT::kAddress, "", "Address and port to accept clients on", 0, 0, true},
     &ListenConfig::address},
    {{"tls", VT::kTlsMode, "\"none\"", "none, starttls or implicit (TLS from the first byte)"},
     &ListenConfig::tls},
    {{"cert", VT::kString, "\"\"", "Certificate chain (PEM); required when tls is not none"},
     &ListenConfig::cert},
    {{"key", VT::kSecretFile, "\"\"", "Private key (PEM) of cert; mode 0600 or stricter"},
     &ListenConfig::key},
    {{"require_tls", VT::kBool, "false", "Refuse LOGIN and AUTHENTICATE before STARTTLS"},
     &ListenConfig::require_tls},
    {{"compress", VT::kBool, "true", "Offer COMPRESS=DEFLATE (RFC 4978) after login"},
     &ListenConfig::compress},
    {{"tls_min_version", VT::kString, "\"TLSv1.2\"", "Oldest TLS version: TLSv1.2 or TLSv1.3"},
     &ListenConfig::tls_min_version,
     [](const ListenConfig& l) -> std::string {
       if (l.tls_min_version != "TLSv1.2" && l.tls_min_version != "TLSv1.3") {
         return "bad tls_min_version '" + l.tls_min_version + "' (TLSv1.2 or TLSv1.3)";
       }
       return "";
     }},
    {{"certificate", VT::kTableArray, "", "More certificates, chosen by SNI"}},
    {{"proxy_protocol", VT::kBool, "false", "Every connection starts with a PROXY header"},
     &ListenConfig::proxy_protocol},
    {{"trusted_networks", VT::kNetworkList, "", "The load balancers allowed to send PROXY"}},
};

constexpr Field<CertificateConfig> kCertificate[] = {
    {{"server_name", VT::kString, "", "SNI name it answers: exact or \"*.domain\""},
     &CertificateConfig::server_name},
    {{"cert", VT::kString, "", "Certificate chain (PEM)"}, &CertificateConfig::cert},
    {{"key", VT::kSecretFile, "", "Private key (PEM); mode 0600 or stricter"},
     &CertificateConfig::key},
};

constexpr Field<BackendConfig> kBackend[] = {
    {{"name", VT::kString, "", "Unique name; part of the routing hash", 0, 0, true},
     &BackendConfig::name,
     [](const BackendConfig& b) -> std::string {
       bool valid = !b.name.empty() && std::all_of(b.name.begin(), b.name.end(), [](char c) {
         return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == '-';
       });
       return valid ? ""
                    : "bad backend name '" + b.name + "' (use letters, digits, '.', '_' and '-')";
     }},
    {{"address", VT::kAddress, "", "IMAP address of the server", 0, 0, true},
     &BackendConfig::address},
    {{"weight", VT::kNumber, "1", "Share of users, relative to the other backends"},
     &BackendConfig::weight,
     [](const BackendConfig& b) -> std::string {
       return b.weight > 0 ? "" : "'weight' must be greater than 0";
     }},
    {{"tls", VT::kTlsMode, "\"none\"", "none, starttls or implicit"}, &BackendConfig::tls},
    {{"ca", VT::kString, "\"\"", "CA bundle for the backend; \"\": the system's trust store"},
     &BackendConfig::ca},
    {{"server_name", VT::kString, "\"\"", "Name expected in the certificate, sent as SNI"},
     &BackendConfig::server_name},
    {{"verify", VT::kBool, "true", "Verify the backend's certificate chain and name"},
     &BackendConfig::verify},
    {{"pin_sha256", VT::kString, "", "Hex SHA-256 of the certificate's public key"}},
    {{"client_cert", VT::kString, "\"\"", "Client certificate (PEM) shown to the backend"},
     &BackendConfig::client_cert},
    {{"client_key", VT::kSecretFile, "\"\"", "Its private key; mode 0600 or stricter"},
     &BackendConfig::client_key},
    {{"proxy_protocol", VT::kBool, "false", "Send a PROXY v2 header with the client's address"},
     &BackendConfig::proxy_protocol},
    {{"forward_id", VT::kBool, "false", "Send ID with the client's address before the login"},
     &BackendConfig::forward_id},
    {{"probe_user", VT::kString, "\"\"", "Monitoring account for the login probes"},
     &BackendConfig::probe_user},
    {{"probe_password_file", VT::kPasswordFile, "\"\"", "File holding probe_user's password"},
     &BackendConfig::probe_password_file},
};

constexpr Field<RoutingConfig> kRouting[] = {
    {{"map_file", VT::kString, "\"\"", "File of \"user backend\" lines that override the hash"},
     &RoutingConfig::map_file},
    {{"connect_retries", VT::kInteger, "2", "Further backends tried when one cannot be reached", 0,
      16},
     &RoutingConfig::connect_retries},
};

constexpr Field<Timeouts> kTimeouts[] = {
    {{"prelogin", VT::kDuration, "\"60s\"", "From connecting to a successful login", 1},
     &Timeouts::prelogin},
    {{"idle", VT::kDuration, "\"30m\"", "Client silence after login", 1}, &Timeouts::idle},
    {{"backend_connect", VT::kDuration, "\"10s\"", "Connecting to a backend, TLS included", 1},
     &Timeouts::backend_connect},
    {{"backend_login", VT::kDuration, "\"30s\"", "From connect to the replayed login's answer", 1},
     &Timeouts::backend_login},
    {{"shutdown", VT::kDuration, "\"10s\"", "Sessions' grace after \"* BYE\" on shutdown", 1},
     &Timeouts::shutdown},
    {{"tls_handshake", VT::kDuration, "\"10s\"", "A TLS handshake, or the wait for PROXY", 1},
     &Timeouts::tls_handshake},
};

constexpr Field<Limits> kLimits[] = {
    {{"max_connections", VT::kInteger, "10000", "Open client connections, whole process", 1},
     &Limits::max_connections},
    {{"max_connections_per_ip", VT::kInteger, "1000", "Open client connections from one IP", 1},
     &Limits::max_connections_per_ip},
    {{"max_bad_commands", VT::kInteger, "10", "BAD commands in a row before BYE", 1},
     &Limits::max_bad_commands},
    {{"max_login_failures", VT::kInteger, "5", "Failed logins in a session before BYE", 1},
     &Limits::max_login_failures},
    {{"login_failure_delay", VT::kDuration, "\"1s\"", "Pause after a failed login, doubled", 0},
     &Limits::login_failure_delay},
    {{"prelogin_max_line", VT::kInteger, "8192", "Longest command line before login", 1024},
     &Limits::prelogin_max_line},
    {{"prelogin_max_literal", VT::kInteger, "8192", "Largest literal before login", 1024},
     &Limits::prelogin_max_literal},
    {{"max_line", VT::kInteger, "65536", "Longest line after login, literals excluded", 1024},
     &Limits::max_line},
    {{"write_high_watermark", VT::kInteger, "262144", "Bytes queued before reading stops", 4096},
     &Limits::write_high_watermark},
    {{"max_commands_in_flight", VT::kInteger, "1000", "Commands sent and not yet answered", 1},
     &Limits::max_commands_in_flight},
    {{"max_sessions_per_user", VT::kInteger, "0",
      "Open sessions of one user, across the fleet in fleet mode; 0: no limit", 0},
     &Limits::max_sessions_per_user},
    {{"login_failures_per_ip", VT::kInteger, "0",
      "Fleet mode: failed logins from one IP in the window before its logins are refused; 0: off",
      0},
     &Limits::login_failures_per_ip},
    {{"login_failures_per_user", VT::kInteger, "0",
      "Fleet mode: failed logins for one user in the window before its logins are refused; 0: off",
      0},
     &Limits::login_failures_per_user},
    {{"login_failure_window", VT::kDuration, "\"10m\"",
      "Fleet mode: the sliding window of the two counts above, and the penalty's length", 1000},
     &Limits::login_failure_window},
};

constexpr Field<StatusConfig> kStatus[] = {
    {{"listen", VT::kAddress, "\"127.0.0.1:8080\"", "Address of the HTTP status endpoint"},
     &StatusConfig::listen},
    {{"token", VT::kString, "\"\"", "Bearer token the endpoint asks for; \"\": open"},
     &StatusConfig::token,
     [](const StatusConfig& s) -> std::string {
       if (s.token.empty() || s.token.size() >= kMinStatusToken) {
         return "";
       }
       return "'token' is " + std::to_string(s.token.size()) +
              " characters; a bearer token needs at least " + std::to_string(kMinStatusToken) +
              " (e.g. openssl rand -hex 16), or \"\" for none";
     }},
};

constexpr Field<AdminConfig> kAdmin[] = {
    {{"socket", VT::kString, "\"/run/portico/admin.sock\"", "Unix socket for porticoctl"},
     &AdminConfig::socket,
     [](const AdminConfig& a) -> std::string {
       if (a.socket.empty() || a.socket.size() > kMaxUnixSocketPath) {
         return "'socket' must be a path of 1 to " + std::to_string(kMaxUnixSocketPath) + " bytes";
       }
       return "";
     }},
    {{"group", VT::kString, "\"\"", "Group that may use the socket (mode 0660); \"\": owner"},
     &AdminConfig::group},
    {{"idle_timeout", VT::kDuration, "\"60s\"", "A connection with no request this long closes", 1},
     &AdminConfig::idle_timeout},
};

constexpr Field<ProcessConfig> kProcess[] = {
    {{"dumpable", VT::kBool, "false", "Allow core dumps and ptrace (to debug a crash)"},
     &ProcessConfig::dumpable},
    {{"user", VT::kString, "\"\"", "User to switch to once the sockets are bound"},
     &ProcessConfig::user,
     [](const ProcessConfig& p) { return accountNameProblem(p.user, "user"); }},
    {{"group", VT::kString, "\"\"", "Group to switch to; \"\": the user's primary group"},
     &ProcessConfig::group,
     [](const ProcessConfig& p) { return accountNameProblem(p.group, "group"); }},
};

constexpr Field<ProtocolLogConfig> kProtocolLog[] = {
    {{"enabled", VT::kBool, "false", "Log every command (never a password)"},
     &ProtocolLogConfig::enabled},
    {{"directory", VT::kString, "\"/var/log/portico/imap\"", "Where the log files go"},
     &ProtocolLogConfig::directory,
     [](const ProtocolLogConfig& p) -> std::string {
       return p.directory.empty() ? "'directory' must not be empty" : "";
     }},
    {{"rollover", VT::kString, "\"hourly\"", "New file every hour (hourly) or day (daily)"},
     &ProtocolLogConfig::rollover,
     [](const ProtocolLogConfig& p) -> std::string {
       if (p.rollover != "hourly" && p.rollover != "daily") {
         return "'rollover' must be \"hourly\" or \"daily\"";
       }
       return "";
     }},
    {{"max_file_size", VT::kInteger, "10485760", "Bytes before a new file; 0: no limit", 0,
      kMaxSize},
     &ProtocolLogConfig::max_file_size},
    {{"retention", VT::kDuration, "\"168h\"", "Files older than this are deleted", kHour},
     &ProtocolLogConfig::retention},
    {{"max_total_size", VT::kInteger, "1073741824", "Bytes of all files; 0: no limit", 0, kMaxSize},
     &ProtocolLogConfig::max_total_size},
};

constexpr Field<HealthConfig> kHealth[] = {
    {{"hook", VT::kString, "\"\"", "Command the responders run to restart or escalate"},
     &HealthConfig::hook},
    {{"hook_timeout", VT::kDuration, "\"30s\"", "How long one hook run may take", 1},
     &HealthConfig::hook_timeout},
    {{"move_sessions", VT::kBool, "false", "BYE the sessions of a drained backend"},
     &HealthConfig::move_sessions},
    {{"responders", VT::kString, "\"act\"", "act, or dry-run: record actions, take none"}},
    {{"action_history", VT::kInteger, "256", "Actions kept for GET /health/actions", 1, 100'000},
     &HealthConfig::action_history},
    {{"probe", VT::kTable, "", "[health.probe.<Name>]: one table per probe"}},
    {{"monitor", VT::kTable, "", "[health.monitor.<Name>]: one table per monitor"}},
};

// Probes and monitors: absent keys keep the health library's default for
// each name, so none is written here.
constexpr Field<ProbeSettings> kProbe[] = {
    {{"interval", VT::kDuration, "", "How often the probe runs", 1}, &ProbeSettings::interval},
    {{"timeout", VT::kDuration, "", "How long one run may take", 1}, &ProbeSettings::timeout},
    {{"retries", VT::kInteger, "", "Tries inside one run before it fails", 0, 100},
     &ProbeSettings::retries},
};

constexpr Field<MonitorSettings> kMonitor[] = {
    {{"unhealthy_after", VT::kInteger, "", "Failures in a row before unhealthy", 1},
     &MonitorSettings::unhealthy_after},
    {{"healthy_after", VT::kInteger, "", "Successes in a row to recover", 1},
     &MonitorSettings::healthy_after},
    {{"samples", VT::kInteger, "", "Samples over the threshold in a row (inline monitors)", 1},
     &MonitorSettings::samples},
    {{"threshold", VT::kNumber, "", "Sample value that counts as over (inline monitors)"},
     &MonitorSettings::threshold,
     [](const MonitorSettings& m) -> std::string {
       return *m.threshold < 0 ? "'threshold' must not be negative" : "";
     }},
    {{"interval", VT::kDuration, "", "How often an inline monitor samples", 1},
     &MonitorSettings::interval},
};

// [lookup]: lookup/lookup_config.cc reads the keys without a member by hand.
constexpr Field<LookupConfig> kLookup[] = {
    {{"kind", VT::kString, "\"none\"", "none, http (nginx auth_http) or redis"}},
    {{"url", VT::kString, "", "kind = http: the auth_http URL (required)"}},
    {{"timeout", VT::kDuration, "\"5s\"", "How long one directory query may take"}},
    {{"cache_ttl", VT::kDuration, "\"60s\"", "How long routes are cached; \"0s\": no cache"}},
    {{"cache_size", VT::kInteger, "100000", "Cached users per worker", 1},
     &LookupConfig::cache_size},
    {{"headers", VT::kTable, "", "kind = http: extra request headers, in order"}},
    {{"address", VT::kAddress, "\"127.0.0.1:6379\"", "kind = redis: the Redis server"}},
    {{"key", VT::kString, "\"route:{user}\"", "kind = redis: key of a user's backend"}},
    {{"shards", VT::kInteger, "0", "kind = redis: shard count; 0: no shards", 0, 1 << 20},
     &LookupConfig::shards},
    {{"shard_key", VT::kString, "\"route:shard:{shard}\"", "kind = redis: key of a shard"}},
    {{"fallback", VT::kString, "\"hash\"", "No entry for the user: hash or refuse"}},
};

// [fleet]: fleet/fleet_config.h.
constexpr Field<FleetConfig> kFleet[] = {
    {{"redis", VT::kString, "\"\"", "Redis server IP:PORT shared by the fleet; \"\": no fleet"},
     &FleetConfig::redis,
     [](const FleetConfig& f) -> std::string {
       if (!f.redis.empty() && !parseHostPort(f.redis)) {
         return "bad 'redis' address '" + f.redis + "' (IP:PORT or [IPv6]:PORT)";
       }
       return "";
     }},
    {{"node", VT::kString, "", "This node's unique name in the fleet; default: the host name"},
     &FleetConfig::node,
     [](const FleetConfig& f) -> std::string {
       if (f.node.empty()) {
         return "";
       }
       std::string problem = fleet::nodeNameProblem(f.node);
       return problem.empty() ? "" : "bad 'node' '" + f.node + "': " + problem;
     }},
    {{"on_redis_down", VT::kString, "\"local\"",
      "Redis unreachable: local (go on with the last known state) or refuse (new logins)"},
     &FleetConfig::on_redis_down,
     [](const FleetConfig& f) -> std::string {
       if (f.on_redis_down != "local" && f.on_redis_down != "refuse") {
         return "bad on_redis_down '" + f.on_redis_down + "' (local or refuse)";
       }
       return "";
     }},
    {{"health_quorum", VT::kInteger, "0",
      "Nodes finding a backend Unhealthy before all drain it; 0: a majority of the live nodes", 0,
      1000},
     &FleetConfig::health_quorum},
    {{"session_ttl", VT::kDuration, "\"30s\"",
      "Life of this node's session registry and counts in Redis unless refreshed", 1000},
     &FleetConfig::session_ttl},
};

// [backend_pool]: session/backend_pool.h.
constexpr Field<BackendPoolConfig> kBackendPool[] = {
    {{"size", VT::kInteger, "0",
      "Greeted connections kept ready per worker and backend; 0: none (no PROXY-header backends)",
      0, 64},
     &BackendPoolConfig::size},
    {{"idle_timeout", VT::kDuration, "\"30s\"",
      "A pooled connection unused this long is closed (and replaced)", 1000},
     &BackendPoolConfig::idle_timeout},
};

template <typename S>
SectionSpec spec(const Section<S>& section) {
  SectionSpec out{section.name, section.kind, {}};
  for (const Field<S>& field : section.fields) {
    out.keys.push_back(field.spec);
  }
  return out;
}

}  // namespace

const char* valueTypeName(ValueType type) {
  constexpr std::array<const char*, 12> kNames = {
      "string", "bool",        "integer",       "number",       "duration", "address",
      "tls",    "secret file", "password file", "network list", "table",    "array of tables"};
  static_assert(kNames.size() == static_cast<std::size_t>(ValueType::kTableArray) + 1,
                "one name per ValueType");
  auto index = static_cast<std::size_t>(type);
  return index < kNames.size() ? kNames[index] : "unknown";
}

// Constant-initialised (spans over constexpr arrays): ready before any
// dynamic initialiser could read them.
const Section<Config> kTopLevelSection{"", SectionKind::kTopLevel, kTopLevel};
const Section<ListenConfig> kListenSection{"listen", SectionKind::kTableArray, kListen};
const Section<CertificateConfig> kCertificateSection{"listen.certificate", SectionKind::kTableArray,
                                                     kCertificate};
const Section<BackendConfig> kBackendSection{"backend", SectionKind::kTableArray, kBackend};
const Section<RoutingConfig> kRoutingSection{"routing", SectionKind::kTable, kRouting};
const Section<LookupConfig> kLookupSection{"lookup", SectionKind::kTable, kLookup};
const Section<FleetConfig> kFleetSection{"fleet", SectionKind::kTable, kFleet};
const Section<BackendPoolConfig> kBackendPoolSection{"backend_pool", SectionKind::kTable,
                                                     kBackendPool};
const Section<Timeouts> kTimeoutsSection{"timeouts", SectionKind::kTable, kTimeouts};
const Section<Limits> kLimitsSection{"limits", SectionKind::kTable, kLimits};
const Section<StatusConfig> kStatusSection{"status", SectionKind::kTable, kStatus};
const Section<AdminConfig> kAdminSection{"admin", SectionKind::kTable, kAdmin};
const Section<ProcessConfig> kProcessSection{"process", SectionKind::kTable, kProcess};
const Section<ProtocolLogConfig> kProtocolLogSection{"protocol_log", SectionKind::kTable,
                                                     kProtocolLog};
const Section<HealthConfig> kHealthSection{"health", SectionKind::kTable, kHealth};
const Section<ProbeSettings> kProbeSection{"health.probe", SectionKind::kNamedTables, kProbe};
const Section<MonitorSettings> kMonitorSection{"health.monitor", SectionKind::kNamedTables,
                                               kMonitor};

const std::vector<SectionSpec>& configSchema() {
  static const std::vector<SectionSpec> schema = {
      spec(kTopLevelSection),    spec(kListenSection),      spec(kCertificateSection),
      spec(kBackendSection),     spec(kRoutingSection),     spec(kLookupSection),
      spec(kFleetSection),       spec(kTimeoutsSection),    spec(kLimitsSection),
      spec(kStatusSection),      spec(kAdminSection),       spec(kProcessSection),
      spec(kProtocolLogSection), spec(kHealthSection),      spec(kProbeSection),
      spec(kMonitorSection),     spec(kBackendPoolSection),
  };
  return schema;
}

const KeySpec* findKey(const SectionSpec& section, std::string_view key) {
  auto it = std::find_if(section.keys.begin(), section.keys.end(),
                         [key](const KeySpec& spec) { return spec.key == key; });
  return it != section.keys.end() ? &*it : nullptr;
}

}  // namespace portico::proxy
