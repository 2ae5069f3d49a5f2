// How a session ends (session_testing.h): backend and client closes,
// protocol errors, kick and abort, the idle and pre-login timeouts, and
// shutdown before, between and during commands.

#include "session/session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "proxy/session_testing.h"

namespace portico::proxy {
namespace {

using namespace session_testing;

// ---------------------------------------------------------------------------
// Ends.

TEST_F(SessionTest, BackendCloseSaysUnavailableAndEndsOnce) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1:* FLAGS\r\n");
  backend->peerClose("connection reset");
  host_.loop().runPending(1);
  EXPECT_EQ(client_->takeWritten(), "* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n");
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_EQ(host_.endedCount(), 0) << "the client has not closed yet";
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(log_.text(), HasSubstr("closed the connection (connection reset)"));
}

TEST_F(SessionTest, BackendCloseMidLiteralEndsWithoutProtocolText) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1 BODY[]\r\n");
  const std::string partial = "* 1 FETCH (BODY[] {100}\r\nSubject: half";
  backend->deliver(partial);
  backend->peerClose("connection reset");
  host_.runPending();
  EXPECT_EQ(client_->takeWritten(), partial) << "no BYE inside the message body";
  EXPECT_EQ(client_->writtenAfterClose(), "");
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_EQ(host_.endedCount(), 1);
  EXPECT_EQ(commandStats(CommandId::kFETCH).count.get(), 0u);
  EXPECT_EQ(backendStats(relay_backend_).responses_cut.get(), 1u);
  EXPECT_THAT(log_.text(), HasSubstr("in the middle of a response"));
}

TEST_F(SessionTest, KickMidResponseWritesNoBye) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1 FLAGS\r\n");
  backend->deliver("* 1 FETCH (FLAGS (\\Seen");  // mid-line
  session_->kick();
  host_.runPending();
  EXPECT_EQ(client_->takeWritten(), "* 1 FETCH (FLAGS (\\Seen");
  EXPECT_EQ(backendStats(relay_backend_).responses_cut.get(), 1u);
}

TEST_F(SessionTest, ProtocolErrorInANewChunkMidLiteralWritesNoBye) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1 BODY[]\r\n");
  backend->deliver("* 1 FETCH (BODY[] {5}\r\nab");
  backend->deliver("cde {99999999999999999999999999}\r\n");  // an unskippable literal
  host_.runPending();
  EXPECT_EQ(client_->takeWritten(), "* 1 FETCH (BODY[] {5}\r\nab");
  EXPECT_EQ(backendStats(relay_backend_).responses_cut.get(), 1u);
}

TEST_F(SessionTest, ProtocolErrorAtAResponseBoundarySaysBye) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1 BODY[]\r\n");
  backend->deliver("* 1 FETCH (FLAGS ())\r\n");
  backend->deliver("* 2 FETCH (BODY[] {99999999999999999999999999}\r\n");
  host_.runPending();
  EXPECT_EQ(client_->takeWritten(),
            "* 1 FETCH (FLAGS ())\r\n* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n");
  EXPECT_EQ(backendStats(relay_backend_).responses_cut.get(), 0u);
}

TEST_F(SessionTest, ClientCloseClosesTheBackendThenEnds) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1:* FLAGS\r\n");
  client_->peerClose();
  host_.loop().runPending(1);
  EXPECT_TRUE(backend->closeCalled());
  EXPECT_EQ(state(), SessionState::kClosing);
  EXPECT_EQ(host_.endedCount(), 0) << "the backend has not closed yet";
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ClientCloseWhileConnectingOrDelayedEnds) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  client_->peerClose();
  host_.runPending();
  EXPECT_TRUE(backend->closed());
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, BackendLogoutEndsWithoutAnotherBye) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("l1 LOGOUT\r\n");
  backend->deliver("* BYE Logging out\r\nl1 OK Logout completed\r\n");
  backend->peerClose();
  host_.runPending();
  EXPECT_EQ(client_->written().substr(client_->written().find("* BYE")),
            "* BYE Logging out\r\nl1 OK Logout completed\r\n");
  EXPECT_EQ(commandStats(CommandId::kLOGOUT).count.get(), 1u);
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, AbortClosesBothSides) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  session_->abort(EndReason::kKicked);
  EXPECT_TRUE(client_->closeCalled());
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(log_.text(), HasSubstr("reason=\"kicked\""));
}

TEST_F(SessionTest, KickSaysByeAndEnds) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  session_->kick();
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("* BYE [UNAVAILABLE] ")));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(log_.text(), HasSubstr("reason=\"kicked\""));
}

