// nginx auth_http answers: the llhttp-based parser (each case whole, byte by
// byte, split at every offset and in small chunks, every piece against a
// guard page) and the meaning of the headers (nginx's
// ngx_mail_auth_http_process_headers plus Dovecot's passdb fields).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "lookup/http_auth.h"
#include "parser/split_harness.h"

namespace portico::proxy {
namespace {

using parser::testing::GuardedBuffer;
using parser::testing::printable;
using State = AuthHttpResponseParser::State;

struct Outcome {
  State state = State::kNeedMore;
  int status = 0;
  AuthHttpHeaders headers;
  std::string error;
  bool operator==(const Outcome&) const = default;
};

std::string describe(const Outcome& o) {
  std::string out = o.state == State::kComplete ? "complete"
                    : o.state == State::kError  ? "error"
                                                : "need_more";
  out += " status=" + std::to_string(o.status);
  for (const auto& [name, value] : o.headers) {
    out += " [" + printable(name) + ": " + printable(value) + "]";
  }
  if (!o.error.empty()) {
    out += " error='" + o.error + "'";
  }
  return out;
}

// Feeds `input` cut at `cuts` (ascending offsets, first 0); with
// `closed`, the server then closes the connection.
Outcome runPieces(std::string_view input, const std::vector<std::size_t>& cuts, bool closed,
                  GuardedBuffer& guard, const AuthHttpLimits& limits) {
  AuthHttpResponseParser parser(limits);
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    const std::size_t begin = cuts[c];
    const std::size_t end = c + 1 < cuts.size() ? cuts[c + 1] : input.size();
    parser.feed(guard.place(input.substr(begin, end - begin)));
  }
  if (closed) {
    parser.finish();
  }
  return Outcome{parser.state(), parser.state() == State::kComplete ? parser.statusCode() : 0,
                 parser.state() == State::kComplete ? parser.headers() : AuthHttpHeaders{},
                 parser.error()};
}

std::vector<std::size_t> cutsEvery(std::size_t size, std::size_t chunk) {
  std::vector<std::size_t> cuts{0};
  for (std::size_t at = chunk; at < size; at += chunk) {
    cuts.push_back(at);
  }
  return cuts;
}

// The whole-input outcome, after checking that every split agrees.
Outcome runAllSplits(std::string_view input, bool closed, std::string* mismatch,
                     const AuthHttpLimits& limits = {}) {
  GuardedBuffer guard(input.size() + 1);
  Outcome whole = runPieces(input, {0}, closed, guard, limits);
  mismatch->clear();
  auto check = [&](const std::vector<std::size_t>& cuts, const std::string& what) {
    if (!mismatch->empty()) {
      return;
    }
    Outcome run = runPieces(input, cuts, closed, guard, limits);
    if (!(run == whole)) {
      *mismatch = what + " gave " + describe(run) + "; whole gave " + describe(whole);
    }
  };
  check(cutsEvery(input.size(), 1), "byte by byte");
  for (std::size_t at = 1; at < input.size(); ++at) {
    check({0, at}, "split at " + std::to_string(at));
  }
  for (std::size_t chunk : {2, 3, 7, 16}) {
    check(cutsEvery(input.size(), chunk), "chunks of " + std::to_string(chunk));
  }
  return whole;
}

struct ParseCase {
  std::string name;
  std::string input;
  bool closed;  // the server closes after `input`
  State state;
  int status;
  AuthHttpHeaders headers;
  std::string error;  // substring, for kError
};

TEST(AuthHttpResponseParser, Cases) {
  const std::string ok =
      "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 10.0.0.1\r\n"
      "Auth-Port: 143\r\nAuth-Pass: pw\r\n\r\n";
  const AuthHttpHeaders ok_headers = {{"Auth-Status", "OK"},
                                      {"Auth-Server", "10.0.0.1"},
                                      {"Auth-Port", "143"},
                                      {"Auth-Pass", "pw"}};
  static const char kNul[] = "HTTP/1.0 200 OK\r\nAuth-Status: O\0K\r\n\r\n";
  std::string many = "HTTP/1.0 200 OK\r\n";
  for (int i = 0; i < 65; ++i) {
    many += "X-H" + std::to_string(i) + ": v\r\n";
  }
  many += "\r\n";
  const std::vector<ParseCase> cases = {
      {"ok", ok, false, State::kComplete, 200, ok_headers, ""},
      {"ok then close", ok, true, State::kComplete, 200, ok_headers, ""},
      {"body ignored", ok + "Content that is never read\r\n\r\nAuth-Status: no", true,
       State::kComplete, 200, ok_headers, ""},
      {"bare LF lines (nginx accepts them)",
       "HTTP/1.0 200 OK\nAuth-Status: OK\nAuth-Server: 10.0.0.1\nAuth-Port: 143\n"
       "Auth-Pass: pw\n\n",
       false, State::kComplete, 200, ok_headers, ""},
      {"status line ignored by the meaning, kept here",
       "HTTP/1.1 500 Internal Server Error\r\nAuth-Status: Temporary failure\r\n\r\n",
       false,
       State::kComplete,
       500,
       {{"Auth-Status", "Temporary failure"}},
       ""},
      {"spaces around values",
       "HTTP/1.0 200 OK\r\nAuth-Status:   Invalid login   \r\nAuth-Wait:\t3\r\n\r\n",
       false,
       State::kComplete,
       200,
       {{"Auth-Status", "Invalid login"}, {"Auth-Wait", "3"}},
       ""},
      {"empty value",
       "HTTP/1.0 200 OK\r\nAuth-Nologin:\r\nAuth-Status: OK\r\n\r\n",
       false,
       State::kComplete,
       200,
       {{"Auth-Nologin", ""}, {"Auth-Status", "OK"}},
       ""},
      {"names keep their case",
       "HTTP/1.0 200 OK\r\nauth-STATUS: OK\r\n\r\n",
       false,
       State::kComplete,
       200,
       {{"auth-STATUS", "OK"}},
       ""},
      {"no headers", "HTTP/1.0 204 No Content\r\n\r\n", false, State::kComplete, 204, {}, ""},
      {"not HTTP", "Auth-Status: OK\r\n\r\n", false, State::kError, 0, {}, "malformed HTTP"},
      {"garbage", "\x16\x03\x01 binary", false, State::kError, 0, {}, "malformed HTTP"},
      {"space in a header name",
       "HTTP/1.0 200 OK\r\nAuth Status: OK\r\n\r\n",
       false,
       State::kError,
       0,
       {},
       "malformed HTTP"},
      {"NUL in a value",
       std::string(kNul, sizeof(kNul) - 1),
       false,
       State::kError,
       0,
       {},
       "malformed HTTP"},
      {"too many headers", many, false, State::kError, 0, {}, "more than 64 header fields"},
      {"closed mid-header",
       "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Ser",
       true,
       State::kError,
       0,
       {},
       "closed before the end of the answer's header"},
      {"closed before the empty line",
       "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n",
       true,
       State::kError,
       0,
       {},
       "closed before the end"},
      {"closed at once", "", true, State::kError, 0, {}, "closed without an answer"},
      {"waiting for more",
       "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n",
       false,
       State::kNeedMore,
       0,
       {},
       ""},
  };
  for (const ParseCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::string mismatch;
    Outcome got = runAllSplits(c.input, c.closed, &mismatch);
    EXPECT_EQ(mismatch, "");
    EXPECT_EQ(got.state, c.state) << describe(got);
    if (c.state == State::kComplete) {
      EXPECT_EQ(got.status, c.status);
      EXPECT_EQ(got.headers, c.headers) << describe(got);
    }
    if (c.state == State::kError) {
      EXPECT_NE(got.error.find(c.error), std::string::npos) << got.error;
    }
  }
}

// The head limit gives the same error however the bytes arrive, even when a
// malformed byte lies beyond the limit.
TEST(AuthHttpResponseParser, HeadLimitIsSplitIndependent) {
  AuthHttpLimits limits;
  limits.max_head_bytes = 64;
  const std::string input =
      "HTTP/1.0 200 OK\r\nAuth-Status: " + std::string(60, 'x') + "\r\nBad Header\x01: y\r\n\r\n";
  std::string mismatch;
  Outcome got = runAllSplits(input, false, &mismatch, limits);
  EXPECT_EQ(mismatch, "");
  EXPECT_EQ(got.state, State::kError);
  EXPECT_NE(got.error.find("larger than 64 bytes"), std::string::npos) << got.error;

  // Exactly at the limit: accepted.
  std::string fits = "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n\r\n";
  limits.max_head_bytes = fits.size() + 1;
  got = runAllSplits(fits, false, &mismatch, limits);
  EXPECT_EQ(mismatch, "");
  EXPECT_EQ(got.state, State::kComplete) << describe(got);
}

TEST(AuthHttpResponseParser, ErrorsAreFinal) {
  AuthHttpResponseParser parser;
  EXPECT_EQ(parser.feed("nonsense\r\n"), State::kError);
  std::string error = parser.error();
  EXPECT_EQ(parser.feed("HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n\r\n"), State::kError);
  EXPECT_EQ(parser.finish(), State::kError);
  EXPECT_EQ(parser.error(), error);
}

// ---------------------------------------------------------------------------
// Meaning.

struct MeaningCase {
  std::string name;
  AuthHttpHeaders headers;
  std::string expected;  // AuthHttpAnswer as "again N" or LookupResult::describe()
};

std::string meaning(const AuthHttpHeaders& headers) {
  AuthHttpAnswer answer = interpretAuthHttpAnswer(headers, "127.0.0.1:9000");
  if (answer.ask_again) {
    return "again " + std::to_string(answer.wait_seconds);
  }
  return answer.result.describe();
}

TEST(AuthHttpAnswer, AsNginxReadsIt) {
  const std::string srv = "unavailable: auth http server 127.0.0.1:9000 ";
  const std::vector<MeaningCase> cases = {
      {"route",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-Pass", "pw"}},
       "route 10.0.0.1:143 pass=<set>"},
      {"route without Auth-Pass (Portico replays the client's password)",
       {{"Auth-Status", "OK"}, {"Auth-Server", "10.0.0.1"}, {"Auth-Port", "143"}},
       "route 10.0.0.1:143"},
      {"IPv6 server",
       {{"Auth-Status", "OK"}, {"Auth-Server", "::1"}, {"Auth-Port", "1143"}},
       "route [::1]:1143"},
      {"names are case-insensitive",
       {{"AUTH-STATUS", "OK"}, {"auth-server", "10.0.0.2"}, {"aUtH-pOrT", "993"}},
       "route 10.0.0.2:993"},
      {"the last occurrence wins",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Server", "10.0.0.3"},
        {"Auth-Port", "143"}},
       "route 10.0.0.3:143"},
      {"user override",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-User", "alice@mbx"}},
       "route 10.0.0.1:143 user=alice@mbx"},
      {"OK without server",
       {{"Auth-Status", "OK"}, {"Auth-Port", "143"}},
       srv + "did not send server or port"},
      {"OK without port",
       {{"Auth-Status", "OK"}, {"Auth-Server", "10.0.0.1"}},
       srv + "did not send server or port"},
      {"OK with an empty server",
       {{"Auth-Status", "OK"}, {"Auth-Server", ""}, {"Auth-Port", "143"}},
       srv + "did not send server or port"},
      {"host name instead of an IP literal",
       {{"Auth-Status", "OK"}, {"Auth-Server", "mbx1.example.org"}, {"Auth-Port", "143"}},
       srv + "sent invalid server address: \"mbx1.example.org\" (an IP literal is required)"},
      {"port 0",
       {{"Auth-Status", "OK"}, {"Auth-Server", "10.0.0.1"}, {"Auth-Port", "0"}},
       srv + "sent invalid server port: \"0\""},
      {"port too big",
       {{"Auth-Status", "OK"}, {"Auth-Server", "10.0.0.1"}, {"Auth-Port", "65536"}},
       srv + "sent invalid server port: \"65536\""},
      {"port with a sign",
       {{"Auth-Status", "OK"}, {"Auth-Server", "10.0.0.1"}, {"Auth-Port", "+143"}},
       srv + "sent invalid server port: \"+143\""},
      {"refusal",
       {{"Auth-Status", "Invalid login or password"}},
       "refuse 'Invalid login or password'"},
      {"refusal with Auth-Wait",
       {{"Auth-Status", "Invalid login or password"}, {"Auth-Wait", "3"}},
       "refuse 'Invalid login or password' wait=3"},
      {"Auth-Wait that is not a number is ignored (ngx_atoi)",
       {{"Auth-Status", "Invalid login"}, {"Auth-Wait", "3s"}},
       "refuse 'Invalid login'"},
      {"Auth-Wait: 0 means no pause",
       {{"Auth-Status", "Invalid login"}, {"Auth-Wait", "0"}},
       "refuse 'Invalid login'"},
      {"status values are case-sensitive, as in nginx", {{"Auth-Status", "ok"}}, "refuse 'ok'"},
      {"refusal wins over a route",
       {{"Auth-Status", "Temporarily unavailable"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"}},
       "refuse 'Temporarily unavailable'"},
      {"refusal text made one printable line",
       {{"Auth-Status", "Bad\tlogin"}},
       "refuse 'Bad login'"},
      {"WAIT", {{"Auth-Status", "WAIT"}, {"Auth-Wait", "2"}}, "again 2"},
      {"WAIT without Auth-Wait", {{"Auth-Status", "WAIT"}}, "again 0"},
      {"no Auth-Status",
       {{"Auth-Server", "10.0.0.1"}, {"Auth-Port", "143"}},
       srv + "sent no Auth-Status header"},
      {"nothing", {}, srv + "sent no Auth-Status header"},
      // Dovecot's passdb fields as Auth-<Field> headers.
      {"ssl=yes",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "993"},
        {"Auth-Ssl", "yes"}},
       "route 10.0.0.1:993 tls=implicit"},
      {"starttls=any-cert",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-Starttls", "any-cert"}},
       "route 10.0.0.1:143 tls=starttls(any-cert)"},
      {"bad ssl value",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "993"},
        {"Auth-Ssl", "no"}},
       srv + "sent invalid Auth-Ssl: \"no\" (yes or any-cert)"},
      {"ssl and starttls",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "993"},
        {"Auth-Ssl", "yes"},
        {"Auth-Starttls", "yes"}},
       srv + "sent both Auth-Ssl and Auth-Starttls"},
      {"destuser",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-Destuser", "alice@backend"}},
       "route 10.0.0.1:143 user=alice@backend"},
      {"destuser agreeing with Auth-User",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-User", "a"},
        {"Auth-Destuser", "a"}},
       "route 10.0.0.1:143 user=a"},
      {"destuser differing from Auth-User",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-User", "a"},
        {"Auth-Destuser", "b"}},
       srv + "sent Auth-User and Auth-Destuser that differ"},
      {"proxy_timeout in seconds",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-Proxy-Timeout", "30"}},
       "route 10.0.0.1:143 proxy_timeout=30000ms"},
      {"proxy_timeout in ms",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-Proxy-Timeout", "1500ms"}},
       "route 10.0.0.1:143 proxy_timeout=1500ms"},
      {"bad proxy_timeout",
       {{"Auth-Status", "OK"},
        {"Auth-Server", "10.0.0.1"},
        {"Auth-Port", "143"},
        {"Auth-Proxy-Timeout", "soon"}},
       srv + "sent invalid Auth-Proxy-Timeout: \"soon\""},
      {"nologin with reason",
       {{"Auth-Status", "OK"}, {"Auth-Nologin", ""}, {"Auth-Reason", "Mailbox moved"}},
       "refuse 'Mailbox moved' nologin"},
      {"nologin without reason",
       {{"Auth-Status", "OK"}, {"Auth-Nologin", "y"}},
       "refuse 'Login disabled' nologin"},
      {"nologin with a refusal keeps the refusal's text",
       {{"Auth-Status", "Go away"}, {"Auth-Nologin", ""}, {"Auth-Reason", "Other"}},
       "refuse 'Go away' nologin"},
  };
  for (const MeaningCase& c : cases) {
    EXPECT_EQ(meaning(c.headers), c.expected) << c.name;
  }
}

