// nginx auth_http, the protocol (no sockets here): the request nginx's mail
// module sends for an IMAP login, byte for byte, and the answer's parser and
// meaning. HttpAuthLookup (http_auth_lookup.h) moves the bytes.
//
// Source of truth: nginx src/mail/ngx_mail_auth_http_module.c
// (ngx_mail_auth_http_create_request, ngx_mail_auth_http_escape,
// ngx_mail_auth_http_process_headers). Where Portico differs, the
// difference is named in docs/lookup.md.
#pragma once

#include <llhttp.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lookup/lookup.h"

namespace portico::proxy {

using AuthHttpHeaders = std::vector<std::pair<std::string, std::string>>;

// ngx_escape_uri(..., NGX_ESCAPE_MAIL_AUTH): bytes 0x00-0x1F, space and '%'
// become "%XX" (upper-case hex); everything else, UTF-8 and 0x7F included,
// passes unchanged.
std::string escapeAuthHttpValue(std::string_view text);

// The whole request, as nginx writes it for IMAP: request line, Host,
// Auth-Method, Auth-User, Auth-Pass, Auth-Protocol, Auth-Login-Attempt,
// Client-IP, Client-Host (when known), Auth-SSL/-Protocol/-Cipher (TLS
// client leg), the configured extra headers, the empty line. The result
// holds the password: the caller wipes it (wipeSecret) when sent.
std::string buildAuthHttpRequest(const AuthHttpTarget& target, const AuthHttpHeaders& extra,
                                 const LookupRequest& request);

struct AuthHttpLimits {
  std::size_t max_head_bytes = 16 * 1024;  // status line and headers
  std::size_t max_headers = 64;
};

// The answer's status line and headers, parsed with llhttp; the body is
// never read. Resumable: bytes may arrive in any split. Header names keep
// their case (matching is case-insensitive); values lose surrounding
// spaces. Errors are final. Values are wiped on destruction (Auth-Pass).
class AuthHttpResponseParser {
 public:
  enum class State : std::uint8_t { kNeedMore, kComplete, kError };

  explicit AuthHttpResponseParser(AuthHttpLimits limits = {});
  ~AuthHttpResponseParser();
  AuthHttpResponseParser(const AuthHttpResponseParser&) = delete;
  AuthHttpResponseParser& operator=(const AuthHttpResponseParser&) = delete;

  // Takes the next bytes of the answer. Once complete or failed, further
  // bytes are ignored and the state stays.
  State feed(std::string_view bytes);
  // The server closed the connection: an unfinished head is an error.
  State finish();

  State state() const { return state_; }
  const AuthHttpHeaders& headers() const { return headers_; }
  int statusCode() const { return status_code_; }
  const std::string& error() const { return error_; }

 private:
  static const llhttp_settings_t& settings();
  static int onHeaderField(llhttp_t* parser, const char* at, std::size_t length);
  static int onHeaderFieldComplete(llhttp_t* parser);
  static int onHeaderValue(llhttp_t* parser, const char* at, std::size_t length);
  static int onHeaderValueComplete(llhttp_t* parser);
  static int onHeadersComplete(llhttp_t* parser);
  State fail(std::string message);

  AuthHttpLimits limits_;
  llhttp_t parser_;
  State state_ = State::kNeedMore;
  std::size_t fed_ = 0;
  std::size_t fields_ = 0;
  bool too_many_ = false;
  std::string field_;
  std::string value_;
  AuthHttpHeaders headers_;
  int status_code_ = 0;
  std::string error_;
};

// What a complete answer means.
struct AuthHttpAnswer {
  // Auth-Status: WAIT: pause wait_seconds (Auth-Wait, default 0), then ask
  // again (nginx repeats the same request).
  bool ask_again = false;
  std::uint32_t wait_seconds = 0;
  LookupResult result;  // when !ask_again
};

// Interprets the headers as nginx does (status line ignored; the last
// occurrence of a header wins), plus Dovecot's passdb fields as
// Auth-Ssl, Auth-Starttls, Auth-Destuser, Auth-Proxy-Timeout, Auth-Nologin,
// Auth-Reason. `service` names the auth server in errors
// ("127.0.0.1:9000").
AuthHttpAnswer interpretAuthHttpAnswer(const AuthHttpHeaders& headers, std::string_view service);

}  // namespace portico::proxy
