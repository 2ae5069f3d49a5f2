#include "config/config_keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace portico::proxy {

namespace {

std::size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      std::size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitute});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string quoted(std::string_view text) {
  return "'" + std::string(text) + "'";
}

std::uint32_t lineOf(const toml::node& node) {
  return node.source().begin.line;
}

std::string suggestion(std::string_view word, std::span<const std::string_view> known) {
  auto commonPrefix = [word](std::string_view other) {
    auto end = std::mismatch(word.begin(), word.end(), other.begin(), other.end()).first;
    return static_cast<std::size_t>(end - word.begin());
  };
  // Ties go to the longer common prefix: "ImapDeepProbe" means
  // "ImapDeepTestProbe" more likely than "ImapCTPProbe".
  std::string_view best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (std::string_view candidate : known) {
    std::size_t distance = editDistance(word, candidate);
    if (distance < best_distance ||
        (distance == best_distance && commonPrefix(candidate) > commonPrefix(best))) {
      best_distance = distance;
      best = candidate;
    }
  }
  std::size_t allowed = std::max<std::size_t>(1, std::min<std::size_t>(4, word.size() / 3));
  if (best.empty() || best_distance > allowed) {
    return "";
  }
  return " (did you mean '" + std::string(best) + "'?)";
}

std::string whereIn(std::string_view section, SectionKind kind, std::string_view name) {
  std::string path(section);
  switch (kind) {
    case SectionKind::kTopLevel:
      return "at top level";
    case SectionKind::kTable:
      return "in [" + path + "]";
    case SectionKind::kTableArray:
      return "in [[" + path + "]]";
    case SectionKind::kNamedTables:
      return "in [" + path + "." + std::string(name) + "]";
  }
  return "in [" + path + "]";
}

void KeyReader::checkKeys(const toml::table& table, std::span<const std::string_view> allowed,
                          const std::string& where) {
  for (auto&& [key, node] : table) {
    if (std::find(allowed.begin(), allowed.end(), key.str()) != allowed.end()) {
      continue;
    }
    std::string what = node.is_table() ? "unknown table " : "unknown key ";
    error(key.source().begin.line,
          what + quoted(key.str()) + " " + where + suggestion(key.str(), allowed));
  }
}

bool KeyReader::readString(const toml::table& t, std::string_view key, std::string& out) {
  const toml::node* node = t.get(key);
  if (node == nullptr) {
    return false;
  }
  if (const auto* value = node->as_string()) {
    out = value->get();
    return true;
  }
  error(lineOf(*node), "expected a string for " + quoted(key));
  return false;
}

bool KeyReader::readBool(const toml::table& t, std::string_view key, bool& out) {
  const toml::node* node = t.get(key);
  if (node == nullptr) {
    return false;
  }
  if (const auto* value = node->as_boolean()) {
    out = value->get();
    return true;
  }
  error(lineOf(*node), "expected true or false for " + quoted(key));
  return false;
}

bool KeyReader::readInteger(const toml::table& t, std::string_view key, std::int64_t min,
                            std::int64_t max, std::int64_t& out) {
  const toml::node* node = t.get(key);
  if (node == nullptr) {
    return false;
  }
  const auto* value = node->as_integer();
  if (value == nullptr) {
    error(lineOf(*node), "expected an integer for " + quoted(key));
    return false;
  }
  if (value->get() < min || value->get() > max) {
    std::string range = max == std::numeric_limits<std::uint32_t>::max()
                            ? "at least " + std::to_string(min)
                            : "between " + std::to_string(min) + " and " + std::to_string(max);
    error(lineOf(*node),
          quoted(key) + " must be " + range + ", not " + std::to_string(value->get()));
    return false;
  }
  out = value->get();
  return true;
}

bool KeyReader::readNumber(const toml::table& t, std::string_view key, double& out) {
  const toml::node* node = t.get(key);
  if (node == nullptr) {
    return false;
  }
  if (const auto* value = node->as_integer()) {
    out = static_cast<double>(value->get());
    return true;
  }
  if (const auto* value = node->as_floating_point()) {
    out = value->get();
    if (std::isfinite(out)) {
      return true;
    }
  }
  error(lineOf(*node), "expected a number for " + quoted(key));
  return false;
}

