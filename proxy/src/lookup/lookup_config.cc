// [lookup] parsing: the auth_http URL, header and key template checks. The
// table's keys, and the plain numbers among them, come from the schema
// (config_schema.cc) through the shared KeyReader.
#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <limits>
#include <string_view>
#include <tuple>

#include "config/config.h"
#include "config/config_keys.h"
#include "lookup/lookup_config.h"
#include "lookup/lookup_toml.h"

namespace portico::proxy {

namespace {

constexpr std::array<const char*, 3> kKindNames = {"none", "http", "redis"};
static_assert(kKindNames.size() == static_cast<std::size_t>(LookupKind::kRedis) + 1,
              "one name per LookupKind");
constexpr std::array<const char*, 2> kFallbackNames = {"hash", "refuse"};
static_assert(kFallbackNames.size() == static_cast<std::size_t>(LookupFallback::kRefuse) + 1,
              "one name per LookupFallback");

constexpr std::array<std::string_view, 2> kHttpKeys = {"url", "headers"};
constexpr std::array<std::string_view, 4> kRedisKeys = {"address", "key", "shards", "shard_key"};

// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
constexpr std::size_t kMaxUnixSocketPath = 107;
constexpr std::size_t kMaxHeaders = 32;
constexpr std::size_t kMaxHeaderValue = 1024;
constexpr std::size_t kMaxKeyTemplate = 256;

bool isTokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

// One line of printable text (tab allowed): nothing that could end a header
// or smuggle another one in.
bool isHeaderValue(std::string_view value) {
  return std::all_of(value.begin(), value.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c == '\t' || (c >= 0x20 && c != 0x7f);
  });
}

std::size_t occurrences(std::string_view text, std::string_view needle) {
  std::size_t count = 0;
  for (std::size_t at = text.find(needle); at != std::string_view::npos;
       at = text.find(needle, at + needle.size())) {
    ++count;
  }
  return count;
}

class LookupReader {
 public:
  LookupReader(const toml::table& table, LookupConfig& out, const LookupConfigErrorSink& error)
      : table_(table), out_(out), error_(error), keys_(error) {}

  void read();

 private:
  void error(const toml::node& node, const std::string& message) { error_(lineOf(node), message); }
  const toml::node* stringNode(std::string_view key, std::string& out);
  void readKind();
  void readDuration(std::string_view key, std::chrono::milliseconds min,
                    std::chrono::milliseconds& out);
  void readUrl();
  void readHeaders();
  void readAddress();
  void readTemplate(std::string_view key, std::string_view placeholder, std::string& out);
  void readFallback();
  void checkKindKeys();

