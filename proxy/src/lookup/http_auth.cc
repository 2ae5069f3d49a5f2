#include "lookup/http_auth.h"
#include "portico/ascii.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cstring>
#include <optional>

namespace portico::proxy {

namespace {

constexpr char kHex[] = "0123456789ABCDEF";

// NGX_ESCAPE_MAIL_AUTH ("the same as memcached" in ngx_string.c): the bitmap
// 0xffffffff for 0x00-0x1F and 0x00000021 (space, '%') for 0x20-0x3F; no
// other byte is escaped.
bool escaped(unsigned char c) {
  return c < 0x20 || c == ' ' || c == '%';
}

std::size_t escapedSize(std::string_view text) {
  std::size_t size = text.size();
  for (char c : text) {
    if (escaped(static_cast<unsigned char>(c))) {
      size += 2;
    }
  }
  return size;
}

void appendEscaped(std::string& out, std::string_view text) {
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (escaped(c)) {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += ch;
    }
  }
}

// Values Portico did not get from the client's credentials (host name, TLS
// names) go out only when they cannot break the header block.
bool printableToken(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c > 0x20 && c < 0x7f;
  });
}

// ngx_atoi: decimal digits only, no sign or space, nullopt on overflow.
std::optional<std::uint64_t> parseDigits(std::string_view text, std::uint64_t max) {
  if (text.empty()) {
    return std::nullopt;
  }
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
    if (value > max) {
      return std::nullopt;
    }
  }
  return value;
}

// Dovecot's proxy_timeout: seconds, or a number with "s" or "ms".
std::optional<std::chrono::milliseconds> parseProxyTimeout(std::string_view text) {
  std::uint64_t scale = 1'000;
  if (text.size() > 2 && text.substr(text.size() - 2) == "ms") {
    scale = 1;
    text.remove_suffix(2);
  } else if (text.size() > 1 && text.back() == 's') {
    text.remove_suffix(1);
  }
  std::optional<std::uint64_t> value = parseDigits(text, 24ull * 3600 * 1000);
  if (!value || *value == 0) {
    return std::nullopt;
  }
  return std::chrono::milliseconds{static_cast<std::int64_t>(*value * scale)};
}

// Text the client will see after "NO [AUTHENTICATIONFAILED] ": one line of
// printable characters, bounded.
std::string clientText(std::string_view text) {
  constexpr std::size_t kMax = 256;
  std::string out;
  for (char ch : text.substr(0, kMax)) {
    auto c = static_cast<unsigned char>(ch);
    out += (c < 0x20 || c == 0x7f) ? ' ' : ch;
  }
  return out;
}

std::string quotedForLog(std::string_view text) {
  constexpr std::size_t kMax = 64;
  std::string out = "\"";
  for (char ch : text.substr(0, kMax)) {
    auto c = static_cast<unsigned char>(ch);
    out += (c < 0x20 || c >= 0x7f) ? '?' : ch;
  }
  out += text.size() > kMax ? "...\"" : "\"";
  return out;
}

}  // namespace

std::string escapeAuthHttpValue(std::string_view text) {
  std::string out;
  out.reserve(escapedSize(text));
  appendEscaped(out, text);
  return out;
}

