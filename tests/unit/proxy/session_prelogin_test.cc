// Session before login (session_testing.h): the greeting, CAPABILITY, NOOP,
// ID, LOGOUT and unknown commands, refusals that leave the session usable,
// ID within RFC 2971 and UTF-8 in quoted strings.

#include "session/session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "proxy/session_testing.h"

namespace portico::proxy {
namespace {

using namespace session_testing;

// ---------------------------------------------------------------------------
// Pre-login.

TEST_F(SessionTest, GreetingAdvertisesCapabilitiesOnStart) {
  Config cfg = baseConfig();
  cfg.greeting = "Hello from the test";
  start(cfg);
  EXPECT_THAT(greeting_, StartsWith("* OK [CAPABILITY IMAP4rev1 "));
  EXPECT_THAT(greeting_, HasSubstr(" AUTH=PLAIN"));
  EXPECT_THAT(greeting_, EndsWith("] Hello from the test\r\n"));
  EXPECT_EQ(lines(greeting_).size(), 1u);
  EXPECT_EQ(state(), SessionState::kPrelogin);
  EXPECT_EQ(client_->handler(), session_);
  EXPECT_EQ(client_->highWatermark(), config().limits.write_high_watermark);
  EXPECT_FALSE(client_->paused());
  EXPECT_EQ(host_.stats().connections_unauthenticated.get(), 1u);
  EXPECT_EQ(host_.loop().armedTimers(), 1u);
  EXPECT_THAT(host_.connects(), IsEmpty());
}

TEST_F(SessionTest, CapabilityNoopIdAnsweredWithTheClientsTag) {
  start();
  client_->deliver("c1 CAPABILITY\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* CAPABILITY IMAP4rev1 "), StartsWith("c1 OK ")));
  client_->deliver("c2 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("c2 OK ")));
  client_->deliver("c3 ID (\"name\" \"mutt\" \"version\" \"2.2\")\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* ID (\"name\" \"Portico\""), StartsWith("c3 OK ")));
  client_->deliver("c4 id nil\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* ID "), StartsWith("c4 OK ")));
  EXPECT_EQ(state(), SessionState::kPrelogin);
  EXPECT_THAT(host_.connects(), IsEmpty());
}

TEST_F(SessionTest, PreloginAnswersWhateverTheSplit) {
  start();
  client_->deliverBytewise("d1 NOOP\r");
  EXPECT_EQ(client_->takeWritten(), "");
  client_->deliverBytewise("\nd2 CAPABILITY\r\nd3 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("d1 OK "), StartsWith("* CAPABILITY "), StartsWith("d2 OK "),
                          StartsWith("d3 OK ")));
  // Pipelined in one read.
  client_->deliver("d4 NOOP\r\nd5 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("d4 OK "), StartsWith("d5 OK ")));
}

TEST_F(SessionTest, LogoutSaysByeAndEndsAfterTheClientCloses) {
  start();
  client_->deliver("c4 LOGOUT\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* BYE "), StartsWith("c4 OK ")));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_EQ(state(), SessionState::kClosing);
  EXPECT_FALSE(ended()) << "ended before the client's onClosed()";
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, EachEndReasonIsLoggedAndCountedOnce) {
  start();
  client_->deliver("c4 LOGOUT\r\n");
  host_.runPending();
  ASSERT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(log_.text(), HasSubstr("reason=\"client logout\""));
  EXPECT_EQ(host_.stats().ended_client_logout.get(), 1u);
  EXPECT_EQ(host_.stats().ended_client_closed.get(), 0u);
  EXPECT_EQ(host_.stats().ended_closed.get(), 0u);
}

TEST_F(SessionTest, ClientCloseIsCountedWithTheTransportsWords) {
  start();
  client_->peerClose();
  host_.runPending();
  ASSERT_EQ(host_.endedCount(), 1);
  EXPECT_EQ(host_.stats().ended_client_closed.get(), 1u);
  EXPECT_THAT(log_.text(), HasSubstr("reason=\"end of stream\""))
      << "the transport's words say more than the reason's name";
}