bool KeyReader::readDuration(const toml::table& t, std::string_view key, Millis min, Millis& out) {
  const toml::node* node = t.get(key);
  if (node == nullptr) {
    return false;
  }
  if (node->is_number()) {
    error(lineOf(*node), quoted(key) +
                             " must be a duration string such as \"60s\" or \"500ms\", "
                             "not a bare number");
    return false;
  }
  const auto* value = node->as_string();
  if (value == nullptr) {
    error(lineOf(*node), "expected a duration string for " + quoted(key) + " (e.g. \"60s\")");
    return false;
  }
  std::optional<Millis> parsed = parseDuration(value->get());
  if (!parsed) {
    error(lineOf(*node), "bad duration " + quoted(value->get()) + " for " + quoted(key) +
                             " (expected a whole number and a unit: \"500ms\", \"60s\", "
                             "\"2m\", \"4h\")");
    return false;
  }
  if (*parsed < min) {
    error(lineOf(*node), min == Millis{1} ? quoted(key) + " must not be zero"
                                          : quoted(key) + " must be at least " +
                                                std::to_string(min.count()) + "ms");
    return false;
  }
  out = *parsed;
  return true;
}

bool KeyReader::readAddress(const toml::table& t, std::string_view key, HostPort& out) {
  std::string text;
  if (!readString(t, key, text)) {
    return false;
  }
  std::optional<HostPort> parsed = parseHostPort(text);
  if (!parsed) {
    error(lineOf(*t.get(key)), "bad address " + quoted(text) + " (expected IP:PORT)");
    return false;
  }
  out = *parsed;
  return true;
}

bool KeyReader::readTls(const toml::table& t, std::string_view key, TlsMode& out) {
  std::string text;
  if (!readString(t, key, text)) {
    return false;
  }
  for (TlsMode mode : {TlsMode::kNone, TlsMode::kStarttls, TlsMode::kImplicit}) {
    if (text == tlsModeName(mode)) {
      out = mode;
      return true;
    }
  }
  error(lineOf(*t.get(key)), "bad tls mode " + quoted(text) + " for " + quoted(key) +
                                 " (expected none, starttls or implicit)");
  return false;
}

void KeyReader::checkReadableFile(const toml::table& t, std::string_view key,
                                  const std::string& file) {
  std::uint32_t line = lineOf(*t.get(key));
  struct stat info {};
  if (::stat(file.c_str(), &info) != 0 || ::access(file.c_str(), R_OK) != 0) {
    int saved_errno = errno;
    error(line, "cannot read " + std::string(key) + " " + quoted(file) + ": " +
                    std::strerror(saved_errno));
  } else if (!S_ISREG(info.st_mode)) {
    error(line, "cannot read " + std::string(key) + " " + quoted(file) + ": not a regular file");
  }
}

// A file holding a secret (a private key, a password) must be the owner's
// alone, as OpenSSH demands of private keys: readable by group or others it
// leaks to every local account in them, writable it can be swapped. A file
// that cannot be read is reported elsewhere (or when the key is loaded).
void KeyReader::checkSecretFile(const toml::table& t, std::string_view key,
                                const std::string& file) {
  const toml::node* node = t.get(key);
  struct stat info {};
  if (node == nullptr || file.empty() || ::stat(file.c_str(), &info) != 0) {
    return;
  }
  if ((info.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(info.st_mode & 07777));
    error(lineOf(*node), std::string(key) + " " + quoted(file) +
                             " is open to group or others (mode " + mode +
                             "); a secret must be its owner's alone: chmod 600 " + quoted(file));
  }
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, std::string& out) {
  if (!readString(t, spec.key, out)) {
    return false;
  }
  if (spec.type == ValueType::kPasswordFile && !out.empty()) {
    checkReadableFile(t, spec.key, out);
  }
  if (spec.type == ValueType::kSecretFile || spec.type == ValueType::kPasswordFile) {
    checkSecretFile(t, spec.key, out);
  }
  return true;
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, bool& out) {
  return readBool(t, spec.key, out);
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, std::uint32_t& out) {
  std::int64_t value = 0;
  if (!readInteger(t, spec.key, spec.min, spec.max, value)) {
    return false;
  }
  out = static_cast<std::uint32_t>(value);
  return true;
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, std::uint64_t& out) {
  std::int64_t value = 0;
  if (!readInteger(t, spec.key, spec.min, spec.max, value)) {
    return false;
  }
  out = static_cast<std::uint64_t>(value);
  return true;
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, double& out) {
  return readNumber(t, spec.key, out);
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, Millis& out) {
  return readDuration(t, spec.key, Millis{spec.min}, out);
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, HostPort& out) {
  return readAddress(t, spec.key, out);
}

bool KeyReader::readValue(const toml::table& t, const KeySpec& spec, TlsMode& out) {
  return readTls(t, spec.key, out);
}

}  // namespace portico::proxy