std::string buildAuthHttpRequest(const AuthHttpTarget& target, const AuthHttpHeaders& extra,
                                 const LookupRequest& request) {
  const std::string attempt = std::to_string(request.attempt);
  const char* method = lookupAuthMethodName(request.method);
  const bool host_known = printableToken(request.client_host);
  const bool protocol_known = request.tls && printableToken(request.tls_protocol);
  const bool cipher_known = request.tls && printableToken(request.tls_cipher);

  // Sized first so that the buffer holding the password never reallocates
  // (a reallocation would leave a copy behind in freed memory).
  std::size_t size = 4 + target.uri.size() + 11 + 6 + target.host_header.size() + 2 + 13 +
                     std::strlen(method) + 2 + 11 + escapedSize(request.user) + 2 + 11 +
                     escapedSize(request.password) + 2 + 15 + 4 + 2 + 20 + attempt.size() + 2 + 11 +
                     request.client_ip.size() + 2 + 2;
  if (host_known) {
    size += 13 + request.client_host.size() + 2;
  }
  if (request.tls) {
    size += 14 + 19 + request.tls_protocol.size() + 2 + 17 + request.tls_cipher.size() + 2;
  }
  for (const auto& [name, value] : extra) {
    size += name.size() + 2 + value.size() + 2;
  }

  std::string out;
  out.reserve(size);
  out += "GET ";
  out += target.uri;
  out += " HTTP/1.0\r\n";
  out += "Host: ";
  out += target.host_header;
  out += "\r\nAuth-Method: ";
  out += method;
  out += "\r\nAuth-User: ";
  appendEscaped(out, request.user);
  out += "\r\nAuth-Pass: ";
  appendEscaped(out, request.password);
  out += "\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: ";
  out += attempt;
  out += "\r\nClient-IP: ";
  out += request.client_ip;
  out += "\r\n";
  if (host_known) {
    out += "Client-Host: ";
    out += request.client_host;
    out += "\r\n";
  }
  if (request.tls) {
    out += "Auth-SSL: on\r\n";
    if (protocol_known) {
      out += "Auth-SSL-Protocol: ";
      out += request.tls_protocol;
      out += "\r\n";
    }
    if (cipher_known) {
      out += "Auth-SSL-Cipher: ";
      out += request.tls_cipher;
      out += "\r\n";
    }
  }
  for (const auto& [name, value] : extra) {
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  out += "\r\n";
  assert(out.size() <= size);
  return out;
}

// ---------------------------------------------------------------------------
// AuthHttpResponseParser.

const llhttp_settings_t& AuthHttpResponseParser::settings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_header_field = &AuthHttpResponseParser::onHeaderField;
    s.on_header_field_complete = &AuthHttpResponseParser::onHeaderFieldComplete;
    s.on_header_value = &AuthHttpResponseParser::onHeaderValue;
    s.on_header_value_complete = &AuthHttpResponseParser::onHeaderValueComplete;
    s.on_headers_complete = &AuthHttpResponseParser::onHeadersComplete;
    return s;
  }();
  return kSettings;
}

AuthHttpResponseParser::AuthHttpResponseParser(AuthHttpLimits limits) : limits_(limits) {
  llhttp_init(&parser_, HTTP_RESPONSE, &settings());
  // nginx's own header parser takes a bare LF as a line end.
  llhttp_set_lenient_optional_cr_before_lf(&parser_, 1);
  parser_.data = this;
}

AuthHttpResponseParser::~AuthHttpResponseParser() {
  for (auto& [name, value] : headers_) {
    wipeSecret(value);
  }
  wipeSecret(value_);
}

namespace {
AuthHttpResponseParser* owner(llhttp_t* parser) {
  return static_cast<AuthHttpResponseParser*>(parser->data);
}
}  // namespace

// The data callbacks only append: feed() never hands llhttp more than
// max_head_bytes in all, so nothing here can grow beyond that.
int AuthHttpResponseParser::onHeaderField(llhttp_t* parser, const char* at, std::size_t length) {
  owner(parser)->field_.append(at, length);
  return 0;
}

int AuthHttpResponseParser::onHeaderFieldComplete(llhttp_t* parser) {
  AuthHttpResponseParser* self = owner(parser);
  if (++self->fields_ > self->limits_.max_headers) {
    self->too_many_ = true;
    return HPE_USER;
  }
  return 0;
}

int AuthHttpResponseParser::onHeaderValue(llhttp_t* parser, const char* at, std::size_t length) {
  owner(parser)->value_.append(at, length);
  return 0;
}

int AuthHttpResponseParser::onHeaderValueComplete(llhttp_t* parser) {
  AuthHttpResponseParser* self = owner(parser);
  std::string& value = self->value_;
  std::size_t end = value.find_last_not_of(" \t");
  std::size_t begin = value.find_first_not_of(" \t");
  std::string trimmed =
      begin == std::string::npos ? std::string() : value.substr(begin, end - begin + 1);
  wipeSecret(value);
  self->headers_.emplace_back(std::move(self->field_), std::move(trimmed));
  self->field_.clear();
  return 0;
}

