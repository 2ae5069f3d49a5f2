// Session login (session_testing.h): LOGIN replay with routing, retries and
// delays, the PROXY header and forwarded ID, AUTHENTICATE PLAIN, and the
// password never reaching the client, the log or the protocol log.

#include "session/session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "portico/protocol_log.h"
#include "protocol_trace.h"
#include "proxy/session_testing.h"
#include "status_testing.h"

namespace portico::proxy {
namespace {

using namespace session_testing;

// ---------------------------------------------------------------------------
// LOGIN and routing.

TEST_F(SessionTest, LoginReplaysCredentialsToTheFirstCandidate) {
  start();
  const std::vector<std::string> order = candidates("alice");
  client_->deliver("a1 LOGIN alice secret\r\n");
  ASSERT_EQ(host_.connects().size(), 1u);
  EXPECT_EQ(host_.connects()[0].backend, order[0]);
  EXPECT_EQ(state(), SessionState::kConnecting);
  EXPECT_TRUE(client_->paused()) << "no client reading while the login is replayed";
  EXPECT_EQ(client_->takeWritten(), "");

  FakeTransport* backend = host_.lastBackend();
  EXPECT_EQ(backend->handler(), session_);
  backend->connectOk();
  EXPECT_EQ(state(), SessionState::kBackendGreeting);
  EXPECT_EQ(backend->highWatermark(), config().limits.write_high_watermark);
  EXPECT_EQ(backend->takeWritten(), "") << "nothing is sent before the greeting";

  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  EXPECT_EQ(state(), SessionState::kBackendLogin);
  EXPECT_EQ(client_->takeWritten(), "");

  backend->deliver("a1 OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(), "a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
  EXPECT_FALSE(client_->paused());
  EXPECT_EQ(session_->user(), "alice");
  EXPECT_EQ(session_->backendName(), order[0]);
  EXPECT_EQ(backendStats(order[0]).sessions_current.get(), 1u);
  EXPECT_EQ(backendStats(order[0]).sessions_total.get(), 1u);
  EXPECT_EQ(host_.stats().connections_unauthenticated.get(), 0u);
  // Counted under the configured stats slot, not the backend's index.
  EXPECT_EQ(host_.stats().backends[indexOf(order[0])].load(), nullptr);
}

TEST_F(SessionTest, LoginForwardsUntaggedLinesWithoutCompressOnSuccess) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->deliver("* CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE\r\n");
  EXPECT_EQ(client_->takeWritten(), "") << "held until the login succeeds";
  backend->deliver("a1 OK Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(), "* CAPABILITY IMAP4rev1 IDLE\r\na1 OK Logged in\r\n");
}

TEST_F(SessionTest, BytesAroundTheLoginAreRelayedAfterIt) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\na2 SELECT INBOX\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  client_->deliver("a3 NOOP\r\n");  // held by the paused transport
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  backend->deliver("a1 OK Logged in\r\n* 1 EXISTS\r\n");
  host_.runPending();
  EXPECT_EQ(client_->takeWritten(), "a1 OK Logged in\r\n* 1 EXISTS\r\n");
  EXPECT_EQ(backend->takeWritten(), "a2 SELECT INBOX\r\na3 NOOP\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 2u);
}

TEST_F(SessionTest, AQuietSessionGivesItsFramersBuffersBackAndRelaysOnAfterwards) {
  start();
  EXPECT_FALSE(
      session_->releaseIdleBuffers(host_.now() + std::chrono::hours(1), std::chrono::seconds(10)))
      << "nothing was ever allocated before the first byte";
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->takeWritten();
  backend->deliver("a1 OK Logged in\r\n");
  host_.runPending();
  client_->takeWritten();
  client_->deliver("a2 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "a2 NOOP\r\n");
  const auto quiet = std::chrono::seconds(10);
  EXPECT_FALSE(session_->releaseIdleBuffers(host_.now() + quiet, quiet))
      << "a command is in flight";
  backend->deliver("a2 OK NOOP completed\r\n");
  EXPECT_EQ(client_->takeWritten(), "a2 OK NOOP completed\r\n");
  EXPECT_FALSE(session_->releaseIdleBuffers(host_.now() + quiet / 2, quiet))
      << "not quiet long enough";
  EXPECT_TRUE(session_->releaseIdleBuffers(host_.now() + quiet, quiet));
  EXPECT_FALSE(session_->releaseIdleBuffers(host_.now() + quiet, quiet))
      << "nothing left to release";
  // The next command and its answer are framed and accounted as before.
  client_->deliver("a3 SELECT INBOX\r\n");
  EXPECT_EQ(backend->takeWritten(), "a3 SELECT INBOX\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u);
  backend->deliver("* 1 EXISTS\r\na3 OK [READ-WRITE] SELECT completed\r\n");
  EXPECT_EQ(client_->takeWritten(), "* 1 EXISTS\r\na3 OK [READ-WRITE] SELECT completed\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
}

TEST_F(SessionTest, LoginQuotesSpecialsAndFallsBackForUnquotableBytes) {
  start();
  client_->deliver("a1 LOGIN \"alice\" \"pa\\\"ss\\\\word\"\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"alice\" \"pa\\\"ss\\\\word\"\r\n");
  backend->deliver("a1 NO bad\r\n");
  host_.advance(2s);
  client_->takeWritten();

  // 8-bit password: AUTHENTICATE PLAIN when the backend has SASL-IR...
  client_->deliver("a2 LOGIN alice {5+}\r\np\xc3\xa4ss\r\n");
  backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a2 AUTHENTICATE PLAIN AGFsaWNlAHDDpHNz\r\n");
  backend->deliver("a2 NO bad\r\n");
  host_.advance(3s);
  client_->takeWritten();

  // ... else LOGIN with non-synchronizing literals.
  client_->deliver("a3 LOGIN alice {5+}\r\np\xc3\xa4ss\r\n");
  backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingNoSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a3 LOGIN {5+}\r\nalice {5+}\r\np\xc3\xa4ss\r\n");
}

TEST_F(SessionTest, FailedLoginIsAnsweredAfterTheDelayAndMayBeRetried) {
  start();
  FakeTransport* first = refusedLogin("a1");
  EXPECT_TRUE(first->closed());
  EXPECT_EQ(state(), SessionState::kLoginDelay);
  EXPECT_TRUE(client_->paused());
  client_->deliver("a2 NOOP\r\n");  // pipelined during the delay
  EXPECT_EQ(client_->takeWritten(), "");
  host_.advance(999ms);
  EXPECT_EQ(client_->takeWritten(), "") << "answered before login_failure_delay";
  host_.advance(2ms);  // also runs the next iteration: the held NOOP is read
  EXPECT_THAT(
      lines(client_->takeWritten()),
      ElementsAre("a1 NO [AUTHENTICATIONFAILED] Invalid credentials", StartsWith("a2 OK ")));
  EXPECT_EQ(state(), SessionState::kPrelogin);
  EXPECT_FALSE(client_->paused());
  EXPECT_EQ(backendStats(host_.connects()[0].backend).login_failures.get(), 1u);

  client_->deliver("a3 LOGIN alice secret\r\n");
  ASSERT_EQ(host_.connects().size(), 2u);
  FakeTransport* second = host_.lastBackend();
  EXPECT_NE(second, first);
  second->connectOk();
  second->deliver(kGreetingSaslIr);
  EXPECT_EQ(second->takeWritten(), "a3 LOGIN \"alice\" \"secret\"\r\n");
  second->deliver("a3 OK Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(), "a3 OK Logged in\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
}

TEST_F(SessionTest, LoginWithSynchronizingLiteralsAndBytewiseBackend) {
  start();
  client_->deliver("a1 LOGIN {5}\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("+ ")));
  client_->deliver("alice {6}\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("+ ")));
  EXPECT_THAT(host_.connects(), IsEmpty());
  client_->deliver("secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr);
  backend->connectOk();
  backend->deliverBytewise(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  backend->deliverBytewise("* CAPABILITY IMAP4rev1 IDLE\r\na1 OK Logged in\r\n* 2 EXISTS\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
  EXPECT_EQ(client_->takeWritten(),
            "* CAPABILITY IMAP4rev1 IDLE\r\na1 OK Logged in\r\n* 2 EXISTS\r\n");
}

TEST_F(SessionTest, OverlongLineBeforeLoginEndsTheSession) {
  Config cfg = baseConfig();
  cfg.limits.prelogin_max_line = 100;
  start(cfg);
  client_->deliver("a1 NOOP " + std::string(200, 'x') + "\r\n");
  std::vector<std::string> out = lines(client_->takeWritten());
  ASSERT_FALSE(out.empty());
  EXPECT_THAT(out.front(), StartsWith("a1 BAD "));
  EXPECT_THAT(out.back(), StartsWith("* BYE "));
  EXPECT_TRUE(client_->shutdownCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ClientCloseDuringTheLoginDelayEnds) {
  start();
  refusedLogin("a1");
  EXPECT_EQ(state(), SessionState::kLoginDelay);
  client_->peerClose();
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
  host_.advance(10s);  // the delay timer went with the session
  EXPECT_THAT(host_.violations(), IsEmpty());
}

TEST_F(SessionTest, LoginDelayDoublesAndTooManyFailuresSayBye) {
  Config cfg = baseConfig();
  cfg.limits.max_login_failures = 3;
  start(cfg);
  refusedLogin("a1");
  host_.advance(1001ms);
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a1 NO ")));
  refusedLogin("a2");
  host_.advance(1500ms);
  EXPECT_EQ(client_->takeWritten(), "") << "the second delay is twice the first";
  host_.advance(501ms);
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a2 NO ")));
  refusedLogin("a3");
  EXPECT_THAT(lines(client_->takeWritten()),
              ElementsAre(StartsWith("a3 NO "), "* BYE Too many failed login attempts."));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, ConnectFailureTriesTheNextCandidate) {
  start();
  const std::vector<std::string> order = candidates("alice");
  client_->deliver("a1 LOGIN alice secret\r\n");
  host_.connects()[0].transport->connectFail("connection refused");
  EXPECT_EQ(host_.connects().size(), 1u) << "the next candidate waits for onClosed()";
  host_.runPending();
  ASSERT_EQ(host_.connects().size(), 2u);
  EXPECT_EQ(host_.connects()[1].backend, order[1]);
  EXPECT_EQ(backendStats(order[0]).connect_failures.get(), 1u);
  EXPECT_THAT(log_.text(), HasSubstr("connect failed: connection refused"));

  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->deliver("a1 OK Logged in\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
  EXPECT_EQ(session_->backendName(), order[1]);
  EXPECT_EQ(client_->takeWritten(), "a1 OK Logged in\r\n");
}

TEST_F(SessionTest, NoCandidateReachableGivesUnavailable) {
  start();
  const std::vector<std::string> order = candidates("alice");
  client_->deliver("a1 LOGIN alice secret\r\n");
  for (std::size_t i = 0; i < kBackends; ++i) {
    ASSERT_EQ(host_.connects().size(), i + 1);
    EXPECT_EQ(host_.connects()[i].backend, order[i]);
    host_.connects()[i].transport->connectFail();
    host_.runPending();
  }
  EXPECT_EQ(host_.connects().size(), kBackends);
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a1 NO [UNAVAILABLE] ")));
  EXPECT_EQ(state(), SessionState::kPrelogin);
  EXPECT_FALSE(client_->paused());
  client_->deliver("a2 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a2 OK ")));
}

TEST_F(SessionTest, ConnectRetriesBoundTheCandidatesTried) {
  Config cfg = baseConfig();
  cfg.routing.connect_retries = 0;
  start(cfg);
  client_->deliver("a1 LOGIN alice secret\r\n");
  host_.lastBackend()->connectFail();
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 1u);
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a1 NO [UNAVAILABLE] ")));
}

TEST_F(SessionTest, ConnectTimeoutOnTheFakeClockTriesTheNextCandidate) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* first = host_.lastBackend();
  host_.advance(config().timeouts.backend_connect - 1ms);
  EXPECT_FALSE(first->closeCalled());
  EXPECT_EQ(host_.connects().size(), 1u);
  host_.advance(2ms);
  EXPECT_TRUE(first->closed());
  ASSERT_EQ(host_.connects().size(), 2u);
  EXPECT_EQ(backendStats(host_.connects()[0].backend).connect_failures.get(), 1u);
  // The second attempt has its own full timeout.
  host_.advance(config().timeouts.backend_connect - 1ms);
  EXPECT_EQ(host_.connects().size(), 2u);
}

TEST_F(SessionTest, BackendTroubleBeforeOrAfterTheLoginIsSent) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  // No greeting in time: nothing was sent, so the next candidate is tried.
  host_.lastBackend()->connectOk();
  host_.advance(config().timeouts.backend_login + 1ms);
  ASSERT_EQ(host_.connects().size(), 2u);
  // A greeting that is not OK: likewise.
  host_.lastBackend()->connectOk();
  host_.lastBackend()->deliver("* BYE Too busy\r\n");
  host_.runPending();
  ASSERT_EQ(host_.connects().size(), 3u);
  // The LOGIN went out and the backend vanished: the client hears NO.
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->peerClose();
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 3u);
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a1 NO [UNAVAILABLE] ")));
  EXPECT_EQ(state(), SessionState::kPrelogin);
}

TEST_F(SessionTest, RoutingSkipsDrainedBackendsAndHonoursTheMap) {
  Config cfg = baseConfig();
  cfg.routing.map["bob"] = "mbx3";
  start(cfg);
  const std::vector<std::string> order = candidates("alice");
  host_.shared().drained_by_operator[slotOf(indexOf(order[0]))] = true;
  client_->deliver("a1 LOGIN alice secret\r\n");
  EXPECT_EQ(host_.connects()[0].backend, order[1]);
  host_.lastBackend()->connectFail();
  host_.runPending();
  EXPECT_EQ(host_.connects()[1].backend, order[2]);
  host_.lastBackend()->connectFail();
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 2u) << "the drained backend is never tried";
  client_->takeWritten();

  client_->deliver("a2 LOGIN BOB secret\r\n");
  EXPECT_EQ(host_.connects().back().backend, "mbx3");
  host_.lastBackend()->connectFail();
  host_.runPending();
  client_->takeWritten();

  // A backend a health responder drained is skipped as well, even when mapped.
  host_.shared().drained_by_responder[slotOf(indexOf("mbx3"))] = true;
  client_->deliver("a3 LOGIN bob secret\r\n");
  EXPECT_NE(host_.connects().back().backend, "mbx3");
  EXPECT_NE(host_.connects().back().backend, order[0]);
}

TEST_F(SessionTest, ProxyHeaderAndForwardedIdPrecedeTheLogin) {
  Config cfg = baseConfig();
  for (BackendConfig& backend : cfg.backends) {
    backend.proxy_protocol = true;
    backend.forward_id = true;
  }
  start(cfg);
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  const std::string header =
      "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"                // signature, v2 PROXY, TCP4, 12
      "\xc0\x00\x02\x07\xc0\x00\x02\x01\xc3\xcb\x00\x8f"s;  // 192.0.2.7 192.0.2.1 50123 143
  EXPECT_EQ(backend->takeWritten(), header);
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(),
            "P0ID ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50123\" "
            "\"x-connected-ip\" \"192.0.2.1\" \"x-connected-port\" \"143\" \"x-session-id\" "
            "\"0000000000001234\")\r\n");
  EXPECT_EQ(state(), SessionState::kBackendId);
  backend->deliver("* ID NIL\r\nP0ID OK ID completed\r\n");
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  backend->deliver("a1 OK Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(), "a1 OK Logged in\r\n") << "the ID exchange stays hidden";
}

TEST_F(SessionTest, TransportsWipeWhatTheyCarryUntilTheLoginIsOver) {
  start();
  EXPECT_TRUE(client_->carriesSecrets()) << "pre-login bytes may hold a password";
  FakeTransport* refused = refusedLogin("a1");
  EXPECT_TRUE(refused->carriesSecrets());
  EXPECT_TRUE(client_->carriesSecrets()) << "back in pre-login";
  host_.advance(10s);  // the failed-login delay
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  EXPECT_FALSE(client_->carriesSecrets()) << "the relay pays nothing for wiping";
  EXPECT_FALSE(backend->carriesSecrets());
}

TEST_F(SessionTest, ProxyHeaderGoesAheadOfTheTlsHandshakeOfAnImplicitTlsBackend) {
  Config cfg = baseConfig();
  for (BackendConfig& backend : cfg.backends) {
    backend.proxy_protocol = true;
    backend.tls = TlsMode::kImplicit;
  }
  start(cfg);
  client_->deliver("a1 LOGIN alice secret\r\n");
  ASSERT_EQ(host_.connects().size(), 1u);
  EXPECT_TRUE(host_.connects()[0].tls);
  EXPECT_EQ(host_.connects()[0].preamble,
            "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"
            "\xc0\x00\x02\x07\xc0\x00\x02\x01\xc3\xcb\x00\x8f"s)
      << "the header travels in the clear before the ClientHello";
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  EXPECT_EQ(backend->takeWritten(), "") << "no PROXY header inside TLS";
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  backend->deliver("a1 OK Logged in\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
}

TEST_F(SessionTest, ProxyHeaderIsTheFirstByteBeforeStarttls) {
  Config cfg = baseConfig();
  for (BackendConfig& backend : cfg.backends) {
    backend.proxy_protocol = true;
    backend.tls = TlsMode::kStarttls;
  }
  start(cfg);
  client_->deliver("a1 LOGIN alice secret\r\n");
  ASSERT_EQ(host_.connects().size(), 1u);
  EXPECT_FALSE(host_.connects()[0].tls);
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  EXPECT_THAT(backend->takeWritten(), StartsWith("\r\n\r\n\0\r\nQUIT\n\x21"s))
      << "sent on connect, before the greeting is read";
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "P0TLS STARTTLS\r\n");
}

// ---------------------------------------------------------------------------
// AUTHENTICATE.

TEST_F(SessionTest, AuthenticatePlainWithInitialResponse) {
  start();
  client_->deliver("a1 AUTHENTICATE PLAIN "s + std::string(kPlainAliceSecret) + "\r\n");
  EXPECT_EQ(client_->takeWritten(), "") << "no continuation with SASL-IR";
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(host_.connects()[0].backend, candidates("alice")[0]);
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(),
            "a1 AUTHENTICATE PLAIN "s + std::string(kPlainAliceSecret) + "\r\n");
  backend->deliver("a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] Authenticated\r\n");
  EXPECT_EQ(client_->takeWritten(), "a1 OK [CAPABILITY IMAP4rev1 IDLE] Authenticated\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
  EXPECT_EQ(session_->user(), "alice");
}

TEST_F(SessionTest, AuthenticatePlainWithAContinuationRound) {
  start();
  client_->deliver("a1 AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ \r\n");
  EXPECT_EQ(state(), SessionState::kAuthContinuation);
  EXPECT_THAT(host_.connects(), IsEmpty());
  client_->deliverBytewise(std::string(kPlainAliceSecret) + "\r\n");
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr);
  backend->connectOk();
  backend->deliver(kGreetingNoSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a1 AUTHENTICATE PLAIN\r\n");
  backend->deliver("+ \r\n");
  EXPECT_EQ(backend->takeWritten(), std::string(kPlainAliceSecret) + "\r\n");
  backend->deliver("a1 OK Authenticated\r\n");
  EXPECT_EQ(client_->takeWritten(), "a1 OK Authenticated\r\n");
  EXPECT_EQ(state(), SessionState::kRelay);
}

TEST_F(SessionTest, AuthenticateCancelledOrRefusedStaysBeforeLogin) {
  start();
  client_->deliver("a1 AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ \r\n");
  client_->deliver("*\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a1 BAD ")));
  EXPECT_EQ(state(), SessionState::kPrelogin);
  client_->deliver("a2 AUTHENTICATE CRAM-MD5\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a2 NO ")));
  client_->deliver("a3 AUTHENTICATE PLAIN\r\n!!!notbase64\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre("+ ", StartsWith("a3 BAD ")));
  client_->deliver("a4 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("a4 OK ")));
  EXPECT_THAT(host_.connects(), IsEmpty());
}

// ---------------------------------------------------------------------------
// Secrets.

TEST_F(SessionTest, PasswordNeverReachesTheClientOrTheLog) {
  const std::string password = "Tr0ub4dor&3xyzzy";
  const std::string sasl = "AGFsaWNlAFRyMHViNGRvciYzeHl6enk=";  // "\0alice\0" + password
  start();
  // A refused LOGIN, a refused AUTHENTICATE, then a LOGIN that succeeds.
  client_->deliver("a1 LOGIN alice " + password + "\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_THAT(backend->written(), HasSubstr(password)) << "the backend does need it";
  backend->deliver("a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
  host_.advance(2s);
  client_->deliver("a2 AUTHENTICATE PLAIN\r\n" + sasl + "\r\n");
  backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingNoSaslIr);
  backend->deliver("+ \r\n");
  EXPECT_THAT(backend->written(), HasSubstr(sasl));
  backend->deliver("a2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
  host_.advance(3s);
  FakeTransport* relay = loginToRelay("alice", password);
  ASSERT_NE(relay, nullptr);
  client_->deliver("a9 NOOP\r\n");
  relay->peerClose();  // logged as a warning, with user and backend
  host_.runPending();
  ASSERT_EQ(host_.endedCount(), 1);

  const std::string log = log_.text();
  EXPECT_THAT(log, HasSubstr("user=alice")) << "the log was captured";
  EXPECT_THAT(log, HasSubstr("session end"));
  EXPECT_THAT(log, Not(HasSubstr(password)));
  EXPECT_THAT(log, Not(HasSubstr(sasl)));
  EXPECT_THAT(client_->written(), Not(HasSubstr(password)));
  EXPECT_THAT(client_->written(), Not(HasSubstr(sasl)));
  EXPECT_THAT(client_->writtenAfterClose(), Not(HasSubstr(password)));
}

TEST_F(SessionTest, PasswordNeverReachesTheProtocolLog) {
  const std::string password = "Tr0ub4dor&3xyzzy";
  const std::string sasl = "AGFsaWNlAFRyMHViNGRvciYzeHl6enk=";  // "\0alice\0" + password
  char dir_template[] = "/tmp/portico-session-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::filesystem::path dir(dir_template);
  logging::ProtocolLog protocol_log(1);
  logging::ProtocolLog::Options options;
  options.directory = dir.string();
  ASSERT_TRUE(IsOk(protocol_log.start(options)));
  host_.shared().protocol_log.store(&protocol_log);
  TraceSettings settings;
  settings.on = true;
  host_.shared().trace.set(settings);

  start();
  client_->deliver("a0 LOGIN alice " + password + " extra\r\n");  // malformed: BAD
  client_->deliver("a1 LOGIN alice " + password + "\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->deliver("a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
  host_.advance(2s);
  client_->deliver("a2 AUTHENTICATE PLAIN " + sasl + "\r\n");
  backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->deliver("a2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
  host_.advance(3s);
  FakeTransport* relay = loginToRelay("alice", password);
  ASSERT_NE(relay, nullptr);
  client_->deliver("a3 LOGIN alice " + password + "\r\na4 SELECT INBOX\r\n");
  relay->deliver("a3 BAD Already logged in\r\na4 OK done\r\n");
  session_->abort(EndReason::kShutdownTimeout);
  host_.runPending();
  ASSERT_EQ(host_.endedCount(), 1);
  protocol_log.stop();
  host_.shared().protocol_log.store(nullptr);

  std::string text;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::filesystem::remove_all(dir);
  EXPECT_THAT(text, HasSubstr("LOGIN")) << "the protocol log was written";
  EXPECT_THAT(text, HasSubstr("SELECT"));
  EXPECT_THAT(text, Not(HasSubstr(password)));
  EXPECT_THAT(text, Not(HasSubstr(sasl)));
}

}  // namespace
}  // namespace portico::proxy