TEST_F(SessionTest, UnknownCommandBeforeLoginGetsTaggedBad) {
  start();
  client_->deliver("c5 SELECT INBOX\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("c5 BAD ")));
  client_->deliver("c6 FROBNICATE now\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("c6 BAD ")));
  EXPECT_EQ(state(), SessionState::kPrelogin);
  EXPECT_FALSE(client_->shutdownCalled());
  EXPECT_EQ(host_.stats().prelogin_bad_commands.get(), 2u);
  EXPECT_THAT(host_.connects(), IsEmpty());
}

TEST_F(SessionTest, TooManyBadCommandsInARowSayBye) {
  Config cfg = baseConfig();
  cfg.limits.max_bad_commands = 3;
  start(cfg);
  client_->deliver("b1 XX\r\nb2 XX\r\nb3 NOOP\r\nb4 XX\r\nb5 XX\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("b1 BAD "), StartsWith("b2 BAD "), StartsWith("b3 OK "),
                          StartsWith("b4 BAD "), StartsWith("b5 BAD ")));
  EXPECT_FALSE(client_->shutdownCalled()) << "a good command resets the count";
  client_->deliver("b6 XX\r\nb7 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("b6 BAD "), "* BYE Too many invalid commands"));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_TRUE(client_->paused());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

// ---------------------------------------------------------------------------
// Refusals before login leave the session usable (issue 9, defect 4).

TEST_F(SessionTest, RefusedCommandsLeaveTheNextLineACommand) {
  start();
  const std::vector<std::pair<std::string, std::string>> refusals = {
      {"a1 AUTHENTICATE PLAIN dXNlcg\r\n", "a1 BAD Invalid base64 in initial response"},
      {"a2 AUTHENTICATE PLAIN dXNlcg== extra\r\n", "a2 BAD Extra arguments"},
      {"a3 AUTHENTICATE PLAIN {8}\r\n", "a3 BAD "},  // refused before its body: no "+"
      {"a4 AUTHENTICATE PLAIN {8+}\r\nAHVzZXIA\r\n", "a4 BAD Invalid initial response"},
      {"a5 AUTHENTICATE CRAM-MD5\r\n", "a5 NO "},
      {"a6 AUTHENTICATE\r\n", "a6 BAD Missing SASL mechanism"},
      {"i1 IDLE\r\n", "i1 BAD Command not allowed before login"},
      {"s1 STARTTLS\r\n", "s1 BAD "},
      {"x1 SELECT {5}\r\n", "x1 BAD Command not allowed before login"},
      {"x2 NOOP {5}\r\n", "x2 BAD Extra arguments"},
      {"d1 ID (\"name\" {1025}\r\n", "d1 BAD ID field value too long"},
  };
  for (bool bytewise : {false, true}) {
    for (std::size_t i = 0; i < refusals.size(); ++i) {
      const auto& [input, answer] = refusals[i];
      SCOPED_TRACE(input + (bytewise ? " (byte by byte)" : ""));
      const std::string next = "n" + std::to_string(i);
      const std::string both = input + next + " NOOP\r\n";  // pipelined
      bytewise ? client_->deliverBytewise(both) : client_->deliver(both);
      EXPECT_THAT(lines(client_->takeWritten()),
                  ElementsAre(StartsWith(answer), StartsWith(next + " OK ")));
    }
  }
  EXPECT_EQ(state(), SessionState::kPrelogin);
  EXPECT_FALSE(client_->shutdownCalled());
  EXPECT_THAT(host_.connects(), IsEmpty());
  // A login still works.
  client_->deliver("a7 AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ \r\n");
  client_->deliver(std::string(kPlainAliceSecret) + "\r\n");
  ASSERT_EQ(host_.connects().size(), 1u);
}

TEST_F(SessionTest, IdleRefusedBeforeLoginThenDoneIsAnOrdinaryLine) {
  start();
  client_->deliver("i1 IDLE\r\nDONE\r\nn1 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("i1 BAD "), StartsWith("DONE BAD "), StartsWith("n1 OK ")));
}

TEST_F(SessionTest, LoginIsRefusedAtItsFirstLiteralWhenTlsIsRequired) {
  start(baseConfig(), true);
  // The password never crosses the wire in the clear: no "+" invites it.
  client_->deliver("l1 LOGIN alice {6}\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("l1 NO [PRIVACYREQUIRED]")));
  client_->deliver("l2 LOGIN {5}\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("l2 NO [PRIVACYREQUIRED]")));
  client_->deliver("l3 LOGIN alice secret\r\nn1 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("l3 NO [PRIVACYREQUIRED]"), StartsWith("n1 OK ")));
  EXPECT_THAT(host_.connects(), IsEmpty());
  EXPECT_FALSE(client_->shutdownCalled());
}

// ---------------------------------------------------------------------------
// ID within RFC 2971 (issue 9, defect 9).

std::string idCommand(const std::string& tag, const std::string& field, const std::string& value,
                      std::size_t pairs) {
  std::string line = tag + " ID (";
  for (std::size_t i = 0; i < pairs; ++i) {
    line += (i ? " \"" : "\"") + field + "\" \"" + value + "\"";
  }
  return line + ")\r\n";
}

TEST_F(SessionTest, IdWithinRfc2971LimitsIsAnsweredWhateverItsEncoding) {
  start();
  ASSERT_EQ(config().limits.prelogin_max_line, 8192u);
  // 30 pairs of 30- and 1024-octet strings: about 31 KiB on one line.
  client_->deliver(idCommand("d1", std::string(30, 'k'), std::string(1024, 'v'), 30));
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* ID (\"name\" \"Portico\""), StartsWith("d1 OK ")));
  // The longest: a 64-byte tag, every octet escaped (about 62 KiB), byte by byte.
  const std::string tag(64, 't');
  client_->deliverBytewise(idCommand(tag, std::string(60, '\\'), std::string(2048, '\\'), 30));
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("* ID "), StartsWith(tag)));
  // As synchronizing literals, each invited.
  std::string pairs;
  for (int i = 0; i < 30; ++i) {
    client_->deliver((i == 0 ? "d3 ID (" : " ") + std::string("{30}\r\n"));
    EXPECT_EQ(client_->takeWritten(), "+ Ready for literal data\r\n");
    client_->deliver(std::string(30, 'k') + " {1024}\r\n");
    EXPECT_EQ(client_->takeWritten(), "+ Ready for literal data\r\n");
    client_->deliver(std::string(1024, 'v'));
  }
  client_->deliver(")\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* ID "), StartsWith("d3 OK ")));
  EXPECT_FALSE(client_->shutdownCalled());
}

TEST_F(SessionTest, IdHeldWholeEvenWhenPreloginLimitsAreSmall) {
  Config cfg = baseConfig();
  cfg.limits.prelogin_max_line = 1024;
  cfg.limits.prelogin_max_literal = 1024;  // other commands: 4 KiB at most
  start(cfg);
  std::string id = "d1 ID (";
  for (int i = 0; i < 30; ++i) {
    id += (i ? " " : "") + std::string("\"f") + std::to_string(i) + "\" {1024+}\r\n" +
          std::string(1024, 'v');
  }
  id += ")\r\n";
  // In two reads, so that about 16 KiB of it wait for the rest.
  client_->deliver(id.substr(0, id.size() / 2));
  EXPECT_EQ(client_->takeWritten(), "");
  client_->deliver(id.substr(id.size() / 2));
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("* ID "), StartsWith("d1 OK ")));
  // Any other command is held up to 2 lines and 2 literals (4 KiB here).
  std::string login = "l1 LOGIN";
  for (int i = 0; i < 5; ++i) {
    login += " {1000+}\r\n" + std::string(1000, 'x');
  }
  client_->deliver(login);
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("* BAD Command too long", "* BYE Command too long"));
}