int AuthHttpResponseParser::onHeadersComplete(llhttp_t* parser) {
  AuthHttpResponseParser* self = owner(parser);
  self->status_code_ = parser->status_code;
  self->state_ = State::kComplete;
  return HPE_PAUSED;  // the body is of no interest: stop here
}

AuthHttpResponseParser::State AuthHttpResponseParser::fail(std::string message) {
  state_ = State::kError;
  error_ = std::move(message);
  return state_;
}

AuthHttpResponseParser::State AuthHttpResponseParser::feed(std::string_view bytes) {
  if (state_ != State::kNeedMore || bytes.empty()) {
    return state_;
  }
  // Never more than max_head_bytes in all reach llhttp, so that the error
  // for an oversized head and any error inside the first max_head_bytes
  // are the same however the answer was split.
  const std::size_t room = limits_.max_head_bytes - fed_;
  const std::string_view piece = bytes.substr(0, room);
  const llhttp_errno_t rc = llhttp_execute(&parser_, piece.data(), piece.size());
  if (state_ == State::kComplete) {
    return state_;
  }
  if (too_many_) {
    return fail("more than " + std::to_string(limits_.max_headers) + " header fields");
  }
  if (rc != HPE_OK) {
    return fail(std::string("malformed HTTP answer (") + llhttp_errno_name(rc) + ": " +
                llhttp_get_error_reason(&parser_) + ")");
  }
  fed_ += piece.size();
  if (fed_ >= limits_.max_head_bytes) {
    return fail("answer header larger than " + std::to_string(limits_.max_head_bytes) + " bytes");
  }
  return state_;
}

AuthHttpResponseParser::State AuthHttpResponseParser::finish() {
  if (state_ != State::kNeedMore) {
    return state_;
  }
  return fail(fed_ == 0 ? "connection closed without an answer"
                        : "connection closed before the end of the answer's header");
}

// ---------------------------------------------------------------------------
// The answer's meaning.

namespace {

// The answer's headers nginx's mail auth reads (the last of a name wins;
// unknown names are ignored).
struct AuthHttpFields {
  bool status_seen = false;
  bool wait = false;
  std::optional<std::string> error_text;
  std::optional<std::string_view> server;
  std::optional<std::string_view> port;
  std::optional<std::string_view> user;
  std::optional<std::string_view> destuser;
  std::optional<std::string_view> pass;
  std::optional<std::string_view> ssl;
  std::optional<std::string_view> starttls;
  std::optional<std::string_view> proxy_timeout;
  std::optional<std::string_view> reason;
  bool nologin = false;
  std::uint32_t sleep = 0;
};

AuthHttpFields readAuthHttpFields(const AuthHttpHeaders& headers) {
  AuthHttpFields fields;
  auto& [status_seen, wait, error_text, server, port, user, destuser, pass, ssl, starttls,
         proxy_timeout, reason, nologin, sleep] = fields;
  for (const auto& [name, value] : headers) {
    if (equalsIgnoreCase(name, "Auth-Status")) {
      status_seen = true;
      if (value == "OK") {
        continue;
      }
      if (value == "WAIT") {
        wait = true;
        continue;
      }
      error_text = value;
    } else if (equalsIgnoreCase(name, "Auth-Server")) {
      server = value;
    } else if (equalsIgnoreCase(name, "Auth-Port")) {
      port = value;
    } else if (equalsIgnoreCase(name, "Auth-User")) {
      user = value;
    } else if (equalsIgnoreCase(name, "Auth-Pass")) {
      pass = value;
    } else if (equalsIgnoreCase(name, "Auth-Wait")) {
      // As ngx_atoi: a value that is not a number is ignored.
      if (std::optional<std::uint64_t> n = parseDigits(value, UINT32_MAX)) {
        sleep = static_cast<std::uint32_t>(*n);
      }
    } else if (equalsIgnoreCase(name, "Auth-Ssl")) {
      ssl = value;
    } else if (equalsIgnoreCase(name, "Auth-Starttls")) {
      starttls = value;
    } else if (equalsIgnoreCase(name, "Auth-Destuser")) {
      destuser = value;
    } else if (equalsIgnoreCase(name, "Auth-Proxy-Timeout")) {
      proxy_timeout = value;
    } else if (equalsIgnoreCase(name, "Auth-Nologin")) {
      nologin = true;
    } else if (equalsIgnoreCase(name, "Auth-Reason")) {
      reason = value;
    }
  }
  return fields;
}

}  // namespace