  const toml::table& table_;
  LookupConfig& out_;
  const LookupConfigErrorSink& error_;
  KeyReader keys_;  // the shared readers, for the keys with a member in the schema
};

void LookupReader::read() {
  keys_.checkKeys(table_, kLookupSection, whereIn(kLookupSection.name, kLookupSection.kind));
  keys_.readFields(table_, kLookupSection, out_);
  readKind();
  readDuration("timeout", std::chrono::milliseconds{1}, out_.timeout);
  readDuration("cache_ttl", std::chrono::milliseconds{0}, out_.cache_ttl);
  readFallback();
  readUrl();
  readHeaders();
  readAddress();
  readTemplate("key", "{user}", out_.key);
  readTemplate("shard_key", "{shard}", out_.shard_key);
  checkKindKeys();
}

const toml::node* LookupReader::stringNode(std::string_view key, std::string& out) {
  return keys_.readString(table_, key, out) ? table_.get(key) : nullptr;
}

void LookupReader::readKind() {
  std::string text;
  const toml::node* node = stringNode("kind", text);
  if (node == nullptr) {
    return;
  }
  for (std::size_t i = 0; i < kKindNames.size(); ++i) {
    if (text == kKindNames[i]) {
      out_.kind = static_cast<LookupKind>(i);
      return;
    }
  }
  error(*node, "bad lookup kind " + quoted(text) + " (expected none, http or redis)");
}

void LookupReader::readDuration(std::string_view key, std::chrono::milliseconds min,
                                std::chrono::milliseconds& out) {
  const toml::node* node = table_.get(key);
  if (node == nullptr) {
    return;
  }
  if (node->is_number()) {
    error(*node, quoted(key) +
                     " must be a duration string such as \"60s\" or \"500ms\", not a bare number");
    return;
  }
  std::string text;
  if (stringNode(key, text) == nullptr) {
    return;
  }
  std::optional<Millis> parsed = parseDuration(text);
  if (!parsed) {
    error(*node, "bad duration " + quoted(text) + " for " + quoted(key) +
                     " (expected a whole number and a unit: \"500ms\", \"60s\", \"2m\", \"4h\")");
    return;
  }
  if (*parsed < min) {
    error(*node, quoted(key) + " must not be zero");
    return;
  }
  out = *parsed;
}

void LookupReader::readUrl() {
  const toml::node* node = stringNode("url", out_.url);
  if (node == nullptr) {
    return;
  }
  if (Status parsed = parseAuthHttpUrl(out_.url, out_.http); !parsed.ok()) {
    error(*node, "bad url " + quoted(out_.url) + ": " + parsed.message());
  }
}

void LookupReader::readHeaders() {
  const toml::node* node = table_.get("headers");
  if (node == nullptr) {
    return;
  }
  const toml::table* headers = node->as_table();
  if (headers == nullptr) {
    error(*node,
          "'headers' must be a table of strings, e.g. headers = { \"X-Auth-Key\" = \"...\" }");
    return;
  }
  // toml++ keeps a table's keys sorted; nginx sends auth_http_header lines
  // in the order they are written, so restore the file order.
  struct Entry {
    std::uint32_t line;
    std::uint32_t column;
    std::string name;
    const toml::node* value;
  };
  std::vector<Entry> entries;
  for (auto&& [key, value] : *headers) {
    entries.push_back(
        {key.source().begin.line, key.source().begin.column, std::string(key.str()), &value});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  });
  if (entries.size() > kMaxHeaders) {
    error(*node, "'headers' has " + std::to_string(entries.size()) + " entries (at most " +
                     std::to_string(kMaxHeaders) + ")");
    return;
  }
  for (const Entry& entry : entries) {
    if (entry.name.empty() ||
        !std::all_of(entry.name.begin(), entry.name.end(), [](char c) { return isTokenChar(c); })) {
      error_(entry.line,
             "bad header name " + quoted(entry.name) + " in 'headers' (letters, digits and '-')");
      continue;
    }
    const auto* text = entry.value->as_string();
    if (text == nullptr) {
      error(*entry.value, "header " + quoted(entry.name) + " in 'headers' must be a string");
      continue;
    }
    const std::string& value = text->get();
    if (!isHeaderValue(value) || value.size() > kMaxHeaderValue) {
      error(*entry.value, "header " + quoted(entry.name) +
                              " in 'headers' must be one line of at most " +
                              std::to_string(kMaxHeaderValue) + " printable characters");
      continue;
    }
    out_.headers.emplace_back(entry.name, value);
  }
}

void LookupReader::readAddress() {
  std::string text;
  const toml::node* node = stringNode("address", text);
  if (node == nullptr) {
    return;
  }
  std::optional<HostPort> parsed = parseHostPort(text);
  if (!parsed) {
    error(*node, "bad address " + quoted(text) + " (expected IP:PORT)");
    return;
  }
  out_.redis_host = parsed->host;
  out_.redis_port = parsed->port;
  out_.redis_ipv6 = parsed->ipv6;
}

void LookupReader::readTemplate(std::string_view key, std::string_view placeholder,
                                std::string& out) {
  std::string text;
  const toml::node* node = stringNode(key, text);
  if (node == nullptr) {
    return;
  }
  if (occurrences(text, placeholder) != 1) {
    error(*node, quoted(key) + " must contain " + std::string(placeholder) + " exactly once");
    return;
  }
  bool printable = std::all_of(text.begin(), text.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c > 0x20 && c != 0x7f;
  });
  if (!printable || text.size() > kMaxKeyTemplate) {
    error(*node, quoted(key) + " must be at most " + std::to_string(kMaxKeyTemplate) +
                     " printable characters without spaces");
    return;
  }
  out = text;
}

void LookupReader::readFallback() {
  std::string text;
  const toml::node* node = stringNode("fallback", text);
  if (node == nullptr) {
    return;
  }
  for (std::size_t i = 0; i < kFallbackNames.size(); ++i) {
    if (text == kFallbackNames[i]) {
      out_.fallback = static_cast<LookupFallback>(i);
      return;
    }
  }
  error(*node, "'fallback' must be \"hash\" or \"refuse\", not " + quoted(text));
}

// Keys of the other kind are errors, so that an operator who switches kind
// and leaves a stale key behind hears of it. kind = "none" ignores them all
// (the table can stay in place while the directory is switched off).
void LookupReader::checkKindKeys() {
  auto misplaced = [&](const auto& keys, const char* kind) {
    for (std::string_view key : keys) {
      if (const toml::node* node = table_.get(key)) {
        error(*node, quoted(key) + " is only used with kind = \"" + kind + "\"");
      }
    }
  };
  if (out_.kind == LookupKind::kHttp) {
    misplaced(kRedisKeys, "redis");
    if (table_.get("url") == nullptr) {
      const toml::node* kind = table_.get("kind");
      error_(kind != nullptr ? lineOf(*kind) : lineOf(table_), "kind = \"http\" needs 'url'");
    }
  } else if (out_.kind == LookupKind::kRedis) {
    misplaced(kHttpKeys, "http");
  }
}

}  // namespace

