// The configuration schema against what it declares: the reference file
// conf/portico.toml documents exactly the schema's keys with the schema's
// defaults, the structs of config.h start from those defaults, and the
// probe and monitor tables show the health library's values.
#include "config/config_schema.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <type_traits>
#include <vector>

#include <toml++/toml.h>

#include "config/config.h"
#include "portico/health.h"

namespace portico::proxy {
namespace {

std::filesystem::path referenceFile() {
  return std::filesystem::path(PORTICO_SOURCE_DIR) / "conf" / "portico.toml";
}

// One `key = value` line of the reference file. Optional keys are
// documented commented out ("# key = example"); a "Default X" in the
// comment lines above a key states its default.
struct DocumentedKey {
  std::string section;  // schema section: "", "listen", "health.probe", ...
  std::string key;
  std::string value;  // TOML text
  bool commented = false;
  std::uint32_t line = 0;
  std::string stated_default;  // TOML text, "" when the comment states none
};

struct ReferenceFile {
  std::vector<DocumentedKey> keys;
  std::vector<std::string> tables;  // every [x] and [[x]] path, commented or not
};

// "health.probe.ImapCTPProbe" -> "health.probe": the schema section a table
// path belongs to.
std::string sectionOf(const std::string& path) {
  for (const SectionSpec& section : configSchema()) {
    if (section.kind == SectionKind::kNamedTables &&
        path.rfind(std::string(section.name) + ".", 0) == 0) {
      return std::string(section.name);
    }
  }
  return path;
}

bool isToml(const std::string& text) {
  try {
    (void)toml::parse(text);
    return true;
  } catch (const toml::parse_error&) {
    return false;
  }
}

// Reads the file line by line. A commented line counts as a key or a table
// only when it is valid TOML on its own, so prose that happens to hold an
// '=' does not. A commented key belongs to the last table header above it,
// commented or not; a real key to the last real header.
ReferenceFile scan(const std::filesystem::path& path) {
  static const std::regex kHeader(R"(^\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?$)");
  static const std::regex kKey(R"(^([A-Za-z0-9_]+) = (.*)$)");
  static const std::regex kDefault(R"(Default ("[^"]*"|-?[0-9]+|true|false))");
  ReferenceFile out;
  std::ifstream in(path);
  std::string real_section;
  std::string documented_section;
  std::string stated_default;
  std::string text;
  std::uint32_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    bool commented = text.rfind("#", 0) == 0;
    std::string body = commented ? text.substr(text.rfind("# ", 0) == 0 ? 2 : 1) : text;
    std::smatch match;
    if (std::regex_match(body, match, kHeader) && isToml(body)) {
      documented_section = sectionOf(match[1]);
      if (!commented) {
        real_section = documented_section;
      }
      out.tables.push_back(match[1]);
      stated_default.clear();
    } else if (std::regex_match(body, match, kKey) && isToml(body)) {
      out.keys.push_back({commented ? documented_section : real_section, match[1], match[2],
                          commented, line, stated_default});
      stated_default.clear();
    } else if (commented && std::regex_search(body, match, kDefault)) {
      stated_default = match[1];
    }
  }
  return out;
}

const SectionSpec* findSection(std::string_view name) {
  for (const SectionSpec& section : configSchema()) {
    if (section.name == name) {
      return &section;
    }
  }
  return nullptr;
}

// Two TOML values written as text are the same value.
bool sameValue(const std::string& a, const std::string& b) {
  return toml::parse("v = " + a) == toml::parse("v = " + b);
}

TEST(ConfigSchemaTest, EveryKeyOfTheReferenceFileIsInTheSchema) {
  ReferenceFile file = scan(referenceFile());
  ASSERT_GT(file.keys.size(), 100u) << "no keys read from " << referenceFile();
  for (const DocumentedKey& k : file.keys) {
    const SectionSpec* section = findSection(k.section);
    ASSERT_NE(section, nullptr) << "line " << k.line << ": no section '" << k.section << "'";
    EXPECT_NE(findKey(*section, k.key), nullptr)
        << "line " << k.line << ": '" << k.key << "' is not in the schema of [" << k.section << "]";
  }
  for (const std::string& table : file.tables) {
    EXPECT_NE(findSection(sectionOf(table)), nullptr) << "table [" << table << "]";
  }
}

TEST(ConfigSchemaTest, EverySchemaKeyIsDocumentedInTheReferenceFile) {
  ReferenceFile file = scan(referenceFile());
  for (const SectionSpec& section : configSchema()) {
    std::string prefix = section.name.empty() ? "" : std::string(section.name) + ".";
    for (const KeySpec& spec : section.keys) {
      bool as_key = std::any_of(file.keys.begin(), file.keys.end(), [&](const DocumentedKey& k) {
        return k.section == section.name && k.key == spec.key;
      });
      std::string path = prefix + std::string(spec.key);
      bool as_table =
          std::any_of(file.tables.begin(), file.tables.end(), [&](const std::string& table) {
            return table == path || table.rfind(path + ".", 0) == 0;
          });
      EXPECT_TRUE(as_key || as_table)
          << "'" << spec.key << "' (" << valueTypeName(spec.type) << ") of [" << section.name
          << "] is not in " << referenceFile();
    }
  }
}

// The file's rule: in the tables that appear once, every key is written
// with its default; everywhere, a "Default X" in a key's comment is the
// schema's default. ([[listen]] and [[backend]] hold an example setup, and
// commented-out keys show example values.)
TEST(ConfigSchemaTest, ReferenceFileStatesTheSchemaDefaults) {
  ReferenceFile file = scan(referenceFile());
  int stated = 0;
  for (const DocumentedKey& k : file.keys) {
    const SectionSpec* section = findSection(k.section);
    ASSERT_NE(section, nullptr) << k.section;
    const KeySpec* spec = findKey(*section, k.key);
    if (spec == nullptr) {
      continue;  // reported by EveryKeyOfTheReferenceFileIsInTheSchema
    }
    std::string where = "line " + std::to_string(k.line) + " '" + k.key + "'";
    if (!k.stated_default.empty()) {
      ++stated;
      EXPECT_FALSE(spec->default_text.empty()) << where << " states a default the schema lacks";
      if (!spec->default_text.empty()) {
        EXPECT_TRUE(sameValue(k.stated_default, std::string(spec->default_text)))
            << where << ": the comment says " << k.stated_default << ", the schema "
            << spec->default_text;
      }
    }
    bool once = section->kind == SectionKind::kTopLevel || section->kind == SectionKind::kTable;
    if (once && !k.commented && !spec->default_text.empty()) {
      EXPECT_TRUE(sameValue(k.value, std::string(spec->default_text)))
          << where << " is written as " << k.value << ", the schema's default is "
          << spec->default_text;
    }
  }
  EXPECT_GT(stated, 25) << "the comments' \"Default X\" were not found";
}

// A value that stands for a required key when the defaults are written.
std::string sampleValue(const KeySpec& spec) {
  return spec.type == ValueType::kAddress ? "\"127.0.0.1:10143\"" : "\"mbx1\"";
}

// Every section once, with each key that has a default written as the
// schema gives it (and the required keys of [[listen]] and [[backend]]).
std::string documentOfDefaults() {
  std::string out;
  for (const SectionSpec& section : configSchema()) {
    if (section.kind == SectionKind::kNamedTables || section.name == "listen.certificate") {
      continue;  // no defaults of their own
    }
    if (section.kind == SectionKind::kTable) {
      out += "[" + std::string(section.name) + "]\n";
    } else if (section.kind == SectionKind::kTableArray) {
      out += "[[" + std::string(section.name) + "]]\n";
    }
    for (const KeySpec& spec : section.keys) {
      if (spec.required) {
        out += std::string(spec.key) + " = " + sampleValue(spec) + "\n";
      } else if (!spec.default_text.empty()) {
        out += std::string(spec.key) + " = " + std::string(spec.default_text) + "\n";
      }
    }
  }
  return out;
}

template <typename T>
bool sameMember(const T& a, const T& b) {
  if constexpr (std::is_same_v<T, HostPort>) {
    return a.text() == b.text();
  } else {
    return a == b;
  }
}

// Each member the schema binds and gives a default reads back from the
// written default as the struct's own initial value.
template <typename S>
void expectStructDefaults(const Section<S>& section, const S& written, const S& fresh) {
  for (const Field<S>& field : section.fields) {
    if (field.spec.default_text.empty()) {
      continue;
    }
    std::visit(
        [&](auto member) {
          if constexpr (!std::is_same_v<decltype(member), std::monostate>) {
            EXPECT_TRUE(sameMember(written.*member, fresh.*member))
                << "[" << section.name << "] " << field.spec.key << " = " << field.spec.default_text
                << " is not the struct's default";
          }
        },
        field.member);
  }
}

TEST(ConfigSchemaTest, SchemaDefaultsAreTheStructDefaults) {
  std::string text = documentOfDefaults();
  ConfigResult written = parseConfig(text, "defaults.toml");
  ASSERT_TRUE(written.errors.empty()) << written.errors[0] << "\n" << text;
  ConfigResult fresh = parseConfig(R"([[listen]]
address = "127.0.0.1:10143"
[[backend]]
name = "mbx1"
address = "127.0.0.1:10143"
)",
                                   "minimal.toml");
  ASSERT_TRUE(fresh.errors.empty()) << fresh.errors[0];
  const Config& w = *written.config;
  const Config& f = *fresh.config;
  expectStructDefaults(kTopLevelSection, w, f);
  expectStructDefaults(kListenSection, w.listen.at(0), f.listen.at(0));
  expectStructDefaults(kBackendSection, w.backends.at(0), f.backends.at(0));
  expectStructDefaults(kRoutingSection, w.routing, f.routing);
  expectStructDefaults(kTimeoutsSection, w.timeouts, f.timeouts);
  expectStructDefaults(kLimitsSection, w.limits, f.limits);
  expectStructDefaults(kStatusSection, w.status, f.status);
  expectStructDefaults(kAdminSection, w.admin, f.admin);
  expectStructDefaults(kProcessSection, w.process, f.process);
  expectStructDefaults(kProtocolLogSection, w.protocol_log, f.protocol_log);
  expectStructDefaults(kHealthSection, w.health, f.health);
  expectStructDefaults(kFleetSection, w.fleet, f.fleet);
  // The keys read by hand: compared whole.
  EXPECT_EQ(w.backends.at(0).pin_sha256, f.backends.at(0).pin_sha256);
  EXPECT_EQ(w.health.responders_dry_run, f.health.responders_dry_run);
  EXPECT_TRUE(w.lookup == f.lookup) << "[lookup] defaults differ from LookupConfig's";
}

