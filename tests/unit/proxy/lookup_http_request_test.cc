// nginx auth_http requests: the escaping of Auth-User/Auth-Pass and the
// whole request, byte for byte. The reference escape below is nginx's own
// ngx_escape_uri() loop with the NGX_ESCAPE_MAIL_AUTH table, copied from
// src/core/ngx_string.c (1.22.1, the version Debian 12 ships).
#include "lookup/http_auth.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace portico::proxy {
namespace {

// ngx_escape_uri(dst, src, size, NGX_ESCAPE_MAIL_AUTH), transcribed.
std::string nginxEscape(const std::string& text) {
  static const std::uint32_t memcached[] = {
      0xffffffff, /* 1111 1111 1111 1111  1111 1111 1111 1111 */

      /* ?>=< ;:98 7654 3210  /.-, +*)( '&%$ #"!  */
      0x00000021, /* 0000 0000 0000 0000  0000 0000 0010 0001 */

      /* _^]\ [ZYX WVUT SRQP  ONML KJIH GFED CBA@ */
      0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */

      /*  ~}| {zyx wvut srqp  onml kjih gfed cba` */
      0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */

      0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
      0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
      0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
      0x00000000, /* 0000 0000 0000 0000  0000 0000 0000 0000 */
  };
  static const unsigned char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char src : text) {
    if (memcached[src >> 5] & (1U << (src & 0x1f))) {
      out += '%';
      out += static_cast<char>(hex[src >> 4]);
      out += static_cast<char>(hex[src & 0xf]);
    } else {
      out += static_cast<char>(src);
    }
  }
  return out;
}

TEST(AuthHttpEscape, EveryByteAsNginx) {
  for (int c = 0; c < 256; ++c) {
    std::string one(1, static_cast<char>(c));
    EXPECT_EQ(escapeAuthHttpValue(one), nginxEscape(one)) << "byte " << c;
  }
}

