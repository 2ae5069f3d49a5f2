// The configuration reader: a parsed TOML document into a Config, section
// by section, through the schema (config_schema.h). The schema's fields
// carry each key's type, range and check; what is read here by hand is
// what spans keys or tables: required tables, duplicate names, keys that
// need each other, the routing map file and the probe users' pins.
#include "config/config.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string_view>
#include <utility>

#include <toml++/toml.h>

#include "config/config_keys.h"
#include "config/config_schema.h"
#include "lookup/lookup_toml.h"
#include "portico/ascii.h"
#include "routing.h"

// parseConfig() turns toml++'s parse_error into an error line; a build of
// toml++ without exceptions would need parse_result handling instead.
static_assert(TOML_EXCEPTIONS, "Portico expects toml++ with exceptions enabled");

namespace portico::proxy {

namespace {

std::string trimmed(std::string_view text) {
  const char* space = " \t\r\n\v\f";
  std::size_t begin = text.find_first_not_of(space);
  if (begin == std::string_view::npos) {
    return "";
  }
  std::size_t end = text.find_last_not_of(space);
  return std::string(text.substr(begin, end - begin + 1));
}

// Reads a parsed TOML document into a Config, collecting every error. Errors
// are sorted by where they occur: config lines first by line, and map-file
// errors at the line of `map_file`, in map-file order.
class ConfigReader : public KeyReader {
 public:
  explicit ConfigReader(std::string path)
      : KeyReader([this](std::uint32_t line, const std::string& message) {
          errors_.push_back({line, 0, path_ + ":" + std::to_string(line) + ": " + message});
        }),
        path_(std::move(path)) {}

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

  // checkKeys() and readFields() of `section` for one of its tables.
  template <typename S>
  void readSection(const toml::table& t, const Section<S>& section, S& out,
                   std::string_view name = {}) {
    checkKeys(t, section, whereIn(section.name, section.kind, name));
    readFields(t, section, out);
  }
  // readSection() of the sub-table [section.name] of `root`, if present.
  template <typename S>
  void readTable(const toml::table& root, const Section<S>& section, S& out) {
    if (const toml::table* t = table(root, section.name, std::string(section.name))) {
      readSection(*t, section, out);
    }
  }
  const toml::table* table(const toml::table& parent, std::string_view key,
                           const std::string& name);
  const toml::array* arrayOfTables(const toml::table& parent, std::string_view key);
  // arrayOfTables() that must hold at least one table: nullptr (reported)
  // when it is missing, empty or not an array of tables.
  const toml::array* requiredArrayOfTables(const toml::table& parent, std::string_view key);

  void readListeners(const toml::table& root, Config& config);
  void readCertificates(const toml::table& t, ListenConfig& listen);
  void readTrustedNetworks(const toml::table& t, ListenConfig& listen);
  void readBackends(const toml::table& root, Config& config);
  void readPin(const toml::table& t, BackendConfig& backend);
  void readRouting(const toml::table* routing, Config& config);
  void readMapFile(const std::string& file, std::uint32_t config_line, Config& config);
  void pinProbeUsers(Config& config);
  void readProcess(const toml::table& t, ProcessConfig& process);
  void readHealth(const toml::table& t, Config& config);
  // Calls read(name, table) for each table under [health.<kind>] whose
  // name is one of `names`.
  template <typename Read>
  void readNamedTables(const toml::table& health, const std::string& kind,
                       std::span<const std::string_view> names, Read read);