TEST(AuthHttpAnswer, PasswordOverrideIsKeptButNeverInErrors) {
  AuthHttpAnswer answer = interpretAuthHttpAnswer({{"Auth-Status", "OK"},
                                                   {"Auth-Server", "10.0.0.1"},
                                                   {"Auth-Port", "143"},
                                                   {"Auth-Pass", "Backend-Secret-42"}},
                                                  "127.0.0.1:9000");
  ASSERT_EQ(answer.result.outcome, LookupOutcome::kRoute);
  EXPECT_EQ(answer.result.backend_password, "Backend-Secret-42");
  EXPECT_EQ(answer.result.describe().find("Backend-Secret-42"), std::string::npos);

  answer = interpretAuthHttpAnswer({{"Auth-Status", "OK"},
                                    {"Auth-Server", "10.0.0.1"},
                                    {"Auth-Port", "x"},
                                    {"Auth-Pass", "Backend-Secret-42"}},
                                   "127.0.0.1:9000");
  ASSERT_EQ(answer.result.outcome, LookupOutcome::kUnavailable);
  EXPECT_FALSE(answer.result.backend_password.has_value());
  EXPECT_EQ(answer.result.error.find("Backend-Secret-42"), std::string::npos);
}

}  // namespace
}  // namespace portico::proxy