TEST(AuthHttpEscape, Table) {
  struct Case {
    std::string in;
    std::string out;
  };
  const std::vector<Case> cases = {
      {"", ""},
      {"alice", "alice"},
      {"alice@example.org", "alice@example.org"},
      {"pass word", "pass%20word"},
      {"100%", "100%25"},
      {"%25", "%2525"},
      {std::string("a\0b", 3), "a%00b"},
      {"tab\there", "tab%09here"},
      {"cr\rlf\n", "cr%0Dlf%0A"},
      {"\x1f\x20\x21", "%1F%20!"},
      {"del\x7f", "del\x7f"},                                  // 0x7F passes, as in nginx
      {"p\xc3\xa4ss\xe2\x82\xac", "p\xc3\xa4ss\xe2\x82\xac"},  // UTF-8 passes raw
      {"\"quoted\"\\+:=&?#/", "\"quoted\"\\+:=&?#/"},
      {"\xff\x80", "\xff\x80"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(escapeAuthHttpValue(c.in), c.out) << c.in;
    EXPECT_EQ(escapeAuthHttpValue(c.in), nginxEscape(c.in)) << c.in;
  }
}

AuthHttpTarget target(const std::string& url) {
  AuthHttpTarget out;
  Status parsed = parseAuthHttpUrl(url, out);
  EXPECT_TRUE(parsed.ok()) << url << ": " << parsed.message();
  return out;
}

LookupRequest plainLogin() {
  LookupRequest r;
  r.user = "alice";
  r.password = "s3cret pw%";
  r.attempt = 1;
  r.client_ip = "127.0.0.1";
  r.client_port = 50123;
  return r;
}

TEST(AuthHttpRequest, PlainLoginAsNginxWritesIt) {
  EXPECT_EQ(buildAuthHttpRequest(target("http://127.0.0.1:9000/auth"), {}, plainLogin()),
            "GET /auth HTTP/1.0\r\n"
            "Host: 127.0.0.1\r\n"
            "Auth-Method: plain\r\n"
            "Auth-User: alice\r\n"
            "Auth-Pass: s3cret%20pw%25\r\n"
            "Auth-Protocol: imap\r\n"
            "Auth-Login-Attempt: 1\r\n"
            "Client-IP: 127.0.0.1\r\n"
            "\r\n");
}

TEST(AuthHttpRequest, AllOptionalHeadersInNginxOrder) {
  LookupRequest r = plainLogin();
  r.user = "Bob Smith";
  r.attempt = 3;
  r.client_ip = "::1";
  r.client_host = "client.example.org";
  r.tls = true;
  r.tls_protocol = "TLSv1.3";
  r.tls_cipher = "TLS_AES_256_GCM_SHA384";
  EXPECT_EQ(buildAuthHttpRequest(target("http://[::1]:8080/a/b?x=1"),
                                 {{"X-Auth-Key", "secret"}, {"X-Second", "two words"}}, r),
            "GET /a/b?x=1 HTTP/1.0\r\n"
            "Host: [::1]\r\n"
            "Auth-Method: plain\r\n"
            "Auth-User: Bob%20Smith\r\n"
            "Auth-Pass: s3cret%20pw%25\r\n"
            "Auth-Protocol: imap\r\n"
            "Auth-Login-Attempt: 3\r\n"
            "Client-IP: ::1\r\n"
            "Client-Host: client.example.org\r\n"
            "Auth-SSL: on\r\n"
            "Auth-SSL-Protocol: TLSv1.3\r\n"
            "Auth-SSL-Cipher: TLS_AES_256_GCM_SHA384\r\n"
            "X-Auth-Key: secret\r\n"
            "X-Second: two words\r\n"
            "\r\n");
}

TEST(AuthHttpRequest, PassthroughSaslIsMethodNoneWithEmptyPass) {
  LookupRequest r = plainLogin();
  r.method = LookupAuthMethod::kNone;
  r.password.clear();
  std::string request = buildAuthHttpRequest(target("unix:/run/auth.sock:/auth"), {}, r);
  EXPECT_EQ(request,
            "GET /auth HTTP/1.0\r\n"
            "Host: localhost\r\n"
            "Auth-Method: none\r\n"
            "Auth-User: alice\r\n"
            "Auth-Pass: \r\n"
            "Auth-Protocol: imap\r\n"
            "Auth-Login-Attempt: 1\r\n"
            "Client-IP: 127.0.0.1\r\n"
            "\r\n");
}

// Values that do not come from the client's credentials are left out
// rather than escaped when they could break the header block.
TEST(AuthHttpRequest, UnsafeHostAndTlsNamesAreLeftOut) {
  LookupRequest r = plainLogin();
  r.client_host = "evil\r\nAuth-Status: OK";
  r.tls = true;
  r.tls_protocol = "";
  r.tls_cipher = "bad cipher";
  std::string request = buildAuthHttpRequest(target("127.0.0.1/auth"), {}, r);
  EXPECT_EQ(request.find("Client-Host"), std::string::npos);
  EXPECT_NE(request.find("Auth-SSL: on\r\n"), std::string::npos);
  EXPECT_EQ(request.find("Auth-SSL-Protocol"), std::string::npos);
  EXPECT_EQ(request.find("Auth-SSL-Cipher"), std::string::npos);
  EXPECT_EQ(request.find("\r\nAuth-Status"), std::string::npos);
}

TEST(AuthHttpRequest, ControlCharactersInCredentialsCannotInjectHeaders) {
  LookupRequest r = plainLogin();
  r.user = "alice\r\nAuth-Status: OK";
  r.password = "x\r\n\r\nGET / HTTP/1.0";
  std::string request = buildAuthHttpRequest(target("127.0.0.1:9000/auth"), {}, r);
  EXPECT_NE(request.find("Auth-User: alice%0D%0AAuth-Status:%20OK\r\n"), std::string::npos);
  EXPECT_NE(request.find("Auth-Pass: x%0D%0A%0D%0AGET%20/%20HTTP/1.0\r\n"), std::string::npos);
  // Exactly one empty line: the end of the header block.
  EXPECT_EQ(request.find("\r\n\r\n"), request.size() - 4);
}

TEST(AuthHttpUrl, SplitAsNginxSplitsIt) {
  struct Case {
    std::string url;
    std::string host;
    std::uint16_t port;
    std::string unix_path;
    std::string uri;
    std::string host_header;
  };
  const std::vector<Case> cases = {
      {"http://127.0.0.1:9000/auth", "127.0.0.1", 9000, "", "/auth", "127.0.0.1"},
      {"127.0.0.1:9000/auth", "127.0.0.1", 9000, "", "/auth", "127.0.0.1"},
      {"http://10.0.0.1/", "10.0.0.1", 80, "", "/", "10.0.0.1"},
      {"http://10.0.0.1", "10.0.0.1", 80, "", "/", "10.0.0.1"},
      {"http://10.0.0.1:81?q=1", "10.0.0.1", 81, "", "/?q=1", "10.0.0.1"},
      {"http://[::1]:9000/auth", "::1", 9000, "", "/auth", "[::1]"},
      {"http://[2001:db8::1]/x", "2001:db8::1", 80, "", "/x", "[2001:db8::1]"},
      {"unix:/run/auth.sock:/auth", "", 0, "/run/auth.sock", "/auth", "localhost"},
      {"unix:/run/auth.sock", "", 0, "/run/auth.sock", "/", "localhost"},
  };
  for (const Case& c : cases) {
    AuthHttpTarget t;
    Status parsed = parseAuthHttpUrl(c.url, t);
    ASSERT_TRUE(parsed.ok()) << c.url << ": " << parsed.message();
    EXPECT_EQ(t.host, c.host) << c.url;
    EXPECT_EQ(t.port, c.port) << c.url;
    EXPECT_EQ(t.unix_path, c.unix_path) << c.url;
    EXPECT_EQ(t.uri, c.uri) << c.url;
    EXPECT_EQ(t.host_header, c.host_header) << c.url;
  }
}

TEST(AuthHttpUrl, Rejected) {
  struct Case {
    std::string url;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"https://127.0.0.1/auth", "only http:// and unix:"},
      {"http://auth.example.org/auth", "IP literal"},
      {"http://127.0.0.1:0/auth", "bad port '0'"},
      {"http://127.0.0.1:70000/auth", "bad port '70000'"},
      {"http://127.0.0.1:/auth", "empty port"},
      {"http://[::1/auth", "unterminated"},
      {"http://127.0.0.1/a b", "no spaces"},
      {"unix:relative.sock:/auth", "absolute"},
      {"unix:/run/auth.sock:auth", "start with '/'"},
      {"unix:/" + std::string(200, 'x'), "at most 107"},
  };
  for (const Case& c : cases) {
    AuthHttpTarget t;
    Status parsed = parseAuthHttpUrl(c.url, t);
    EXPECT_FALSE(parsed.ok()) << c.url;
    EXPECT_NE(parsed.message().find(c.error), std::string::npos)
        << c.url << ": " << parsed.message();
  }
}

}  // namespace
}  // namespace portico::proxy