  std::string path_;
  std::vector<Error> errors_;
  // Where each backend's probe_user was given (0: not given), and where the
  // map file names each user, for conflict messages.
  std::vector<std::uint32_t> probe_user_lines_;
  std::map<std::string, std::uint32_t> map_file_lines_;
  std::string map_file_;
  std::uint32_t map_file_config_line_ = 0;
};

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

const toml::array* ConfigReader::requiredArrayOfTables(const toml::table& parent,
                                                       std::string_view key) {
  const toml::array* array = arrayOfTables(parent, key);
  if (array != nullptr && !array->empty()) {
    return array;
  }
  const toml::node* node = parent.get(key);
  if (node == nullptr || array != nullptr) {  // else arrayOfTables() said what is wrong
    error(node != nullptr ? lineOf(*node) : 1,
          "at least one [[" + std::string(key) + "]] is required");
  }
  return nullptr;
}

Config ConfigReader::read(const toml::table& root) {
  Config config;
  config.path = path_;
  readSection(root, kTopLevelSection, config);
  readListeners(root, config);
  readBackends(root, config);
  const toml::table* routing = table(root, "routing", "routing");
  readRouting(routing, config);
  readTable(root, kTimeoutsSection, config.timeouts);
  readTable(root, kLimitsSection, config.limits);
  readTable(root, kStatusSection, config.status);
  readTable(root, kAdminSection, config.admin);
  if (const toml::table* t = table(root, "process", "process")) {
    readProcess(*t, config.process);
  }
  readTable(root, kProtocolLogSection, config.protocol_log);
  if (const toml::table* t = table(root, "health", "health")) {
    readHealth(*t, config);
  }
  if (const toml::table* t = table(root, "lookup", "lookup")) {
    readLookupConfig(*t, config.lookup, [this](std::uint32_t line, const std::string& message) {
      error(line, message);
    });
  }
  readTable(root, kFleetSection, config.fleet);
  readTable(root, kBackendPoolSection, config.backend_pool);
  return config;
}

void ConfigReader::readListeners(const toml::table& root, Config& config) {
  const toml::array* listeners = requiredArrayOfTables(root, "listen");
  if (listeners == nullptr) {
    return;
  }
  std::map<std::string, std::uint32_t> seen;
  for (const toml::node& node : *listeners) {
    const toml::table& t = *node.as_table();
    ListenConfig listen;
    readSection(t, kListenSection, listen);
    if (listen.address.port != 0) {  // read: parseHostPort() refuses port 0
      std::uint32_t line = lineOf(*t.get("address"));
      auto [it, inserted] = seen.emplace(listen.address.text(), line);
      if (!inserted) {
        error(line, "duplicate listen address " + quoted(listen.address.text()) +
                        " (first at line " + std::to_string(it->second) + ")");
      }
    }
    readCertificates(t, listen);
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
    readTrustedNetworks(t, listen);
    config.listen.push_back(std::move(listen));
  }
}

void ConfigReader::readCertificates(const toml::table& t, ListenConfig& listen) {
  const toml::node* certs = t.get("certificate");
  if (certs == nullptr) {
    return;
  }
  const toml::array* list = certs->as_array();
  if (list == nullptr || !list->is_array_of_tables()) {
    error(lineOf(*certs), "'certificate' must be an array of tables: [[listen.certificate]]");
    return;
  }
  for (const toml::node& c : *list) {
    const toml::table& ct = *c.as_table();
    CertificateConfig cert;
    readSection(ct, kCertificateSection, cert);
    if (cert.server_name.empty() || cert.cert.empty() || cert.key.empty()) {
      error(lineOf(ct), "[[listen.certificate]] needs 'server_name', 'cert' and 'key'");
    }
    listen.certificates.push_back(std::move(cert));
  }
}

// proxy_protocol and trusted_networks: each needs the other, so that a
// listener never believes a header from just anyone.
void ConfigReader::readTrustedNetworks(const toml::table& t, ListenConfig& listen) {
  const toml::node* node = t.get("trusted_networks");
  if (node != nullptr) {
    const toml::array* list = node->as_array();
    if (list == nullptr) {
      error(lineOf(*node), "expected an array of strings for 'trusted_networks'");
      return;
    }
    for (const toml::node& item : *list) {
      const auto* text = item.as_string();
      if (text == nullptr) {
        error(lineOf(item), "expected a string in 'trusted_networks'");
      } else if (Result<Network> network = parseNetwork(text->get()); !network.ok()) {
        error(lineOf(item), network.message());
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
  const toml::array* backends = requiredArrayOfTables(root, "backend");
  if (backends == nullptr) {
    return;
  }
  std::map<std::string, std::uint32_t> names;
  for (const toml::node& node : *backends) {
    const toml::table& t = *node.as_table();
    BackendConfig backend;
    readSection(t, kBackendSection, backend);
    if (const toml::node* name = t.get("name"); name != nullptr && name->is_string()) {
      auto [it, inserted] = names.emplace(backend.name, lineOf(*name));
      if (!inserted) {
        error(lineOf(*name), "duplicate backend name " + quoted(backend.name) + " (first at line " +
                                 std::to_string(it->second) + ")");
      }
    }
    readPin(t, backend);
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
    if (backend.probe_user.empty() != backend.probe_password_file.empty()) {
      error(lineOf(t), "[[backend]] needs both 'probe_user' and 'probe_password_file', or neither");
    }
    const toml::node* probe_user = t.get("probe_user");
    probe_user_lines_.push_back(probe_user != nullptr ? lineOf(*probe_user) : 0);
    config.backends.push_back(std::move(backend));
  }
}

// pin_sha256 is kept as lower-case hex without colons, the way the TLS
// code compares it.
void ConfigReader::readPin(const toml::table& t, BackendConfig& backend) {
  if (!readString(t, "pin_sha256", backend.pin_sha256)) {
    return;
  }
  std::string& pin = backend.pin_sha256;
  pin.erase(std::remove(pin.begin(), pin.end(), ':'), pin.end());
  bool hex = pin.size() == 64 && std::all_of(pin.begin(), pin.end(), [](char c) {
               return std::isxdigit(static_cast<unsigned char>(c)) != 0;
             });
  if (!hex) {
    error(lineOf(*t.get("pin_sha256")), "'pin_sha256' must be 64 hex digits (SHA-256 of the SPKI)");
  }
  pin = asciiLowered(pin);
}

void ConfigReader::readRouting(const toml::table* routing, Config& config) {
  if (routing != nullptr) {
    readSection(*routing, kRoutingSection, config.routing);
    if (!config.routing.map_file.empty()) {
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

void ConfigReader::readProcess(const toml::table& t, ProcessConfig& process) {
  readSection(t, kProcessSection, process);
  if (process.user.empty() && !process.group.empty()) {
    error(lineOf(*t.get("group")), "'group' needs 'user' in [process]");
  }
}

template <typename Read>
void ConfigReader::readNamedTables(const toml::table& health, const std::string& kind,
                                   std::span<const std::string_view> names, Read read) {
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
    if (const toml::table* settings = node.as_table()) {
      read(name, *settings);
    } else {
      error(lineOf(node), "expected a table for [health." + kind + "." + name + "]");
    }
  }
}

void ConfigReader::readHealth(const toml::table& t, Config& config) {
  readSection(t, kHealthSection, config.health);
  if (std::string mode; readString(t, "responders", mode)) {
    if (mode == "act" || mode == "dry-run") {
      config.health.responders_dry_run = mode == "dry-run";
    } else {
      error(lineOf(*t.get("responders")), "'responders' must be \"act\" or \"dry-run\"");
    }
  }
  // Absent keys stay unset: the health library owns the defaults.
  readNamedTables(t, "probe", kProbeNames, [&](const std::string& name, const toml::table& s) {
    readSection(s, kProbeSection, config.probes[name], name);
  });
  readNamedTables(t, "monitor", kMonitorNames, [&](const std::string& name, const toml::table& s) {
    readSection(s, kMonitorSection, config.monitors[name], name);
  });
}

}  // namespace

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
