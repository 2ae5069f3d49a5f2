// The configuration schema: every key Portico reads, declared once.
//
// Each section of the TOML file (the top level, [timeouts], [[backend]],
// [health.probe.<Name>], ...) has one table of Fields: the key, its value
// type, its default as conf/portico.toml writes it, one line of
// documentation and, for most keys, the member of the section's struct
// (config.h) the value is read into, with an optional check of the value.
//
// The reader (config.cc, lookup/lookup_config.cc) takes from these tables
// the keys a section allows (and the "did you mean" it offers for any
// other), reads every key that has a member through them, and reads by hand
// only the keys with none: sub-tables, and keys whose value is spread over
// several members or needs the reader's state (duplicate names).
// config_schema_test.cc holds conf/portico.toml and the structs' defaults
// against these tables.
//
// Everything here is static data: the tables live as long as the program.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "config/config.h"

namespace portico::proxy {

enum class ValueType : std::uint8_t {
  kString,
  kBool,
  kInteger,       // within KeySpec::min and max
  kNumber,        // integer or finite float
  kDuration,      // "500ms", "60s", "2m", "4h"; at least KeySpec::min milliseconds
  kAddress,       // "IP:PORT"
  kTlsMode,       // none | starttls | implicit
  kSecretFile,    // path of a private key: mode 0600 or stricter
  kPasswordFile,  // path of a password: readable at start, mode 0600 or stricter
  kNetworkList,   // array of CIDR strings
  kTable,         // a sub-table ([routing], inline { ... })
  kTableArray,    // [[listen]]
};
const char* valueTypeName(ValueType type);

// What a key is, without the types of config.h: enough to document it.
struct KeySpec {
  std::string_view key;
  ValueType type;
  // The default as TOML, the way conf/portico.toml writes it ("\"60s\"",
  // "10000", "false"); "" when there is none to write: a required key, a
  // sub-table, or a default that depends on other keys or on a name.
  std::string_view default_text;
  std::string_view doc;  // one line
  // kInteger: the range ("at least min" when max is the uint32 maximum);
  // kDuration: the least value in milliseconds (1: "must not be zero").
  std::int64_t min = 0;
  std::int64_t max = std::numeric_limits<std::uint32_t>::max();
  bool required = false;  // "[[backend]] is missing 'name'" when absent
};

// Where a value lands in the section's struct S; std::monostate: the
// reader reads the key by hand.
template <typename S>
using Member = std::variant<std::monostate, std::string S::*, bool S::*, std::uint32_t S::*,
                            std::uint64_t S::*, double S::*, Millis S::*, HostPort S::*,
                            TlsMode S::*, std::optional<std::uint32_t> S::*,
                            std::optional<double> S::*, std::optional<Millis> S::*>;

template <typename S>
struct Field {
  KeySpec spec;
  Member<S> member = {};
  // Run after the value was read into the member: "" when it is good, else
  // the error, reported at the key's line.
  std::string (*check)(const S& section) = nullptr;
};

enum class SectionKind : std::uint8_t {
  kTopLevel,     // keys before the first table
  kTable,        // [name]
  kTableArray,   // [[name]]
  kNamedTables,  // [name.<Name>], one table per known name
};

template <typename S>
struct Section {
  std::string_view name;  // TOML path: "timeouts", "listen.certificate", "health.probe"
  SectionKind kind;
  std::span<const Field<S>> fields;
};

// The sections, one per struct of config.h that a table fills.
extern const Section<Config> kTopLevelSection;
extern const Section<ListenConfig> kListenSection;
extern const Section<CertificateConfig> kCertificateSection;
extern const Section<BackendConfig> kBackendSection;
extern const Section<RoutingConfig> kRoutingSection;
extern const Section<LookupConfig> kLookupSection;
extern const Section<FleetConfig> kFleetSection;
extern const Section<BackendPoolConfig> kBackendPoolSection;
extern const Section<Timeouts> kTimeoutsSection;
extern const Section<Limits> kLimitsSection;
extern const Section<StatusConfig> kStatusSection;
extern const Section<AdminConfig> kAdminSection;
extern const Section<ProcessConfig> kProcessSection;
extern const Section<ProtocolLogConfig> kProtocolLogSection;
extern const Section<HealthConfig> kHealthSection;
extern const Section<ProbeSettings> kProbeSection;
extern const Section<MonitorSettings> kMonitorSection;

// The names [health.probe.<Name>] and [health.monitor.<Name>] accept.
inline constexpr std::array<std::string_view, 4> kProbeNames = {
    "ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe"};
inline constexpr std::array<std::string_view, 7> kMonitorNames = {
    "ImapProxyTestMonitor",
    "ImapCTPMonitor",
    "ImapSelfTestMonitor",
    "ImapDeepTestMonitor",
    "AverageCommandProcessingTimeGt60sMonitor",
    "RequestsQueuedGt500Monitor",
    "DirectoryLookupMonitor"};

// One section as documentation: its name, kind and keys.
struct SectionSpec {
  std::string_view name;  // "" for the top level
  SectionKind kind;
  std::vector<KeySpec> keys;
};
// Every section, in the order conf/portico.toml documents them.
const std::vector<SectionSpec>& configSchema();

// The spec of `key` in `section`; nullptr if it has none.
const KeySpec* findKey(const SectionSpec& section, std::string_view key);

}  // namespace portico::proxy