TEST_F(SessionTest, IdleTimeoutCountsFromTheLastClientActivity) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  host_.advance(20min);
  client_->deliver("a2 NOOP\r\n");
  backend->deliver("a2 OK\r\n");
  host_.advance(15min);
  backend->deliver("* 2 EXISTS\r\n");  // backend chatter is not client activity
  host_.advance(15min - 1ms);
  EXPECT_FALSE(client_->shutdownCalled()) << "30 min after the NOOP is not yet over 30 min";
  host_.advance(2ms);
  EXPECT_THAT(client_->takeWritten(), EndsWith("* BYE Disconnected for inactivity.\r\n"));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_TRUE(backend->closed());
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ServerChatterDuringIdleKeepsTheSession) {
  Config cfg = baseConfig();
  cfg.timeouts.idle = 1min;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("i1 IDLE\r\n");
  backend->deliver("+ idling\r\n");
  for (int i = 0; i < 5; ++i) {
    host_.advance(40s);
    backend->deliver("* OK Still here\r\n");
  }
  EXPECT_FALSE(client_->shutdownCalled());
  client_->deliver("DONE\r\n");
  backend->deliver("i1 OK done\r\n");
  host_.advance(1min + 1ms);
  EXPECT_TRUE(client_->shutdownCalled());
}

TEST_F(SessionTest, PreloginTimeoutCountsFromConnect) {
  start();
  host_.advance(30s);
  client_->deliver("n1 NOOP\r\n");
  client_->takeWritten();
  host_.advance(config().timeouts.prelogin - 30s - 1ms);
  EXPECT_FALSE(client_->shutdownCalled());
  host_.advance(2ms);
  EXPECT_EQ(client_->takeWritten(), "* BYE Disconnected for inactivity during login.\r\n");
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ShutdownBeforeLoginSaysByeAtOnce) {
  start();
  session_->requestBye("Server shutting down.", EndReason::kShutdown);
  EXPECT_EQ(client_->takeWritten(), "* BYE Server shutting down.\r\n");
  EXPECT_TRUE(client_->shutdownCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ShutdownBetweenCommandsSaysByeAtOnce) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  session_->requestBye("Server shutting down.", EndReason::kShutdown);
  EXPECT_EQ(client_->takeWritten(), "* BYE Server shutting down.\r\n");
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ShutdownDuringACommandWaitsForItsTaggedReply) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("s1 FETCH 1:* FLAGS\r\n");
  session_->requestBye("Server shutting down.", EndReason::kShutdown);
  EXPECT_EQ(client_->takeWritten(), "");
  backend->deliver("* 1 FETCH (FLAGS ())\r\n");
  EXPECT_EQ(client_->takeWritten(), "* 1 FETCH (FLAGS ())\r\n");
  EXPECT_FALSE(client_->shutdownCalled());
  backend->deliver("s1 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "s1 OK done\r\n* BYE Server shutting down.\r\n");
  EXPECT_TRUE(client_->shutdownCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ShutdownDuringIdleOrLoginSaysByeWhenDone) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  session_->requestBye("Server shutting down.", EndReason::kShutdown);
  EXPECT_FALSE(client_->shutdownCalled()) << "the login finishes first";
  backend->deliver("a1 OK Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(), "a1 OK Logged in\r\n* BYE Server shutting down.\r\n");
  EXPECT_TRUE(client_->shutdownCalled());
}

TEST_F(SessionTest, ShutdownDuringAFailingLoginSaysByeAfterTheAnswer) {
  start();
  client_->deliver("a1 LOGIN alice wrong\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  session_->requestBye("Server shutting down.", EndReason::kShutdown);
  EXPECT_FALSE(client_->shutdownCalled()) << "the login finishes first";
  backend->deliver("a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
  host_.advance(config().limits.login_failure_delay + 1ms);
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre("a1 NO [AUTHENTICATIONFAILED] Invalid credentials",
                          "* BYE Server shutting down."));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ShutdownDuringIdleSaysByeAtOnce) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("i1 IDLE\r\n");
  backend->deliver("+ idling\r\n");
  client_->takeWritten();
  session_->requestBye("Server shutting down.", EndReason::kShutdown);
  EXPECT_EQ(client_->takeWritten(), "* BYE Server shutting down.\r\n");
  EXPECT_TRUE(client_->shutdownCalled());
}

}  // namespace
}  // namespace portico::proxy