// The probe and monitor tables of the reference file show the values the
// health library uses when a table or key is absent.
TEST(ConfigSchemaTest, ReferenceProbesAndMonitorsShowTheHealthDefaults) {
  ConfigResult result = loadConfig(referenceFile().string());
  ASSERT_TRUE(result.errors.empty()) << result.errors[0];
  for (const auto& [name, probe] : result.config->probes) {
    health::ProbeSettings defaults = health::defaultProbeSettings(name);
    EXPECT_EQ(probe.interval.value_or(Millis{-1}), defaults.interval) << name;
    EXPECT_EQ(probe.timeout.value_or(Millis{-1}), defaults.timeout) << name;
    EXPECT_EQ(probe.retries.value_or(999), defaults.retries) << name;
  }
  for (const auto& [name, monitor] : result.config->monitors) {
    health::MonitorSettings defaults = health::defaultMonitorSettings(name);
    // Sampled monitors count samples over the threshold in a row.
    std::optional<std::uint32_t> after =
        monitor.samples ? monitor.samples : monitor.unhealthy_after;
    EXPECT_EQ(after.value_or(0), defaults.unhealthy_after) << name;
    if (monitor.healthy_after) {
      EXPECT_EQ(*monitor.healthy_after, defaults.healthy_after) << name;
    }
    if (monitor.threshold) {
      EXPECT_EQ(*monitor.threshold, defaults.threshold) << name;
    }
    if (monitor.interval) {
      EXPECT_EQ(*monitor.interval, defaults.sample_interval) << name;
    }
  }
}

}  // namespace
}  // namespace portico::proxy