AuthHttpAnswer interpretAuthHttpAnswer(const AuthHttpHeaders& headers, std::string_view service) {
  const std::string who = "auth http server " + std::string(service);
  AuthHttpFields fields = readAuthHttpFields(headers);
  auto& [status_seen, wait, error_text, server, port, user, destuser, pass, ssl, starttls,
         proxy_timeout, reason, nologin, sleep] = fields;

  AuthHttpAnswer answer;
  LookupResult& result = answer.result;
  if (!status_seen) {
    result = LookupResult::unavailable(who + " sent no Auth-Status header");
    return answer;
  }
  if (error_text) {
    result.outcome = LookupOutcome::kRefuse;
    result.reason = clientText(*error_text);
    if (sleep > 0) {
      result.wait_seconds = sleep;
    }
    result.nologin = nologin;
    return answer;
  }
  if (wait) {
    answer.ask_again = true;
    answer.wait_seconds = sleep;
    return answer;
  }
  if (nologin) {
    result.outcome = LookupOutcome::kRefuse;
    result.nologin = true;
    result.reason = clientText(reason && !reason->empty() ? *reason : "Login disabled");
    if (sleep > 0) {
      result.wait_seconds = sleep;
    }
    return answer;
  }
  if (!server || !port || server->empty() || port->empty()) {
    result = LookupResult::unavailable(who + " did not send server or port");
    return answer;
  }
  LookupRoute& route = result.route;
  route.host = std::string(*server);
  in_addr v4{};
  in6_addr v6{};
  if (::inet_pton(AF_INET, route.host.c_str(), &v4) == 1) {
    route.ipv6 = false;
  } else if (::inet_pton(AF_INET6, route.host.c_str(), &v6) == 1) {
    route.ipv6 = true;
  } else {
    result =
        LookupResult::unavailable(who + " sent invalid server address: " + quotedForLog(*server) +
                                  " (an IP literal is required)");
    return answer;
  }
  std::optional<std::uint64_t> port_number = parseDigits(*port, 65535);
  if (!port_number || *port_number == 0) {
    result = LookupResult::unavailable(who + " sent invalid server port: " + quotedForLog(*port));
    return answer;
  }
  route.port = static_cast<std::uint16_t>(*port_number);

  if (user && destuser && *user != *destuser) {
    result = LookupResult::unavailable(who + " sent Auth-User and Auth-Destuser that differ");
    return answer;
  }
  if (user || destuser) {
    result.backend_user = std::string(user ? *user : *destuser);
  }
  if (ssl && starttls) {
    result = LookupResult::unavailable(who + " sent both Auth-Ssl and Auth-Starttls");
    return answer;
  }
  if (ssl || starttls) {
    std::string_view value = ssl ? *ssl : *starttls;
    if (value != "yes" && value != "any-cert") {
      result =
          LookupResult::unavailable(who + " sent invalid " + (ssl ? "Auth-Ssl" : "Auth-Starttls") +
                                    ": " + quotedForLog(value) + " (yes or any-cert)");
      return answer;
    }
    result.backend_tls = ssl ? LookupBackendTls::kImplicit : LookupBackendTls::kStarttls;
    result.backend_tls_verify = value == "yes";
  }
  if (proxy_timeout) {
    result.proxy_timeout = parseProxyTimeout(*proxy_timeout);
    if (!result.proxy_timeout) {
      result = LookupResult::unavailable(
          who + " sent invalid Auth-Proxy-Timeout: " + quotedForLog(*proxy_timeout));
      return answer;
    }
  }
  // Last, so that no early return drops a copy of the secret unwiped.
  if (pass) {
    result.backend_password = std::string(*pass);
  }
  result.outcome = LookupOutcome::kRoute;
  return answer;
}

}  // namespace portico::proxy
