// BackendLoginClient on its own: no session, no transport, bytes in and
// bytes out. Each dialogue runs whole, split at every offset and byte at a
// time, and must give the same events, the same bytes to the backend and
// the same bytes left for the relay.
#include "portico/backend_login.h"

#include <netinet/in.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace portico::parser {
namespace {

using Type = BackendLoginEventType;
using State = BackendLoginClient::State;

BackendLoginParams loginParams() {
  BackendLoginParams p;
  p.tag = "A1";
  p.user = "alice";
  p.password = "secret";
  return p;
}

BackendLoginParams authenticateParams() {
  BackendLoginParams p;
  p.method = BackendLoginMethod::kAuthenticate;
  p.tag = "A1";
  p.mechanism = "PLAIN";
  p.sasl = "AGFsaWNlAHNlY3JldA==";
  return p;
}

// What a dialogue produced: events as "Type line", everything written to
// the backend, and the bytes past the login's tagged answer.
struct Transcript {
  std::vector<std::string> events;
  std::string sent;
  std::string rest;
  State state = State::kGreeting;
  bool operator==(const Transcript&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Transcript& t) {
  os << "events:";
  for (const auto& e : t.events) {
    os << " [" << e << "]";
  }
  return os << " sent: [" << t.sent << "] rest: [" << t.rest
            << "] state: " << BackendLoginClient::stateName(t.state);
}

// Feeds `pieces` in order. kStartTls is answered with tlsEstablished() at
// once (the handshake is not this machine's business); after the login's
// answer, later pieces are what the relay would get.
Transcript run(const BackendLoginParams& params, const std::vector<std::string>& pieces) {
  BackendLoginClient client(params);
  Transcript t;
  bool finished = false;
  for (const std::string& piece : pieces) {
    if (finished) {
      t.rest += piece;
      continue;
    }
    client.feed(piece);
    for (;;) {
      BackendLoginEvent ev = client.next();
      t.sent += client.output();
      client.clearOutput();
      if (ev.type == Type::kNeedMore) {
        break;
      }
      t.events.push_back(std::string(backendLoginEventTypeName(ev.type)) + " " +
                         std::string(ev.line) + ev.why);
      if (ev.type == Type::kStartTls) {
        client.tlsEstablished();
        t.sent += client.output();
        client.clearOutput();
        continue;
      }
      if (ev.type != Type::kUntagged && ev.type != Type::kStep) {
        finished = true;
        if (ev.type == Type::kLoggedIn || ev.type == Type::kReady) {
          t.rest = std::string(client.rest());
        }
        break;
      }
    }
  }
  t.state = client.state();
  return t;
}

// The same dialogue whole, split in two at every offset, and byte by byte.
Transcript runEverySplit(const BackendLoginParams& params, const std::string& backend) {
  Transcript whole = run(params, {backend});
  for (std::size_t cut = 1; cut < backend.size(); ++cut) {
    EXPECT_EQ(run(params, {backend.substr(0, cut), backend.substr(cut)}), whole) << "cut " << cut;
  }
  std::vector<std::string> bytes;
  for (char c : backend) {
    bytes.emplace_back(1, c);
  }
  EXPECT_EQ(run(params, bytes), whole) << "byte by byte";
  return whole;
}

TEST(BackendLoginTest, GreetingOkThenLoginOk) {
  Transcript t = runEverySplit(loginParams(),
                               "* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"
                               "A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
                               "* 3 EXISTS\r\n");
  EXPECT_EQ(t.sent, "A1 LOGIN \"alice\" \"secret\"\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "LoggedIn A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
  EXPECT_EQ(t.rest, "* 3 EXISTS\r\n");
  EXPECT_EQ(t.state, State::kDone);
}

TEST(BackendLoginTest, LoginNoIsRefused) {
  Transcript t = runEverySplit(loginParams(),
                               "* OK ready\r\n"
                               "A1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "Refused A1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
}

TEST(BackendLoginTest, GreetingByeFails) {
  Transcript t = runEverySplit(loginParams(), "* BYE Too many connections\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "Failed unexpected greeting '* BYE Too many connections'");
  EXPECT_EQ(t.sent, "");  // the secret never went out
}

TEST(BackendLoginTest, GreetingPreauthFails) {
  // PREAUTH would be someone's session, not the one being logged in.
  Transcript t = runEverySplit(loginParams(), "* PREAUTH logged in as bob\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "Failed unexpected greeting '* PREAUTH logged in as bob'");
  EXPECT_EQ(t.sent, "");
}

TEST(BackendLoginTest, StarttlsThenCapabilityThenLogin) {
  BackendLoginParams p = loginParams();
  p.starttls = true;
  // Bytes after STARTTLS's OK came in plaintext: dropped, never read as
  // the TLS session's.
  Transcript t =
      run(p, {"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
              "P0TLS OK Begin TLS\r\nA1 OK injected\r\n",
              "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nP0CAP OK done\r\n", "A1 OK Logged in\r\n"});
  EXPECT_EQ(t.sent, "P0TLS STARTTLS\r\nP0CAP CAPABILITY\r\nA1 LOGIN \"alice\" \"secret\"\r\n");
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[0], "StartTls ");
  EXPECT_EQ(t.events[1], "LoggedIn A1 OK Logged in\r\n");
}

TEST(BackendLoginTest, StarttlsStateAndCapabilitiesUnderTls) {
  BackendLoginParams p = loginParams();
  p.starttls = true;
  BackendLoginClient client(p);
  client.feed("* OK [CAPABILITY IMAP4rev1 STARTTLS OLD] ready\r\n");
  EXPECT_EQ(client.next().type, Type::kNeedMore);
  EXPECT_EQ(client.state(), State::kStarttls);
  client.feed("P0TLS OK go\r\n");
  EXPECT_EQ(client.next().type, Type::kStartTls);
  EXPECT_EQ(client.state(), State::kTlsHandshake);
  EXPECT_EQ(client.capabilities(), "");  // forgotten: they may differ under TLS
  client.clearOutput();
  client.tlsEstablished();
  EXPECT_EQ(client.output(), "P0CAP CAPABILITY\r\n");
  EXPECT_EQ(client.state(), State::kCapability);
  client.feed("* CAPABILITY IMAP4rev1 SASL-IR\r\nP0CAP OK\r\n");
  EXPECT_EQ(client.next().type, Type::kNeedMore);
  EXPECT_EQ(client.capabilities(), "IMAP4rev1 SASL-IR");
  EXPECT_EQ(client.state(), State::kLogin);
  EXPECT_TRUE(client.loginSent());
}

TEST(BackendLoginTest, StarttlsRefusedFails) {
  BackendLoginParams p = loginParams();
  p.starttls = true;
  Transcript t = runEverySplit(p, "* OK ready\r\nP0TLS NO not today\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "Failed STARTTLS refused 'P0TLS NO not today'");
  EXPECT_EQ(t.sent, "P0TLS STARTTLS\r\n");
}

TEST(BackendLoginTest, ForwardIdFirstARefusedIdIsNotFatal) {
  BackendLoginParams p = loginParams();
  p.id_command = "P0ID ID (\"x-session-id\" \"1\")\r\n";
  Transcript t = runEverySplit(p,
                               "* OK ready\r\n"
                               "P0ID NO unknown command\r\n"
                               "* CAPABILITY IMAP4rev1\r\n"
                               "A1 OK Logged in\r\n");
  EXPECT_EQ(t.sent, "P0ID ID (\"x-session-id\" \"1\")\r\nA1 LOGIN \"alice\" \"secret\"\r\n");
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[0], "Untagged * CAPABILITY IMAP4rev1\r\n");
  EXPECT_EQ(t.events[1], "LoggedIn A1 OK Logged in\r\n");
}

TEST(BackendLoginTest, IdWaitsForItsTaggedAnswer) {
  BackendLoginParams p = loginParams();
  p.id_command = "P0ID ID NIL\r\n";
  BackendLoginClient client(p);
  client.feed("* OK ready\r\n* ID NIL\r\n");
  EXPECT_EQ(client.next().type, Type::kNeedMore);
  EXPECT_EQ(client.state(), State::kId);
  EXPECT_FALSE(client.loginSent());
  EXPECT_EQ(client.output(), "P0ID ID NIL\r\n");
}

TEST(BackendLoginTest, AuthenticatePlainAnswersTheContinuation) {
  Transcript t = runEverySplit(authenticateParams(),
                               "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
                               "+ \r\n"
                               "A1 OK Logged in\r\n");
  EXPECT_EQ(t.sent, "A1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "LoggedIn A1 OK Logged in\r\n");
}

TEST(BackendLoginTest, AuthenticateWithSaslIrAnswersAChallengeEmpty) {
  // The response went with the command: a later challenge (XOAUTH2's error
  // JSON) gets an empty line, which brings the tagged NO.
  Transcript t = runEverySplit(authenticateParams(),
                               "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n"
                               "+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"
                               "A1 NO [AUTHENTICATIONFAILED] no\r\n");
  EXPECT_EQ(t.sent, "A1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "Refused A1 NO [AUTHENTICATIONFAILED] no\r\n");
}

TEST(BackendLoginTest, EmptySaslResponseIsSentAsEquals) {
  BackendLoginParams p = authenticateParams();
  p.sasl = "";
  Transcript t = run(p, {"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n"});
  EXPECT_EQ(t.sent, "A1 AUTHENTICATE PLAIN =\r\n");
}

TEST(BackendLoginTest, UnquotableLoginGoesAsSaslPlainOrLiterals) {
  BackendLoginParams p = loginParams();
  p.user = "j\xc3\xb6rg";
  Transcript plain = run(p, {"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n"});
  EXPECT_EQ(plain.sent, "A1 AUTHENTICATE PLAIN AGrDtnJnAHNlY3JldA==\r\n");
  Transcript literals = run(p, {"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"});
  EXPECT_EQ(literals.sent, "A1 LOGIN {5+}\r\nj\xc3\xb6rg {6+}\r\nsecret\r\n");
}

TEST(BackendLoginTest, ByeDuringLoginFails) {
  Transcript t = runEverySplit(loginParams(), "* OK ready\r\n* BYE shutting down\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "Failed BYE during login '* BYE shutting down'");
}

TEST(BackendLoginTest, OtherTagsDuringLoginAreIgnored) {
  Transcript t = runEverySplit(loginParams(), "* OK ready\r\nZZ OK not yours\r\nA1 OK yes\r\n");
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0], "LoggedIn A1 OK yes\r\n");
}

TEST(BackendLoginTest, TooMuchDataFails) {
  BackendLoginClient client(loginParams());
  client.feed("* OK ready\r\n");
  EXPECT_EQ(client.next().type, Type::kNeedMore);
  client.feed(std::string(BackendLoginClient::kMaxBytes, 'x'));
  BackendLoginEvent ev = client.next();
  EXPECT_EQ(ev.type, Type::kFailed);
  EXPECT_EQ(ev.why, "too much data during login");
}

// --- kProbe: the health probes' dialogue -------------------------------------

BackendLoginParams probeParams() {
  BackendLoginParams p = loginParams();
  p.profile = BackendLoginProfile::kProbe;
  p.tag = "p";
  return p;
}

TEST(BackendLoginTest, ProbeAsksCapabilitiesThenStarttlsThenLogsIn) {
  BackendLoginParams p = probeParams();
  p.starttls = true;
  p.password =
      "s\xc3\xa9"
      "cret";  // 8-bit bytes go quoted, as a probe always sent them
  Transcript t =
      run(p, {"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n",
              "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\np1 OK done\r\n",
              "p2 OK Begin TLS\r\n", "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\np3 OK done\r\n",
              "p4 OK Logged in\r\n* 1 EXISTS\r\n"});
  EXPECT_EQ(t.sent,
            "p1 CAPABILITY\r\np2 STARTTLS\r\np3 CAPABILITY\r\n"
            "p4 LOGIN \"alice\" \"s\xc3\xa9"
            "cret\"\r\n");
  const std::vector<std::string> events = {
      "Step * OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n", "Step p1 OK done\r\n",
      "StartTls ", "Step p3 OK done\r\n", "LoggedIn p4 OK Logged in\r\n"};
  EXPECT_EQ(t.events, events);
  EXPECT_EQ(t.rest, "* 1 EXISTS\r\n");
}

TEST(BackendLoginTest, ProbeWithoutLoginOrPreauthIsReadyAfterCapabilities) {
  BackendLoginParams p = probeParams();
  p.method = BackendLoginMethod::kNone;
  Transcript t = runEverySplit(p, "* OK ready\r\np1 OK done\r\n* 2 EXISTS\r\n");
  EXPECT_EQ(t.sent, "p1 CAPABILITY\r\n");
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[1], "Ready p1 OK done\r\n");
  EXPECT_EQ(t.rest, "* 2 EXISTS\r\n");

  p = probeParams();
  p.tag_count = 4;  // a retry goes on counting
  t = runEverySplit(p, "* PREAUTH [CAPABILITY IMAP4rev1] hi\r\np5 OK done\r\n");
  EXPECT_EQ(t.sent, "p5 CAPABILITY\r\n");  // no LOGIN after PREAUTH
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[1], "Ready p5 OK done\r\n");
}

TEST(BackendLoginTest, ProbeFailuresReadAsAProbes) {
  Transcript t = runEverySplit(probeParams(), "* BAD go away\r\n");
  EXPECT_EQ(t.events, std::vector<std::string>{"Failed unexpected greeting: BAD go away"});
  t = runEverySplit(probeParams(), "* OK hi\r\n* BYE shutting down\r\n");
  EXPECT_EQ(t.events.back(), "Failed server said BYE shutting down");
  t = runEverySplit(probeParams(), "* OK hi\r\np9 OK what\r\n");
  EXPECT_EQ(t.events.back(), "Failed unexpected tagged response: p9 OK what");
  t = runEverySplit(probeParams(), "* OK hi\r\np1 NO not now\r\n");
  EXPECT_EQ(t.events.back(), "Refused p1 NO not now\r\n");
  t = runEverySplit(probeParams(), "* OK hi\r\n+ go on\r\n");
  EXPECT_EQ(t.events.back(), "Failed unexpected continuation request");
  EXPECT_EQ(t.sent, "p1 CAPABILITY\r\n");  // the secret never went out
}

TEST(BackendLoginTest, ProxyV2HeaderForIpv4) {
  sockaddr_storage src{};
  sockaddr_storage dst{};
  auto* s = reinterpret_cast<sockaddr_in*>(&src);
  auto* d = reinterpret_cast<sockaddr_in*>(&dst);
  s->sin_family = d->sin_family = AF_INET;
  s->sin_addr.s_addr = htonl(0x7f000001);
  d->sin_addr.s_addr = htonl(0x7f000002);
  s->sin_port = htons(40000);
  d->sin_port = htons(143);
  std::string h = proxyV2Header(src, dst);
  ASSERT_EQ(h.size(), 16u + 12u);
  EXPECT_EQ(h.substr(0, 12), std::string("\r\n\r\n\0\r\nQUIT\n", 12));
  EXPECT_EQ(h.substr(12, 4), std::string("\x21\x11\x00\x0c", 4));
  EXPECT_EQ(h.substr(16, 8), std::string("\x7f\x00\x00\x01\x7f\x00\x00\x02", 8));
  EXPECT_EQ(h.substr(24), std::string("\x9c\x40\x00\x8f", 4));
}

}  // namespace
}  // namespace portico::parser
