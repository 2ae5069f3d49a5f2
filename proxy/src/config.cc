#include "config.h"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <sstream>
#include <string_view>
#include <utility>

#include <toml++/toml.h>

#include "lookup/lookup_toml.h"
#include "portico/ascii.h"
#include "routing.h"

// parseConfig() turns toml++'s parse_error into an error line; a build of
// toml++ without exceptions would need parse_result handling instead.
static_assert(TOML_EXCEPTIONS, "Portico expects toml++ with exceptions enabled");

namespace portico::proxy {

namespace {

constexpr std::array<const char*, 3> kTlsModeNames = {"none", "starttls", "implicit"};
static_assert(kTlsModeNames.size() == static_cast<std::size_t>(TlsMode::kImplicit) + 1,
              "one name per TlsMode");

constexpr std::array<std::string_view, 4> kProbeNames = {"ImapProxyTestProbe", "ImapCTPProbe",
                                                         "ImapSelfTestProbe", "ImapDeepTestProbe"};
constexpr std::array<std::string_view, 7> kMonitorNames = {
    "ImapProxyTestMonitor",
    "ImapCTPMonitor",
    "ImapSelfTestMonitor",
    "ImapDeepTestMonitor",
    "AverageCommandProcessingTimeGt60sMonitor",
    "RequestsQueuedGt500Monitor",
    "DirectoryLookupMonitor"};

// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
constexpr std::size_t kMaxUnixSocketPath = 107;
constexpr std::size_t kMaxGreeting = 512;
constexpr std::size_t kMinStatusToken = 16;

using Keys = std::initializer_list<std::string_view>;

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

// " (did you mean 'x'?)" when one of `known` is a likely typo of `word`.
template <typename Range>
std::string suggestion(std::string_view word, const Range& known) {
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

std::string trimmed(std::string_view text) {
  const char* space = " \t\r\n\v\f";
  std::size_t begin = text.find_first_not_of(space);
  if (begin == std::string_view::npos) {
    return "";
  }
  std::size_t end = text.find_last_not_of(space);
  return std::string(text.substr(begin, end - begin + 1));
}

bool validBackendName(std::string_view name) {
  if (name.empty()) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

std::uint32_t lineOf(const toml::node& node) {
  return node.source().begin.line;
}

std::string quoted(std::string_view text) {
  return "'" + std::string(text) + "'";
}

// Reads a parsed TOML document into a Config, collecting every error. Errors
// are sorted by where they occur: config lines first by line, and map-file
// errors at the line of `map_file`, in map-file order.
class ConfigReader {
 public:
  explicit ConfigReader(std::string path) : path_(std::move(path)) {}

  void error(std::uint32_t line, const std::string& message) {
    errors_.push_back({line, 0, path_ + ":" + std::to_string(line) + ": " + message});
  }

  std::vector<std::string> takeErrors() {
    std::stable_sort(errors_.begin(), errors_.end(), [](const Error& a, const Error& b) {
      return std::pair(a.line, a.subline) < std::pair(b.line, b.subline);
    });
    std::vector<std::string> out;
    for (Error& e : errors_) {
      out.push_back(std::move(e.text));
    }
    return out;
  }

  Config read(const toml::table& root);

 private:
  struct Error {
    std::uint32_t line;
    std::uint32_t subline;
    std::string text;
  };

  void checkKeys(const toml::table& table, Keys allowed, const std::string& where);
  const toml::table* table(const toml::table& parent, std::string_view key,
                           const std::string& name);
  const toml::array* arrayOfTables(const toml::table& parent, std::string_view key);

  bool readString(const toml::table& t, std::string_view key, std::string& out);
  bool readBool(const toml::table& t, std::string_view key, bool& out);
  bool readInteger(const toml::table& t, std::string_view key, std::int64_t min, std::int64_t max,
                   std::int64_t& out);
  bool readCount(const toml::table& t, std::string_view key, std::uint32_t min, std::uint32_t& out);
  bool readNumber(const toml::table& t, std::string_view key, double& out);
  bool readDuration(const toml::table& t, std::string_view key, Millis min, Millis& out);
  bool readAddress(const toml::table& t, std::string_view key, HostPort& out);
  bool readTls(const toml::table& t, std::string_view key, TlsMode& out);

  void readListeners(const toml::table& root, Config& config);
  void readProxyProtocol(const toml::table& t, ListenConfig& listen);
  void readBackends(const toml::table& root, Config& config);
  void readRouting(const toml::table* routing, Config& config);
  void readMapFile(const std::string& file, std::uint32_t config_line, Config& config);
  void pinProbeUsers(Config& config);
  void readTimeouts(const toml::table& t, Timeouts& timeouts);
  void readLimits(const toml::table& t, Limits& limits);
  void readHealth(const toml::table& t, Config& config);
  // Calls read(name, table, "in [health.<kind>.<name>]") for each table
  // under [health.<kind>] whose name is one of `names`.
  template <typename Names, typename Read>
  void readNamedTables(const toml::table& health, const std::string& kind, const Names& names,
                       Read read);
  void checkReadableFile(const toml::table& t, std::string_view key, const std::string& file);
  void checkSecretFile(const toml::table& t, std::string_view key, const std::string& file);

  std::string path_;
  std::vector<Error> errors_;
  // Where each backend's probe_user was given (0: not given), and where the
  // map file names each user, for conflict messages.
  std::vector<std::uint32_t> probe_user_lines_;
  std::map<std::string, std::uint32_t> map_file_lines_;
  std::string map_file_;
  std::uint32_t map_file_config_line_ = 0;
};

void ConfigReader::checkKeys(const toml::table& table, Keys allowed, const std::string& where) {
  for (auto&& [key, node] : table) {
    if (std::find(allowed.begin(), allowed.end(), key.str()) != allowed.end()) {
      continue;
    }
    std::string what = node.is_table() ? "unknown table " : "unknown key ";
    error(key.source().begin.line,
          what + quoted(key.str()) + " " + where + suggestion(key.str(), allowed));
  }
}

const toml::table* ConfigReader::table(const toml::table& parent, std::string_view key,
                                       const std::string& name) {
  const toml::node* node = parent.get(key);
  if (node == nullptr) {
    return nullptr;
  }
  if (const toml::table* t = node->as_table()) {
    return t;
  }
  error(lineOf(*node), "expected a table for " + quoted(key) + " (write [" + name + "])");
  return nullptr;
}

const toml::array* ConfigReader::arrayOfTables(const toml::table& parent, std::string_view key) {
  const toml::node* node = parent.get(key);
  if (node == nullptr) {
    return nullptr;
  }
  const toml::array* array = node->as_array();
  if (array != nullptr &&
      std::all_of(array->begin(), array->end(), [](const toml::node& n) { return n.is_table(); })) {
    return array;
  }
  error(lineOf(*node),
        "expected an array of tables for " + quoted(key) + " (write [[" + std::string(key) + "]])");
  return nullptr;
}

bool ConfigReader::readString(const toml::table& t, std::string_view key, std::string& out) {
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

bool ConfigReader::readBool(const toml::table& t, std::string_view key, bool& out) {
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

bool ConfigReader::readInteger(const toml::table& t, std::string_view key, std::int64_t min,
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

bool ConfigReader::readCount(const toml::table& t, std::string_view key, std::uint32_t min,
                             std::uint32_t& out) {
  std::int64_t value = 0;
  if (!readInteger(t, key, min, std::numeric_limits<std::uint32_t>::max(), value)) {
    return false;
  }
  out = static_cast<std::uint32_t>(value);
  return true;
}

bool ConfigReader::readNumber(const toml::table& t, std::string_view key, double& out) {
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

bool ConfigReader::readDuration(const toml::table& t, std::string_view key, Millis min,
                                Millis& out) {
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

bool ConfigReader::readAddress(const toml::table& t, std::string_view key, HostPort& out) {
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

bool ConfigReader::readTls(const toml::table& t, std::string_view key, TlsMode& out) {
  std::string text;
  if (!readString(t, key, text)) {
    return false;
  }
  for (std::size_t i = 0; i < kTlsModeNames.size(); ++i) {
    if (text == kTlsModeNames[i]) {
      out = static_cast<TlsMode>(i);
      return true;
    }
  }
  error(lineOf(*t.get(key)), "bad tls mode " + quoted(text) + " for " + quoted(key) +
                                 " (expected none, starttls or implicit)");
  return false;
}

void ConfigReader::checkReadableFile(const toml::table& t, std::string_view key,
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
void ConfigReader::checkSecretFile(const toml::table& t, std::string_view key,
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

Config ConfigReader::read(const toml::table& root) {
  Config config;
  config.path = path_;
  checkKeys(root,
            {"workers", "greeting", "listen", "backend", "routing", "timeouts", "limits", "status",
             "admin", "process", "protocol_log", "health", "lookup"},
            "at top level");

  std::int64_t workers = 0;
  if (readInteger(root, "workers", 0, 1024, workers)) {
    config.workers = static_cast<std::uint32_t>(workers);
  }
  if (readString(root, "greeting", config.greeting)) {
    bool printable = std::all_of(config.greeting.begin(), config.greeting.end(), [](char c) {
      return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
    });
    if (!printable || config.greeting.size() > kMaxGreeting) {
      error(lineOf(*root.get("greeting")), "'greeting' must be one line of at most " +
                                               std::to_string(kMaxGreeting) +
                                               " printable characters");
    }
  }

  readListeners(root, config);
  readBackends(root, config);
  const toml::table* routing = table(root, "routing", "routing");
  readRouting(routing, config);
  if (const toml::table* t = table(root, "timeouts", "timeouts")) {
    readTimeouts(*t, config.timeouts);
  }
  if (const toml::table* t = table(root, "limits", "limits")) {
    readLimits(*t, config.limits);
  }
  if (const toml::table* t = table(root, "status", "status")) {
    checkKeys(*t, {"listen", "token"}, "in [status]");
    readAddress(*t, "listen", config.status.listen);
    if (readString(*t, "token", config.status.token) && !config.status.token.empty() &&
        config.status.token.size() < kMinStatusToken) {
      error(lineOf(*t->get("token")), "'token' is " + std::to_string(config.status.token.size()) +
                                          " characters; a bearer token needs at least " +
                                          std::to_string(kMinStatusToken) +
                                          " (e.g. openssl rand -hex 16), or \"\" for none");
    }
  }
  if (const toml::table* t = table(root, "admin", "admin")) {
    checkKeys(*t, {"socket", "group", "idle_timeout"}, "in [admin]");
    readString(*t, "group", config.admin.group);
    readDuration(*t, "idle_timeout", Millis{1}, config.admin.idle_timeout);
    if (readString(*t, "socket", config.admin.socket) &&
        (config.admin.socket.empty() || config.admin.socket.size() > kMaxUnixSocketPath)) {
      error(lineOf(*t->get("socket")),
            "'socket' must be a path of 1 to " + std::to_string(kMaxUnixSocketPath) + " bytes");
    }
  }
  if (const toml::table* t = table(root, "process", "process")) {
    checkKeys(*t, {"dumpable", "user", "group"}, "in [process]");
    readBool(*t, "dumpable", config.process.dumpable);
    for (auto [key, out] :
         {std::pair{"user", &config.process.user}, std::pair{"group", &config.process.group}}) {
      // "" is the default: stay as started.
      if (readString(*t, key, *out) &&
          (out->size() > 32 || out->find_first_of(" \t:/\n") != std::string::npos)) {
        error(lineOf(*t->get(key)), quoted(key) + " must be a user or group name");
      }
    }
    if (config.process.user.empty() && !config.process.group.empty()) {
      error(lineOf(*t->get("group")), "'group' needs 'user' in [process]");
    }
  }
  if (const toml::table* t = table(root, "protocol_log", "protocol_log")) {
    checkKeys(*t,
              {"enabled", "directory", "rollover", "max_file_size", "retention", "max_total_size"},
              "in [protocol_log]");
    readBool(*t, "enabled", config.protocol_log.enabled);
    if (readString(*t, "rollover", config.protocol_log.rollover) &&
        config.protocol_log.rollover != "hourly" && config.protocol_log.rollover != "daily") {
      error(lineOf(*t->get("rollover")), "'rollover' must be \"hourly\" or \"daily\"");
    }
    std::int64_t size = 0;
    if (readInteger(*t, "max_file_size", 0, INT64_MAX, size)) {
      config.protocol_log.max_file_size = static_cast<std::uint64_t>(size);
    }
    if (readInteger(*t, "max_total_size", 0, INT64_MAX, size)) {
      config.protocol_log.max_total_size = static_cast<std::uint64_t>(size);
    }
    readDuration(*t, "retention", Millis{3'600'000}, config.protocol_log.retention);
    if (readString(*t, "directory", config.protocol_log.directory) &&
        config.protocol_log.directory.empty()) {
      error(lineOf(*t->get("directory")), "'directory' must not be empty");
    }
  }
  if (const toml::table* t = table(root, "health", "health")) {
    readHealth(*t, config);
  }
  if (const toml::table* t = table(root, "lookup", "lookup")) {
    readLookupConfig(*t, config.lookup, [this](std::uint32_t line, const std::string& message) {
      error(line, message);
    });
  }
  return config;
}

void ConfigReader::readListeners(const toml::table& root, Config& config) {
  const toml::array* listeners = arrayOfTables(root, "listen");
  if (listeners == nullptr || listeners->empty()) {
    const toml::node* node = root.get("listen");
    if (node == nullptr || listeners != nullptr) {
      error(node != nullptr ? lineOf(*node) : 1, "at least one [[listen]] is required");
    }
    return;
  }
  std::map<std::string, std::uint32_t> seen;
  for (const toml::node& node : *listeners) {
    const toml::table& t = *node.as_table();
    checkKeys(t,
              {"address", "tls", "cert", "key", "require_tls", "tls_min_version", "certificate",
               "proxy_protocol", "trusted_networks"},
              "in [[listen]]");
    ListenConfig listen;
    if (t.get("address") == nullptr) {
      error(lineOf(t), "[[listen]] is missing 'address'");
    } else if (readAddress(t, "address", listen.address)) {
      std::uint32_t line = lineOf(*t.get("address"));
      auto [it, inserted] = seen.emplace(listen.address.text(), line);
      if (!inserted) {
        error(line, "duplicate listen address " + quoted(listen.address.text()) +
                        " (first at line " + std::to_string(it->second) + ")");
      }
    }
    readTls(t, "tls", listen.tls);
    readString(t, "cert", listen.cert);
    readString(t, "key", listen.key);
    checkSecretFile(t, "key", listen.key);
    readBool(t, "require_tls", listen.require_tls);
    if (readString(t, "tls_min_version", listen.tls_min_version) &&
        listen.tls_min_version != "TLSv1.2" && listen.tls_min_version != "TLSv1.3") {
      error(lineOf(*t.get("tls_min_version")),
            "bad tls_min_version " + quoted(listen.tls_min_version) + " (TLSv1.2 or TLSv1.3)");
    }
    if (const toml::node* certs = t.get("certificate")) {
      const toml::array* list = certs->as_array();
      if (list == nullptr || !list->is_array_of_tables()) {
        error(lineOf(*certs), "'certificate' must be an array of tables: [[listen.certificate]]");
      } else {
        for (const toml::node& c : *list) {
          const toml::table& ct = *c.as_table();
          checkKeys(ct, {"server_name", "cert", "key"}, "in [[listen.certificate]]");
          CertificateConfig cert;
          readString(ct, "server_name", cert.server_name);
          readString(ct, "cert", cert.cert);
          readString(ct, "key", cert.key);
          checkSecretFile(ct, "key", cert.key);
          if (cert.server_name.empty() || cert.cert.empty() || cert.key.empty()) {
            error(lineOf(ct), "[[listen.certificate]] needs 'server_name', 'cert' and 'key'");
          }
          listen.certificates.push_back(std::move(cert));
        }
      }
    }
    if (listen.tls != TlsMode::kNone) {
      for (std::string_view key : {"cert", "key"}) {
        const std::string& value = key == "cert" ? listen.cert : listen.key;
        if (value.empty()) {
          error(lineOf(*t.get("tls")), "[[listen]] with tls = \"" +
                                           std::string(tlsModeName(listen.tls)) + "\" needs " +
                                           quoted(key));
        }
      }
    }
    if (listen.require_tls && listen.tls == TlsMode::kNone) {
      error(lineOf(*t.get("require_tls")),
            "'require_tls' needs tls = \"starttls\" or \"implicit\" on this listener");
    }
    readProxyProtocol(t, listen);
    config.listen.push_back(std::move(listen));
  }
}

// proxy_protocol and trusted_networks: each needs the other, so that a
// listener never believes a header from just anyone.
void ConfigReader::readProxyProtocol(const toml::table& t, ListenConfig& listen) {
  readBool(t, "proxy_protocol", listen.proxy_protocol);
  const toml::node* node = t.get("trusted_networks");
  if (node != nullptr) {
    const toml::array* list = node->as_array();
    if (list == nullptr) {
      error(lineOf(*node), "expected an array of strings for 'trusted_networks'");
      return;
    }
    for (const toml::node& item : *list) {
      std::string message;
      const auto* text = item.as_string();
      auto network = text != nullptr ? parseNetwork(text->get(), message) : std::nullopt;
      if (!network) {
        error(lineOf(item), text != nullptr ? message : "expected a string in 'trusted_networks'");
      } else {
        listen.trusted_networks.push_back(*network);
      }
    }
  }
  if (listen.proxy_protocol &&
      (node == nullptr || node->as_array() == nullptr || node->as_array()->empty())) {
    error(lineOf(*t.get("proxy_protocol")),
          "'proxy_protocol = true' needs 'trusted_networks' (the load balancers' addresses)");
  } else if (!listen.proxy_protocol && node != nullptr) {
    error(lineOf(*node), "'trusted_networks' needs 'proxy_protocol = true' on this listener");
  }
}

void ConfigReader::readBackends(const toml::table& root, Config& config) {
  const toml::array* backends = arrayOfTables(root, "backend");
  if (backends == nullptr || backends->empty()) {
    const toml::node* node = root.get("backend");
    if (node == nullptr || backends != nullptr) {
      error(node != nullptr ? lineOf(*node) : 1, "at least one [[backend]] is required");
    }
    return;
  }
  std::map<std::string, std::uint32_t> names;
  for (const toml::node& node : *backends) {
    const toml::table& t = *node.as_table();
    checkKeys(t,
              {"name", "address", "weight", "tls", "ca", "server_name", "verify", "pin_sha256",
               "client_cert", "client_key", "proxy_protocol", "forward_id", "probe_user",
               "probe_password_file"},
              "in [[backend]]");
    BackendConfig backend;
    if (t.get("name") == nullptr) {
      error(lineOf(t), "[[backend]] is missing 'name'");
    } else if (readString(t, "name", backend.name)) {
      std::uint32_t line = lineOf(*t.get("name"));
      if (!validBackendName(backend.name)) {
        error(line, "bad backend name " + quoted(backend.name) +
                        " (use letters, digits, '.', '_' and '-')");
      }
      auto [it, inserted] = names.emplace(backend.name, line);
      if (!inserted) {
        error(line, "duplicate backend name " + quoted(backend.name) + " (first at line " +
                        std::to_string(it->second) + ")");
      }
    }
    if (t.get("address") == nullptr) {
      error(lineOf(t), "[[backend]] is missing 'address'");
    } else {
      readAddress(t, "address", backend.address);
    }
    if (readNumber(t, "weight", backend.weight) && !(backend.weight > 0)) {
      error(lineOf(*t.get("weight")), "'weight' must be greater than 0");
    }
    readTls(t, "tls", backend.tls);
    readString(t, "ca", backend.ca);
    readString(t, "server_name", backend.server_name);
    readBool(t, "verify", backend.verify);
    if (readString(t, "pin_sha256", backend.pin_sha256)) {
      std::string& pin = backend.pin_sha256;
      pin.erase(std::remove(pin.begin(), pin.end(), ':'), pin.end());
      bool hex = pin.size() == 64 && std::all_of(pin.begin(), pin.end(), [](char c) {
                   return std::isxdigit(static_cast<unsigned char>(c)) != 0;
                 });
      if (!hex) {
        error(lineOf(*t.get("pin_sha256")),
              "'pin_sha256' must be 64 hex digits (SHA-256 of the SPKI)");
      }
      pin = asciiLowered(pin);
    }
    readString(t, "client_cert", backend.client_cert);
    readString(t, "client_key", backend.client_key);
    checkSecretFile(t, "client_key", backend.client_key);
    if (backend.client_cert.empty() != backend.client_key.empty()) {
      error(lineOf(t), "[[backend]] needs both 'client_cert' and 'client_key', or neither");
    }
    if (backend.tls != TlsMode::kNone && !backend.verify && backend.pin_sha256.empty()) {
      // Without either check any certificate is accepted, so whoever sits
      // on the path gets every password Portico replays.
      error(lineOf(*t.get("verify")),
            "verify = false without 'pin_sha256' accepts any certificate (a man in the middle "
            "would read every password); set pin_sha256, or verify = true");
    }
    readBool(t, "proxy_protocol", backend.proxy_protocol);
    readBool(t, "forward_id", backend.forward_id);
    readString(t, "probe_user", backend.probe_user);
    if (readString(t, "probe_password_file", backend.probe_password_file) &&
        !backend.probe_password_file.empty()) {
      checkReadableFile(t, "probe_password_file", backend.probe_password_file);
      checkSecretFile(t, "probe_password_file", backend.probe_password_file);
    }
    if (backend.probe_user.empty() != backend.probe_password_file.empty()) {
      error(lineOf(t), "[[backend]] needs both 'probe_user' and 'probe_password_file', or neither");
    }
    const toml::node* probe_user = t.get("probe_user");
    probe_user_lines_.push_back(probe_user != nullptr ? lineOf(*probe_user) : 0);
    config.backends.push_back(std::move(backend));
  }
}

void ConfigReader::readRouting(const toml::table* routing, Config& config) {
  if (routing != nullptr) {
    checkKeys(*routing, {"map_file", "connect_retries"}, "in [routing]");
    std::int64_t retries = 0;
    if (readInteger(*routing, "connect_retries", 0, 16, retries)) {
      config.routing.connect_retries = static_cast<std::uint32_t>(retries);
    }
    if (readString(*routing, "map_file", config.routing.map_file) &&
        !config.routing.map_file.empty()) {
      readMapFile(config.routing.map_file, lineOf(*routing->get("map_file")), config);
    }
  }
  pinProbeUsers(config);
}

void ConfigReader::readMapFile(const std::string& file, std::uint32_t config_line, Config& config) {
  map_file_ = file;
  map_file_config_line_ = config_line;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    int saved_errno = errno;
    error(config_line, "cannot read map_file " + quoted(file) + ": " + std::strerror(saved_errno));
    return;
  }
  std::vector<std::string_view> known;
  for (const BackendConfig& backend : config.backends) {
    known.push_back(backend.name);
  }
  auto mapError = [&](std::uint32_t line, const std::string& message) {
    errors_.push_back({config_line, line, file + ":" + std::to_string(line) + ": " + message});
  };
  std::string text;
  std::uint32_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    std::string content = trimmed(text);
    if (content.empty() || content[0] == '#') {
      continue;
    }
    std::istringstream fields(content);
    std::vector<std::string> words{std::istream_iterator<std::string>(fields),
                                   std::istream_iterator<std::string>()};
    if (words.size() != 2) {
      mapError(line, "malformed line (expected 'user backend')");
      continue;
    }
    std::string user = normaliseUser(words[0]);
    const std::string& backend = words[1];
    if (std::find(known.begin(), known.end(), backend) == known.end()) {
      mapError(line, "unknown backend " + quoted(backend) + suggestion(backend, known));
      continue;
    }
    auto [it, inserted] = config.routing.map.emplace(user, backend);
    if (!inserted && it->second != backend) {
      mapError(line, "user " + quoted(user) + " is mapped again, to " + quoted(backend) +
                         " (first to " + quoted(it->second) + " at line " +
                         std::to_string(map_file_lines_[user]) + ")");
      continue;
    }
    map_file_lines_.emplace(user, line);
  }
  if (in.bad()) {
    error(config_line, "error reading map_file " + quoted(file) + ": " + std::strerror(errno));
  }
}

void ConfigReader::pinProbeUsers(Config& config) {
  std::map<std::string, std::size_t> owners;  // probe user -> backend index
  for (std::size_t i = 0; i < config.backends.size(); ++i) {
    const BackendConfig& backend = config.backends[i];
    if (backend.probe_user.empty()) {
      continue;
    }
    std::string user = normaliseUser(backend.probe_user);
    if (user.empty()) {
      error(probe_user_lines_[i], "'probe_user' must not be blank");
      continue;
    }
    auto [owner, inserted] = owners.emplace(user, i);
    if (!inserted) {
      error(probe_user_lines_[i], "probe_user " + quoted(user) + " is also backend " +
                                      quoted(config.backends[owner->second].name) +
                                      "'s probe_user (each backend needs its own)");
      continue;
    }
    auto mapped = config.routing.map.find(user);
    if (mapped != config.routing.map.end() && mapped->second != backend.name) {
      std::uint32_t line = map_file_lines_[user];
      errors_.push_back({map_file_config_line_, line,
                         map_file_ + ":" + std::to_string(line) + ": user " + quoted(user) +
                             " is backend " + quoted(backend.name) + "'s probe_user (" + path_ +
                             ":" + std::to_string(probe_user_lines_[i]) +
                             ") and cannot be mapped to " + quoted(mapped->second)});
    }
    config.routing.map[user] = backend.name;
  }
}

void ConfigReader::readTimeouts(const toml::table& t, Timeouts& timeouts) {
  checkKeys(t,
            {"prelogin", "idle", "backend_connect", "backend_login", "shutdown", "tls_handshake"},
            "in [timeouts]");
  const Millis min{1};
  readDuration(t, "prelogin", min, timeouts.prelogin);
  readDuration(t, "idle", min, timeouts.idle);
  readDuration(t, "backend_connect", min, timeouts.backend_connect);
  readDuration(t, "backend_login", min, timeouts.backend_login);
  readDuration(t, "tls_handshake", min, timeouts.tls_handshake);
  readDuration(t, "shutdown", min, timeouts.shutdown);
}

void ConfigReader::readLimits(const toml::table& t, Limits& limits) {
  checkKeys(t,
            {"max_connections", "max_connections_per_ip", "max_bad_commands", "max_login_failures",
             "login_failure_delay", "prelogin_max_line", "prelogin_max_literal", "max_line",
             "write_high_watermark", "max_commands_in_flight"},
            "in [limits]");
  readCount(t, "max_connections", 1, limits.max_connections);
  readCount(t, "max_connections_per_ip", 1, limits.max_connections_per_ip);
  readCount(t, "max_bad_commands", 1, limits.max_bad_commands);
  readCount(t, "max_login_failures", 1, limits.max_login_failures);
  readDuration(t, "login_failure_delay", Millis{0}, limits.login_failure_delay);
  readCount(t, "prelogin_max_line", 1024, limits.prelogin_max_line);
  readCount(t, "prelogin_max_literal", 1024, limits.prelogin_max_literal);
  readCount(t, "max_line", 1024, limits.max_line);
  readCount(t, "write_high_watermark", 4096, limits.write_high_watermark);
  readCount(t, "max_commands_in_flight", 1, limits.max_commands_in_flight);
}

template <typename Names, typename Read>
void ConfigReader::readNamedTables(const toml::table& health, const std::string& kind,
                                   const Names& names, Read read) {
  const toml::table* tables = table(health, kind, "health." + kind + ".<Name>");
  if (tables == nullptr) {
    return;
  }
  for (auto&& [key, node] : *tables) {
    std::string name(key.str());
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      error(key.source().begin.line, "unknown " + kind + " " + quoted(name) + " in [health." +
                                         kind + "]" + suggestion(name, names));
      continue;
    }
    std::string where = "[health." + kind + "." + name + "]";
    if (const toml::table* settings = node.as_table()) {
      read(name, *settings, "in " + where);
    } else {
      error(lineOf(node), "expected a table for " + where);
    }
  }
}

void ConfigReader::readHealth(const toml::table& t, Config& config) {
  checkKeys(
      t,
      {"hook", "hook_timeout", "move_sessions", "responders", "action_history", "probe", "monitor"},
      "in [health]");
  readString(t, "hook", config.health.hook);
  readBool(t, "move_sessions", config.health.move_sessions);
  if (std::string mode; readString(t, "responders", mode)) {
    if (mode == "act" || mode == "dry-run") {
      config.health.responders_dry_run = mode == "dry-run";
    } else {
      error(lineOf(*t.get("responders")), "'responders' must be \"act\" or \"dry-run\"");
    }
  }
  if (std::int64_t history = 0; readInteger(t, "action_history", 1, 100'000, history)) {
    config.health.action_history = static_cast<std::uint32_t>(history);
  }
  if (Millis value{0}; readDuration(t, "hook_timeout", Millis{1}, value)) {
    config.health.hook_timeout = value;
  }
  // Absent keys stay unset: the health library owns the defaults.
  auto duration = [this](const toml::table& s, std::string_view key, std::optional<Millis>& out) {
    if (Millis value{0}; readDuration(s, key, Millis{1}, value)) {
      out = value;
    }
  };
  auto count = [this](const toml::table& s, std::string_view key, std::uint32_t min,
                      std::optional<std::uint32_t>& out) {
    if (std::uint32_t value = 0; readCount(s, key, min, value)) {
      out = value;
    }
  };
  readNamedTables(t, "probe", kProbeNames,
                  [&](const std::string& name, const toml::table& s, const std::string& where) {
                    checkKeys(s, {"interval", "timeout", "retries"}, where);
                    ProbeSettings& probe = config.probes[name];
                    duration(s, "interval", probe.interval);
                    duration(s, "timeout", probe.timeout);
                    std::int64_t retries = 0;
                    if (readInteger(s, "retries", 0, 100, retries)) {
                      probe.retries = static_cast<std::uint32_t>(retries);
                    }
                  });
  readNamedTables(t, "monitor", kMonitorNames,
                  [&](const std::string& name, const toml::table& s, const std::string& where) {
                    checkKeys(
                        s, {"unhealthy_after", "healthy_after", "samples", "threshold", "interval"},
                        where);
                    MonitorSettings& monitor = config.monitors[name];
                    duration(s, "interval", monitor.interval);
                    count(s, "unhealthy_after", 1, monitor.unhealthy_after);
                    count(s, "healthy_after", 1, monitor.healthy_after);
                    count(s, "samples", 1, monitor.samples);
                    if (double threshold = 0; readNumber(s, "threshold", threshold)) {
                      if (threshold < 0) {
                        error(lineOf(*s.get("threshold")), "'threshold' must not be negative");
                      } else {
                        monitor.threshold = threshold;
                      }
                    }
                  });
}

}  // namespace

const char* tlsModeName(TlsMode mode) {
  auto index = static_cast<std::size_t>(mode);
  return index < kTlsModeNames.size() ? kTlsModeNames[index] : "unknown";
}

std::string HostPort::text() const {
  std::string port_text = std::to_string(port);
  return ipv6 ? "[" + host + "]:" + port_text : host + ":" + port_text;
}

std::optional<Millis> parseDuration(const std::string& text) {
  constexpr std::int64_t kMax = std::numeric_limits<Millis::rep>::max();
  std::size_t i = 0;
  std::int64_t value = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    int digit = text[i] - '0';
    if (value > (kMax - digit) / 10) {
      return std::nullopt;
    }
    value = value * 10 + digit;
  }
  if (i == 0) {
    return std::nullopt;
  }
  std::string_view unit = std::string_view(text).substr(i);
  std::int64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1'000;
  } else if (unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else {
    return std::nullopt;
  }
  if (value > kMax / scale) {
    return std::nullopt;
  }
  return Millis{value * scale};
}

std::optional<HostPort> parseHostPort(const std::string& text) {
  HostPort out;
  std::string port_text;
  if (!text.empty() && text[0] == '[') {
    std::size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::nullopt;
    }
    out.host = text.substr(1, close - 1);
    out.ipv6 = true;
    port_text = text.substr(close + 2);
    in6_addr address{};
    if (::inet_pton(AF_INET6, out.host.c_str(), &address) != 1) {
      return std::nullopt;
    }
    // One spelling per address ("::0001" -> "::1"): listeners are matched
    // across reloads, and duplicates found, by the address text.
    char canonical[INET6_ADDRSTRLEN];
    if (::inet_ntop(AF_INET6, &address, canonical, sizeof(canonical)) != nullptr) {
      out.host = canonical;
    }
  } else {
    std::size_t colon = text.find(':');
    if (colon == std::string::npos) {
      return std::nullopt;
    }
    out.host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    in_addr address{};
    if (::inet_pton(AF_INET, out.host.c_str(), &address) != 1) {
      return std::nullopt;
    }
  }
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  unsigned long port = std::stoul(port_text);
  if (port == 0 || port > 65535) {
    return std::nullopt;
  }
  out.port = static_cast<std::uint16_t>(port);
  return out;
}

ConfigResult parseConfig(const std::string& text, const std::string& path_for_errors) {
  ConfigResult result;
  try {
    ConfigReader reader(path_for_errors);
    try {
      toml::table root = toml::parse(std::string_view(text), std::string_view(path_for_errors));
      Config config = reader.read(root);
      result.errors = reader.takeErrors();
      if (result.errors.empty()) {
        result.config = std::move(config);
      }
    } catch (const toml::parse_error& e) {
      reader.error(e.source().begin.line, std::string(e.description()));
      result.errors = reader.takeErrors();
    }
  } catch (const std::exception& e) {
    result.config.reset();
    result.errors.push_back(path_for_errors + ":1: cannot load configuration: " + e.what());
  }
  return result;
}

ConfigResult loadConfig(const std::string& path) {
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      ConfigResult result;
      result.errors.push_back(path + ":1: cannot read configuration file: " + std::strerror(errno));
      return result;
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
      ConfigResult result;
      result.errors.push_back(path +
                              ":1: error reading configuration file: " + std::strerror(errno));
      return result;
    }
    return parseConfig(text.str(), path);
  } catch (const std::exception& e) {
    ConfigResult result;
    result.errors.push_back(path + ":1: cannot load configuration: " + e.what());
    return result;
  }
}

}  // namespace portico::proxy