TEST_F(SessionTest, IdBeyondRfc2971LimitsGetsBadAndTheSessionGoesOn) {
  start();
  const std::string k30(30, 'k');
  const std::string v1024(1024, 'v');
  client_->deliver(idCommand("e1", k30, v1024, 31) + "n1 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("e1 BAD Too many ID fields", StartsWith("n1 OK ")));
  client_->deliver(idCommand("e2", k30, v1024 + "v", 30) + "n2 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("e2 BAD ID field value too long", StartsWith("n2 OK ")));
  client_->deliver(idCommand("e3", k30 + "k", "v", 1) + "n3 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("e3 BAD ID field name too long", StartsWith("n3 OK ")));
  EXPECT_FALSE(client_->shutdownCalled());
  // Longer than any RFC 2971 ID can be: not read on, like any over-long line.
  client_->deliver(idCommand("e4", k30, v1024, 70));
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("e4 BAD Line too long", "* BYE Line too long"));
  EXPECT_TRUE(client_->shutdownCalled());
}

// ---------------------------------------------------------------------------
// UTF-8 in quoted strings (issue 9, defect 10).

TEST_F(SessionTest, Utf8LoginIsReplayedWithTheSameBytes) {
  start();
  const std::string user = "j\xc3\xb6rg";
  const std::string password = "p\xc3\xa4ss \xe2\x82\xac\xf0\x9f\x94\x91";
  client_->deliver("a1 LOGIN \"" + user + "\" \"" + password + "\"\r\n");
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr) << client_->takeWritten();
  EXPECT_EQ(session_->user(), user);
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  // SASL PLAIN (RFC 4616 is UTF-8) carries the same bytes to any server.
  EXPECT_EQ(
      backend->takeWritten(),
      "a1 AUTHENTICATE PLAIN " + parser::encodeBase64("\0"s + user + "\0"s + password) + "\r\n");
  backend->deliver("a1 NO [AUTHENTICATIONFAILED] no\r\n");
  host_.advance(2s);
  client_->takeWritten();
  // Without SASL-IR: LOGIN with literals, byte for byte.
  client_->deliver("a2 LOGIN \"" + user + "\" \"" + password + "\"\r\n");
  backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingNoSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a2 LOGIN {5+}\r\n" + user + " {13+}\r\n" + password + "\r\n");
  backend->deliver("a2 OK Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(), "a2 OK Logged in\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
}

TEST_F(SessionTest, MalformedUtf8InAQuotedStringGetsBad) {
  start();
  client_->deliver("a1 LOGIN \"j\xffrg\" \"pw\"\r\na2 LOGIN \"\xed\xa0\x80\" pw\r\nn1 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("a1 BAD Invalid UTF-8 in quoted string",
                          "a2 BAD Invalid UTF-8 in quoted string", StartsWith("n1 OK ")));
  EXPECT_THAT(host_.connects(), IsEmpty());
}

}  // namespace
}  // namespace portico::proxy