const char* lookupKindName(LookupKind kind) {
  auto index = static_cast<std::size_t>(kind);
  return index < kKindNames.size() ? kKindNames[index] : "unknown";
}

const char* lookupFallbackName(LookupFallback fallback) {
  auto index = static_cast<std::size_t>(fallback);
  return index < kFallbackNames.size() ? kFallbackNames[index] : "unknown";
}

std::string AuthHttpTarget::text() const {
  if (!unix_path.empty()) {
    return "unix:" + unix_path;
  }
  std::string port_text = std::to_string(port);
  return ipv6 ? "[" + host + "]:" + port_text : host + ":" + port_text;
}

std::string LookupConfig::serviceText() const {
  switch (kind) {
    case LookupKind::kHttp:
      return "http " + http.text();
    case LookupKind::kRedis:
      return "redis " + (redis_ipv6 ? "[" + redis_host + "]" : redis_host) + ":" +
             std::to_string(redis_port);
    case LookupKind::kNone:
      break;
  }
  return {};
}

namespace {

// An auth_http URI: absolute, no spaces or control characters.
bool validUri(std::string_view uri) {
  return !uri.empty() && uri.front() == '/' && std::all_of(uri.begin(), uri.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c > 0x20 && c != 0x7f;
  });
}

// nginx: "unix:/path" with an optional ":/uri" after the path (`rest`
// follows "unix:").
Status parseUnixAuthHttpUrl(std::string_view rest, AuthHttpTarget& out) {
  AuthHttpTarget target;
  std::size_t colon = rest.find(':');
  std::string_view path = rest.substr(0, colon);
  if (colon != std::string_view::npos) {
    target.uri = std::string(rest.substr(colon + 1));
  }
  if (path.empty() || path.front() != '/' || path.size() > kMaxUnixSocketPath) {
    return Status::error("the socket path must be absolute and at most " +
                         std::to_string(kMaxUnixSocketPath) + " bytes (unix:/path:/uri)");
  }
  if (!validUri(target.uri)) {
    return Status::error("the URI must start with '/' and hold no spaces or control characters");
  }
  target.unix_path = std::string(path);
  target.host_header = "localhost";
  out = std::move(target);
  return Status();
}

}  // namespace

Status parseAuthHttpUrl(const std::string& url, AuthHttpTarget& out) {
  AuthHttpTarget target;
  std::string_view rest = url;
  if (rest.substr(0, 5) == "unix:") {
    return parseUnixAuthHttpUrl(rest.substr(5), out);
  }
  if (rest.substr(0, 7) == "http://") {
    rest.remove_prefix(7);
  } else if (rest.find("://") != std::string_view::npos) {
    return Status::error("only http:// and unix: URLs are supported (as by nginx's auth_http)");
  }
  std::size_t uri_at = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, uri_at);
  if (uri_at != std::string_view::npos) {
    target.uri = std::string(rest.substr(uri_at));
    if (target.uri.front() == '?') {
      target.uri = "/" + target.uri;
    }
  }
  if (!validUri(target.uri)) {
    return Status::error("the URI must hold no spaces or control characters");
  }
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    std::size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return Status::error("unterminated '[' in the host");
    }
    host = authority.substr(0, close + 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return Status::error("expected ':PORT' after ']'");
      }
      port = after.substr(1);
      if (port.empty()) {
        return Status::error("empty port");
      }
    }
    target.host = std::string(host.substr(1, host.size() - 2));
    target.ipv6 = true;
    in6_addr address{};
    if (::inet_pton(AF_INET6, target.host.c_str(), &address) != 1) {
      return Status::error("the host must be an IP literal (Portico resolves no names)");
    }
  } else {
    std::size_t colon = authority.find(':');
    if (colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
      if (port.empty()) {
        return Status::error("empty port");
      }
    }
    target.host = std::string(host);
    in_addr address{};
    if (::inet_pton(AF_INET, target.host.c_str(), &address) != 1) {
      return Status::error("the host must be an IP literal (Portico resolves no names)");
    }
  }
  target.port = 80;
  if (!port.empty()) {
    unsigned long value = 0;
    bool digits = port.size() <= 5 && std::all_of(port.begin(), port.end(),
                                                  [](char c) { return c >= '0' && c <= '9'; });
    if (digits) {
      value = std::stoul(std::string(port));
    }
    if (!digits || value == 0 || value > 65535) {
      return Status::error("bad port " + quoted(port) + " (1 to 65535)");
    }
    target.port = static_cast<std::uint16_t>(value);
  }
  target.host_header = std::string(host);
  out = std::move(target);
  return Status();
}

void readLookupConfig(const toml::table& table, LookupConfig& out,
                      const LookupConfigErrorSink& error) {
  LookupReader(table, out, error).read();
}

}  // namespace portico::proxy
