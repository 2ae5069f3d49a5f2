// KeyReader: reads the keys of one TOML table by its schema section
// (config_schema.h). It refuses keys the section does not declare (with a
// "did you mean"), reads each key that has a member into the section's
// struct, checks its type, range and the field's own check, and reports
// every problem to an error sink as (line, message); the caller adds the
// file name. Absent keys keep the struct's defaults. Never throws.
//
// The configuration reader (config.cc) and the [lookup] reader
// (lookup/lookup_config.cc) share it, so that the same mistake gets the
// same message in every section.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <toml++/toml.h>

#include "config/config_schema.h"

namespace portico::proxy {

std::string quoted(std::string_view text);
std::uint32_t lineOf(const toml::node& node);

// " (did you mean 'x'?)" when one of `known` is a likely typo of `word`.
std::string suggestion(std::string_view word, std::span<const std::string_view> known);

// How a section's table is named in messages: "at top level",
// "in [timeouts]", "in [[listen]]", "in [health.probe.ImapCTPProbe]".
std::string whereIn(std::string_view section, SectionKind kind, std::string_view name = {});

class KeyReader {
 public:
  using ErrorSink = std::function<void(std::uint32_t line, const std::string& message)>;

  explicit KeyReader(ErrorSink error) : error_(std::move(error)) {}

  void error(std::uint32_t line, const std::string& message) { error_(line, message); }

  // Reports each key of `table` that `section` does not declare.
  template <typename S>
  void checkKeys(const toml::table& table, const Section<S>& section, const std::string& where);
  void checkKeys(const toml::table& table, std::span<const std::string_view> allowed,
                 const std::string& where);

  // Reads every field of `section` that has a member into `out`, in the
  // section's order: a missing required key, a wrong type or range and a
  // failed check are errors; an absent key leaves its member alone.
  template <typename S>
  void readFields(const toml::table& table, const Section<S>& section, S& out);

  // Each returns true when `key` is present and its value was stored in
  // `out`; false when absent (nothing said) or wrong (an error reported).
  bool readString(const toml::table& t, std::string_view key, std::string& out);
  bool readBool(const toml::table& t, std::string_view key, bool& out);
  bool readInteger(const toml::table& t, std::string_view key, std::int64_t min, std::int64_t max,
                   std::int64_t& out);
  bool readNumber(const toml::table& t, std::string_view key, double& out);
  bool readDuration(const toml::table& t, std::string_view key, Millis min, Millis& out);
  bool readAddress(const toml::table& t, std::string_view key, HostPort& out);
  bool readTls(const toml::table& t, std::string_view key, TlsMode& out);

  void checkReadableFile(const toml::table& t, std::string_view key, const std::string& file);
  void checkSecretFile(const toml::table& t, std::string_view key, const std::string& file);

 private:
  // One reader per member type; `spec` gives the key, range and kind.
  bool readValue(const toml::table& t, const KeySpec& spec, std::string& out);
  bool readValue(const toml::table& t, const KeySpec& spec, bool& out);
  bool readValue(const toml::table& t, const KeySpec& spec, std::uint32_t& out);
  bool readValue(const toml::table& t, const KeySpec& spec, std::uint64_t& out);
  bool readValue(const toml::table& t, const KeySpec& spec, double& out);
  bool readValue(const toml::table& t, const KeySpec& spec, Millis& out);
  bool readValue(const toml::table& t, const KeySpec& spec, HostPort& out);
  bool readValue(const toml::table& t, const KeySpec& spec, TlsMode& out);
  template <typename T>
  bool readValue(const toml::table& t, const KeySpec& spec, std::optional<T>& out) {
    T value{};
    if (!readValue(t, spec, value)) {
      return false;
    }
    out = value;
    return true;
  }

  ErrorSink error_;
};

template <typename S>
void KeyReader::checkKeys(const toml::table& table, const Section<S>& section,
                          const std::string& where) {
  std::vector<std::string_view> allowed;
  for (const Field<S>& field : section.fields) {
    allowed.push_back(field.spec.key);
  }
  checkKeys(table, allowed, where);
}

template <typename S>
void KeyReader::readFields(const toml::table& table, const Section<S>& section, S& out) {
  for (const Field<S>& field : section.fields) {
    const KeySpec& spec = field.spec;
    const toml::node* node = table.get(spec.key);
    if (node == nullptr) {
      // Only [[...]] sections have required keys.
      if (spec.required) {
        error(lineOf(table),
              "[[" + std::string(section.name) + "]] is missing " + quoted(spec.key));
      }
      continue;
    }
    bool stored = std::visit(
        [&](auto member) {
          if constexpr (std::is_same_v<decltype(member), std::monostate>) {
            return false;
          } else {
            return readValue(table, spec, out.*member);
          }
        },
        field.member);
    if (stored && field.check != nullptr) {
      if (std::string problem = field.check(out); !problem.empty()) {
        error(lineOf(*node), problem);
      }
    }
  }
}

}  // namespace portico::proxy
