// Session state machine over fakes (fakes.h): pre-login dialogue, login
// replay with routing and retries, AUTHENTICATE, the relay and its
// accounting on a fake clock, backpressure, the close paths, timeouts,
// shutdown and secrets. Every test ends (TearDown) by checking that the
// session ended at most once, never touched a transport after its
// onClosed(), and gave back every gauge it took.

#include "session/session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "accounting.h"
#include "lookup/lookup_stage.h"
#include "portico/logging.h"
#include "portico/protocol_log.h"
#include "protocol_trace.h"
#include "proxy/deflate_client.h"
#include "proxy/fakes.h"
#include "routing.h"
#include "status_testing.h"

namespace portico::proxy {
namespace {

using fakes::FakeHost;
using fakes::FakeTransport;
using ::testing::ElementsAre;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;
using namespace std::chrono_literals;
using namespace std::string_literals;

constexpr std::string_view kGreetingSaslIr =
    "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n";
constexpr std::string_view kGreetingNoSaslIr = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n";
constexpr std::string_view kPlainAliceSecret = "AGFsaWNlAHNlY3JldA==";  // "\0alice\0secret"
constexpr std::size_t kBackends = 3;

// Stats slots deliberately differ from backend indices.
std::size_t slotOf(std::size_t backend_index) {
  return 4 + 3 * backend_index;
}

// Splits CRLF-terminated output into lines without their CRLF.
std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find("\r\n", begin);
    if (end == std::string::npos) {
      out.push_back(text.substr(begin));
      break;
    }
    out.push_back(text.substr(begin, end - begin));
    begin = end + 2;
  }
  return out;
}

// Sends the operational log to a temporary file for the test's duration.
class LogCapture {
 public:
  LogCapture() : file_(std::tmpfile()), previous_level_(logging::level()) {
    logging::setOutputFd(fileno(file_));
    logging::setLevel(logging::Level::kDebug);
  }
  ~LogCapture() {
    logging::setOutputFd(2);
    logging::setLevel(previous_level_);
    std::fclose(file_);
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::string text() const {
    std::string out;
    char buffer[4096];
    off_t offset = 0;
    ssize_t n;
    while ((n = pread(fileno(file_), buffer, sizeof(buffer), offset)) > 0) {
      out.append(buffer, static_cast<std::size_t>(n));
      offset += n;
    }
    return out;
  }

 private:
  std::FILE* file_;
  logging::Level previous_level_;
};

Config baseConfig() {
  Config cfg;
  for (std::size_t i = 0; i < kBackends; ++i) {
    BackendConfig backend;
    backend.name = "mbx" + std::to_string(i + 1);
    backend.address = HostPort{"10.1.0." + std::to_string(i + 1), 143, false};
    cfg.backends.push_back(backend);
  }
  return cfg;
}

class SessionTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (session_ != nullptr && host_.endedCount() == 0) {
      session_->abort(EndReason::kShutdownTimeout);
      host_.runPending();
      if (host_.endedCount() == 0) {
        ADD_FAILURE() << "the session did not end after abort() in state "
                      << sessionStateName(session_->state());
        delete session_;
      }
    }
    EXPECT_LE(host_.endedCount(), 1);
    EXPECT_THAT(host_.violations(), IsEmpty());
    EXPECT_EQ(host_.loop().armedTimers(), 0u) << "a timer outlived its session";
    // Every gauge the session took is given back.
    WorkerStats& stats = host_.stats();
    EXPECT_EQ(stats.connections_unauthenticated.get(), 0u);
    for (std::size_t i = 0; i < kBackends; ++i) {
      EXPECT_EQ(stats.backend(slotOf(i)).sessions_current.get(), 0u) << "backend " << i;
      EXPECT_EQ(stats.backend(slotOf(i)).commands_in_flight.get(), 0u) << "backend " << i;
    }
  }

  // require_tls: a plaintext client on a STARTTLS listener that requires TLS.
  void start(Config cfg = baseConfig(), bool require_tls = false) {
    std::vector<std::size_t> slots;
    for (std::size_t i = 0; i < cfg.backends.size(); ++i) {
      slots.push_back(slotOf(i));
    }
    auto runtime = std::make_shared<RuntimeConfig>(std::move(cfg), std::move(slots));
    // One (absent) TLS context per backend, as buildRuntime() lays them out;
    // the fake host needs none.
    runtime->backend_tls.resize(runtime->config.backends.size());
    runtime_ = std::move(runtime);
    client_ = host_.newClient();
    session_ = new Session(host_, runtime_, client_, 0x1234);
    if (require_tls) {
      session_->setListener(TlsMode::kStarttls, true, nullptr, false);
    }
    session_->start();
    greeting_ = client_->takeWritten();
  }

  const Config& config() const { return runtime_->config; }
  bool ended() const { return host_.endedCount() > 0; }
  SessionState state() const { return session_->state(); }

  // Backend names in the order routing tries them for `user`.
  std::vector<std::string> candidates(std::string_view user) const {
    std::vector<std::string> out;
    for (std::size_t i : runtime_->selector.candidates(normaliseUser(user))) {
      out.push_back(config().backends[i].name);
    }
    return out;
  }
  std::size_t indexOf(const std::string& backend) const {
    for (std::size_t i = 0; i < config().backends.size(); ++i) {
      if (config().backends[i].name == backend) {
        return i;
      }
    }
    ADD_FAILURE() << "no backend " << backend;
    return 0;
  }
  BackendStats& backendStats(const std::string& backend) {
    return host_.stats().backend(slotOf(indexOf(backend)));
  }
  // Of the backend loginToRelay() reached (usable after the session ended).
  CommandStats& commandStats(CommandId id) {
    return backendStats(relay_backend_).commands[static_cast<std::size_t>(id)];
  }

  // Logs in through the first candidate; returns that backend, in relay,
  // with everything written so far taken.
  FakeTransport* loginToRelay(const std::string& user = "alice",
                              const std::string& password = "secret") {
    client_->deliver("a1 LOGIN " + user + " " + password + "\r\n");
    FakeTransport* backend = host_.lastBackend();
    if (backend == nullptr) {
      ADD_FAILURE() << "LOGIN did not connect a backend";
      return nullptr;
    }
    backend->connectOk();
    backend->deliver(kGreetingSaslIr);
    backend->deliver("a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
    host_.runPending();
    EXPECT_EQ(state(), SessionState::kRelay);
    relay_backend_ = session_->backendName();
    client_->takeWritten();
    backend->takeWritten();
    return backend;
  }

  // A LOGIN the backend refuses; returns that backend.
  FakeTransport* refusedLogin(const std::string& tag) {
    client_->deliver(tag + " LOGIN alice wrong\r\n");
    FakeTransport* backend = host_.lastBackend();
    backend->connectOk();
    backend->deliver(kGreetingSaslIr);
    backend->deliver(tag + " NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
    host_.runPending();
    return backend;
  }

  LogCapture log_;
  FakeHost host_;
  RuntimeConfigPtr runtime_;
  FakeTransport* client_ = nullptr;
  Session* session_ = nullptr;  // deleted by the host when it ends
  std::string greeting_;
  std::string relay_backend_;
};

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

// ---------------------------------------------------------------------------
// Relay.

TEST_F(SessionTest, RelayPassesBytesUnchangedBothWays) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 SELECT INBOX\r\n");
  EXPECT_EQ(backend->takeWritten(), "a2 SELECT INBOX\r\n");
  backend->deliver("* 3 EXISTS\r\n* FLAGS (\\Seen \\Answered)\r\na2 OK [READ-WRITE] done\r\n");
  EXPECT_EQ(client_->takeWritten(),
            "* 3 EXISTS\r\n* FLAGS (\\Seen \\Answered)\r\na2 OK [READ-WRITE] done\r\n");

  // A command split over reads is forwarded as it comes and counted once.
  client_->deliver("a3 UID FE");
  client_->deliver("TCH 1:* (FL");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  client_->deliver("AGS)\r\n");
  EXPECT_EQ(backend->takeWritten(), "a3 UID FETCH 1:* (FLAGS)\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u);
  // A literal in the reply that looks like a tagged line completes nothing.
  backend->deliver("* 1 FETCH (UID 7 BODY[] {7}\r\na3 OK\r\n)\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u);
  backend->deliver("a3 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "* 1 FETCH (UID 7 BODY[] {7}\r\na3 OK\r\n)\r\na3 OK done\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);

  // APPEND: the backend, not Portico, answers the synchronizing literal.
  client_->deliver("a4 APPEND INBOX (\\Seen) {12}\r\n");
  EXPECT_EQ(client_->takeWritten(), "");
  backend->deliver("+ Ready for literal data\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ Ready for literal data\r\n");
  client_->deliver("x1 NOOP\r\nHi!\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "literal bytes are not a command";
  backend->deliver("a4 OK [APPENDUID 1 9] done\r\n");
  EXPECT_EQ(backend->takeWritten(), "a4 APPEND INBOX (\\Seen) {12}\r\nx1 NOOP\r\nHi!\r\n");
  EXPECT_EQ(client_->takeWritten(), "a4 OK [APPENDUID 1 9] done\r\n");
  EXPECT_EQ(commandStats(CommandId::kAPPEND).count.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 0u);
  EXPECT_EQ(commandStats(CommandId::kFETCH).count.get(), 1u);
}

TEST_F(SessionTest, AcknowledgesAtOnceOnlyWhenTheClientSendsMoreUnasked) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  const int before = client_->acksNow();
  // Whole commands: the answer carries the ACK, no syscall for it.
  client_->deliver("a2 NOOP\r\na3 SELECT INBOX\r\n");
  EXPECT_EQ(client_->acksNow(), before);
  // A synchronizing literal: the client waits for "+", which carries the ACK.
  client_->deliver("a4 APPEND INBOX {12}\r\n");
  EXPECT_EQ(client_->acksNow(), before);
  backend->deliver("+ Ready for literal data\r\n");
  // imaplib: the literal in one write, its CRLF in the next. Nothing answers
  // the literal, so it is acknowledged at once (or a client with Nagle on
  // holds the CRLF for the delayed-ACK timer).
  client_->deliver("Hello world!");
  EXPECT_EQ(client_->acksNow(), before + 1);
  client_->deliver("\r\n");
  EXPECT_EQ(client_->acksNow(), before + 1);
  // A line split over reads, or a small part of a literal body: likewise.
  client_->deliver("a5 NO");
  EXPECT_EQ(client_->acksNow(), before + 2);
  client_->deliver("OP\r\na6 APPEND INBOX {40000+}\r\nsmall part");
  EXPECT_EQ(client_->acksNow(), before + 3);
  // A large read inside a literal: a client streaming full segments, which
  // the kernel acknowledges by itself.
  client_->deliver(std::string(Session::kSmallClientRead, 'x'));
  EXPECT_EQ(client_->acksNow(), before + 3);
  client_->deliver(std::string(40000 - 10 - Session::kSmallClientRead, 'y') + "\r\n");
  EXPECT_EQ(client_->acksNow(), before + 3);
  // IDLE: the client waits for "+ idling".
  client_->deliver("a7 IDLE\r\n");
  EXPECT_EQ(client_->acksNow(), before + 3);
  EXPECT_EQ(backend->takeWritten().size(),
            std::string("a2 NOOP\r\na3 SELECT INBOX\r\na4 APPEND INBOX {12}\r\nHello world!\r\n"
                        "a5 NOOP\r\na6 APPEND INBOX {40000+}\r\n")
                    .size() +
                40000 + 2 + std::string("a7 IDLE\r\n").size());
}

TEST_F(SessionTest, ProcessingTimeIsMeasuredOnTheFakeClock) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 SELECT INBOX\r\n");
  host_.advance(250ms);
  backend->deliver("a2 OK done\r\n");
  CommandStats& select = commandStats(CommandId::kSELECT);
  EXPECT_EQ(select.count.get(), 1u);
  EXPECT_EQ(select.no.get(), 0u);
  EXPECT_EQ(select.bad.get(), 0u);
  EXPECT_EQ(select.time_us.get(), 250'000u);
  // 250 ms is over 100 us * 2^11 and within 100 us * 2^12.
  EXPECT_EQ(select.histogram[12].get(), 1u);
  EXPECT_EQ(select.histogram[11].get() + select.histogram[13].get(), 0u);

  // The clock starts at the command's last byte, not its first.
  client_->deliver("a3 FETCH 1 (FLA");
  host_.advance(100ms);
  client_->deliver("GS)\r\n");
  host_.advance(40ms);
  backend->deliver("a3 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kFETCH).time_us.get(), 40'000u);
}

TEST_F(SessionTest, ErrorsAndUnknownCommandsAreCounted) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 SELECT nosuch\r\na3 SELECT\r\na4 XYZZY 1\r\na5 uid fetch 1 FLAGS\r\n");
  backend->deliver("a2 NO [NONEXISTENT] no such mailbox\r\na3 BAD missing argument\r\n");
  backend->deliver("a4 BAD unknown command\r\na5 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kSELECT).count.get(), 2u);
  EXPECT_EQ(commandStats(CommandId::kSELECT).no.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kSELECT).bad.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kOTHER).count.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kOTHER).bad.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kFETCH).count.get(), 1u);
  EXPECT_EQ(session_->commandsInFlight(), 0u);
}

TEST_F(SessionTest, PipelinedCommandsAreMatchedByTag) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  BackendStats& stats = backendStats(relay_backend_);
  client_->deliver("p1 NOOP\r\np2 SELECT INBOX\r\np3 FETCH 1 FLAGS\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 3u);
  EXPECT_EQ(stats.commands_in_flight.get(), 3u);
  host_.advance(10ms);
  backend->deliver("p2 OK done\r\n");
  backend->deliver("zz OK not ours\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 2u);
  host_.advance(10ms);
  backend->deliver("p3 OK done\r\np1 OK done\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(stats.commands_in_flight.get(), 0u);
  EXPECT_EQ(commandStats(CommandId::kSELECT).time_us.get(), 10'000u);
  EXPECT_EQ(commandStats(CommandId::kFETCH).time_us.get(), 20'000u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).time_us.get(), 20'000u);

  // Many tags at once, answered in reverse.
  backend->takeWritten();
  std::string commands;
  std::string replies;
  for (int i = 0; i < 100; ++i) {
    commands += "t" + std::to_string(i) + " NOOP\r\n";
    replies = "t" + std::to_string(i) + " OK\r\n" + replies;
  }
  client_->deliver(commands);
  EXPECT_EQ(session_->commandsInFlight(), 100u);
  EXPECT_EQ(stats.commands_in_flight.get(), 100u);
  backend->deliver(replies);
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 101u);
  EXPECT_EQ(backend->takeWritten(), commands);
}

TEST_F(SessionTest, IdleIsCountedApartFromProcessingTime) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("i1 IDLE\r\n");
  backend->deliver("+ idling\r\n");
  host_.advance(5s);
  backend->deliver("* 4 EXISTS\r\n");
  host_.advance(5s);
  client_->deliver("DONE\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "IDLE ends with its tagged reply";
  backend->deliver("i1 OK IDLE terminated\r\n");
  EXPECT_EQ(backend->takeWritten(), "i1 IDLE\r\nDONE\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ idling\r\n* 4 EXISTS\r\ni1 OK IDLE terminated\r\n");
  BackendStats& stats = backendStats(relay_backend_);
  EXPECT_EQ(stats.idle.count.get(), 1u);
  EXPECT_EQ(stats.idle.time_us.get(), 10'000'000u);
  EXPECT_EQ(commandStats(CommandId::kIDLE).count.get(), 0u);
  EXPECT_EQ(commandStats(CommandId::kIDLE).time_us.get(), 0u);
}

TEST_F(SessionTest, IdleRefusedByTheBackendLeavesTheNextCommandCounted) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("i1 IDLE\r\n");
  backend->deliver("i1 NO IDLE not now\r\n");
  client_->deliver("i2 NOOP\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "i2 is a command, not a line instead of DONE";
  backend->deliver("i2 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 1u);
  EXPECT_EQ(backend->takeWritten(), "i1 IDLE\r\ni2 NOOP\r\n");
}

TEST_F(SessionTest, LiteralRefusedByTheBackendLeavesTheNextCommandCounted) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  // Dovecot answers an APPEND to a missing mailbox at once, without "+";
  // the client sends no body but its next command.
  client_->deliver("a2 APPEND nosuch {8}\r\n");
  backend->deliver("a2 NO [TRYCREATE] Mailbox doesn't exist\r\n");
  EXPECT_EQ(client_->takeWritten(), "a2 NO [TRYCREATE] Mailbox doesn't exist\r\n");
  client_->deliver("a3 IDLE\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "a3 IDLE is a command, not a literal body";
  backend->deliver("+ idling\r\n");
  client_->deliver("DONE\r\n");
  backend->deliver("a3 OK Idle completed\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(backend->takeWritten(), "a2 APPEND nosuch {8}\r\na3 IDLE\r\nDONE\r\n");
  // A literal the backend invites is still a body.
  client_->deliver("a4 APPEND INBOX {8}\r\n");
  backend->deliver("+ OK\r\n");
  client_->deliver("a5 NOOP!");  // the 8 bytes of the message
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  client_->deliver("\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "a4 is complete";
  backend->deliver("a4 OK appended\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kAPPEND).count.get(), 1u);
}

TEST_F(SessionTest, CompressIsRefusedWithoutSupportAndNeverForwarded) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("z4 COMPRESS DEFLATE\r\n");
  EXPECT_EQ(backend->takeWritten(), "");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z4 NO [CANNOT]")));
  EXPECT_EQ(state(), SessionState::kRelay);

  // Capability lists in the relay lose the backend's COMPRESS, and a host
  // that cannot compress offers none of its own.
  client_->deliver("k1 CAPABILITY\r\n");
  backend->deliver("* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "* CAPABILITY IMAP4rev1 IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kCOMPRESS).count.get(), 1u);
}

TEST_F(SessionTest, CompressOffOnTheListenerIsNeitherOfferedNorAccepted) {
  host_.enableCompression();
  start();
  session_->setCompressOffered(false);  // [[listen]] compress = false
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("k1 CAPABILITY\r\n");
  backend->deliver("* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "* CAPABILITY IMAP4rev1 IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(backend->takeWritten(), "k1 CAPABILITY\r\n");
  client_->deliver("z4 COMPRESS DEFLATE\r\n");
  EXPECT_EQ(backend->takeWritten(), "") << "COMPRESS is never forwarded";
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z4 NO [CANNOT]")));
  EXPECT_EQ(state(), SessionState::kRelay);
}

TEST_F(SessionTest, CompressDeflateIsOfferedAndTerminatedInPortico) {
  host_.enableCompression();
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->deliver("a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(),
            "a1 OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] Logged in\r\n")
      << "Portico's own COMPRESS=DEFLATE, after login only";
  backend->takeWritten();
  relay_backend_ = session_->backendName();

  client_->deliver("c1 COMPRESS deflate\r\n");
  EXPECT_EQ(backend->takeWritten(), "") << "the backend never sees COMPRESS";
  EXPECT_EQ(client_->takeWritten(), "c1 OK DEFLATE active.\r\n") << "the last plain bytes";

  testing_zlib::ClientDeflater out;
  testing_zlib::ClientInflater in;
  auto clientReads = [&] {
    std::string text;
    EXPECT_TRUE(in.decompress(client_->takeWritten(), text));
    return text;
  };
  const std::string append = "a2 APPEND INBOX {8+}\r\n\x01\x80\r\n\xff\0\r\n!\r\n"s;
  client_->deliver(out.compress(append));
  EXPECT_EQ(backend->takeWritten(), append) << "plaintext on the backend leg";
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "framed in plaintext";
  backend->deliver("* 3 EXISTS\r\na2 OK [APPENDUID 1 3] Append completed.\r\n");
  EXPECT_EQ(clientReads(), "* 3 EXISTS\r\na2 OK [APPENDUID 1 3] Append completed.\r\n");
  EXPECT_EQ(commandStats(CommandId::kAPPEND).count.get(), 1u);

  // A second COMPRESS, now compressed itself, is refused compressed.
  client_->deliver(out.compress("c2 COMPRESS DEFLATE\r\n"));
  EXPECT_EQ(clientReads(), "c2 NO [COMPRESSIONACTIVE] DEFLATE is already active.\r\n");
  EXPECT_EQ(commandStats(CommandId::kCOMPRESS).count.get(), 2u);

  // The client's ACK still comes from the TCP connection mid-command.
  const int acks = client_->acksNow();
  client_->deliver(out.compress("a3 APPEND INBOX {4+}\r\nab"));
  EXPECT_EQ(client_->acksNow(), acks + 1);
  client_->deliver(out.compress("cd\r\n"));
  EXPECT_EQ(backend->takeWritten(), "a3 APPEND INBOX {4+}\r\nabcd\r\n");

  // A corrupt stream ends the session with a reason in the log.
  LogCapture log;
  client_->deliver("\xff\xfe garbage that is no DEFLATE block");
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(log.text(), HasSubstr("COMPRESS: corrupt DEFLATE stream"));
}

TEST_F(SessionTest, CompressOnlyAloneBetweenCommands) {
  host_.enableCompression();
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  // Pipelined plaintext after COMPRESS: refused, and the rest is relayed.
  client_->deliver("z2 COMPRESS DEFLATE\r\nz3 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "z3 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z2 BAD ")));
  // With a command in progress: refused.
  client_->deliver("z4 COMPRESS DEFLATE\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z4 NO [CANNOT]")));
  backend->deliver("z3 OK NOOP done\r\n");
  EXPECT_EQ(client_->takeWritten(), "z3 OK NOOP done\r\n");
  // Unknown mechanism.
  client_->deliver("z5 COMPRESS ZSTD\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z5 BAD ")));
  EXPECT_EQ(backend->takeWritten(), "");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kCOMPRESS).count.get(), 3u);
  // Still plain: a plain NOOP works.
  client_->deliver("z6 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "z6 NOOP\r\n");
  backend->deliver("z6 OK\r\n");
  EXPECT_EQ(client_->takeWritten(), "z6 OK\r\n");
}

TEST_F(SessionTest, CompressBeforeLoginIsNotAllowed) {
  host_.enableCompression();
  start();
  client_->takeWritten();
  client_->deliver("p1 COMPRESS DEFLATE\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("p1 BAD ")));
  EXPECT_THAT(host_.connects(), IsEmpty());
  client_->deliver("p2 CAPABILITY\r\n");
  EXPECT_THAT(client_->takeWritten(), Not(HasSubstr("COMPRESS")));
}

TEST_F(SessionTest, ByteCountersMatchWhatWasRelayed) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  WorkerStats& worker = host_.stats();
  BackendStats& stats = backendStats(relay_backend_);
  const std::uint64_t to_clients = worker.bytes_to_clients.get();
  const std::uint64_t from_clients = worker.bytes_from_clients.get();
  const std::string commands = "y1 NOOP\r\ny2 COMPRESS DEFLATE\r\ny3 CAPABILITY\r\n";
  const std::string replies =
      "y1 OK\r\n* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\ny3 OK done\r\n";
  client_->deliver(commands);
  backend->deliver(replies);
  const std::string to_backend = backend->takeWritten();
  const std::string to_client = client_->takeWritten();
  EXPECT_EQ(to_backend, "y1 NOOP\r\ny3 CAPABILITY\r\n");
  EXPECT_EQ(worker.bytes_from_clients.get() - from_clients, commands.size());
  EXPECT_EQ(stats.bytes_from_backend.get(), replies.size());
  EXPECT_EQ(stats.bytes_to_backend.get(), to_backend.size());
  EXPECT_EQ(worker.bytes_to_clients.get() - to_clients, to_client.size());
}

TEST_F(SessionTest, UnreadableLiteralFromTheClientEndsTheSession) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  // A literal size too long to read: the stream cannot be resynchronised.
  client_->deliver("a2 APPEND INBOX {99999999999999999999999999}\r\na3 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("* BYE ")));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, UnreadableLiteralFromTheBackendEndsTheSession) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1 BODY[]\r\n");
  backend->deliver("* 1 FETCH (BODY[] {99999999999999999999999999}\r\nabc");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("* BYE [UNAVAILABLE]")));
  EXPECT_TRUE(client_->shutdownCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, UnreadableBackendLineDuringLoginFailsThatBackend) {
  Config cfg = baseConfig();
  for (BackendConfig& backend : cfg.backends) {
    backend.forward_id = true;
  }
  start(cfg);
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(state(), SessionState::kBackendId);
  backend->deliver("* 1 FETCH (BODY[] {99999999999999999999999999}\r\nP0ID OK\r\n");
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 2u) << "nothing was sent yet: the next candidate";
}

TEST_F(SessionTest, BackpressurePausesTheOtherSide) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  const std::size_t high = config().limits.write_high_watermark;

  backend->setQueuedBytes(high);
  client_->deliver("b1 NOOP\r\n");
  EXPECT_FALSE(client_->paused()) << "at the watermark is not over it";
  backend->setQueuedBytes(high + 1);
  client_->deliver("b2 NOOP\r\n");
  EXPECT_TRUE(client_->paused());
  client_->deliver("b3 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 NOOP\r\n");
  backend->drain();
  EXPECT_FALSE(client_->paused());
  host_.runPending();
  EXPECT_EQ(backend->takeWritten(), "b3 NOOP\r\n");

  client_->setQueuedBytes(high + 1);
  backend->deliver("* 1 EXISTS\r\n");
  EXPECT_TRUE(backend->paused());
  EXPECT_FALSE(client_->paused());
  client_->drain();
  EXPECT_FALSE(backend->paused());
  EXPECT_EQ(client_->takeWritten(), "* 1 EXISTS\r\n");
}

TEST_F(SessionTest, CommandsInFlightAreCappedAndReadingResumesAtHalf) {
  Config cfg = baseConfig();
  cfg.limits.max_commands_in_flight = 4;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);

  // Six commands in one read: four go out, the rest waits unparsed and the
  // client is not read until half of the four are answered.
  client_->deliver("b1 NOOP\r\nb2 NOOP\r\nb3 NOOP\r\nb4 NOOP\r\nb5 NOOP\r\nb6 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 NOOP\r\nb3 NOOP\r\nb4 NOOP\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 4u);
  EXPECT_TRUE(client_->paused());
  client_->deliver("b7 NOOP\r\n");  // held by the (fake) kernel while paused
  EXPECT_EQ(backend->takeWritten(), "");

  backend->deliver("b1 OK done\r\n");
  EXPECT_TRUE(client_->paused()) << "3 in flight is above half of 4";
  EXPECT_EQ(backend->takeWritten(), "");
  backend->deliver("b2 OK done\r\n");
  EXPECT_EQ(backend->takeWritten(), "b5 NOOP\r\nb6 NOOP\r\n") << "the held rest, in order";
  EXPECT_EQ(session_->commandsInFlight(), 4u);
  EXPECT_TRUE(client_->paused()) << "the held rest reached the cap again";

  backend->deliver("b3 OK done\r\nb4 OK done\r\n");
  host_.runPending();
  EXPECT_FALSE(client_->paused());
  EXPECT_EQ(backend->takeWritten(), "b7 NOOP\r\n");
  backend->deliver("b5 OK done\r\nb6 OK done\r\nb7 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(),
            "b1 OK done\r\nb2 OK done\r\nb3 OK done\r\nb4 OK done\r\nb5 OK done\r\n"
            "b6 OK done\r\nb7 OK done\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 7u);
  EXPECT_EQ(session_->info(host_.now()).bytes_in, 23u + 63u)  // LOGIN, then the commands
      << "held bytes are counted once";
}

TEST_F(SessionTest, CommandCapNeverPausesInsideIdle) {
  Config cfg = baseConfig();
  cfg.limits.max_commands_in_flight = 2;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("b1 NOOP\r\nb2 IDLE\r\n");
  EXPECT_FALSE(client_->paused()) << "IDLE waits for the client's DONE";
  backend->deliver("+ idling\r\n");
  client_->deliver("DONE\r\nb3 NOOP\r\nb4 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 IDLE\r\nDONE\r\nb3 NOOP\r\n");
  EXPECT_TRUE(client_->paused());
  backend->deliver("b1 OK done\r\nb2 OK idle done\r\n");
  EXPECT_EQ(backend->takeWritten(), "b4 NOOP\r\n");
  backend->deliver("b3 OK done\r\nb4 OK done\r\n");
  EXPECT_FALSE(client_->paused());
}

TEST_F(SessionTest, WatermarkDrainDoesNotLiftTheCommandCap) {
  Config cfg = baseConfig();
  cfg.limits.max_commands_in_flight = 1;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  backend->setQueuedBytes(config().limits.write_high_watermark + 1);
  client_->deliver("b1 NOOP\r\nb2 NOOP\r\n");
  EXPECT_TRUE(client_->paused());
  backend->drain();
  EXPECT_TRUE(client_->paused()) << "still one command unanswered";
  backend->deliver("b1 OK done\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 NOOP\r\n");
  backend->deliver("b2 OK done\r\n");
  EXPECT_FALSE(client_->paused());
}

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

// ---------------------------------------------------------------------------
// Directory lookup (issue 10): the session asks the worker's LookupStage.

class FakeLookupLoop final : public LookupLoop {
 public:
  explicit FakeLookupLoop(FakeHost& host) : host_(host) {}
  uv_loop_t* uvLoop() override { return nullptr; }
  std::chrono::steady_clock::time_point now() override { return host_.now(); }
  TimerPtr createTimer(std::function<void()> callback) override {
    return host_.createTimer(std::move(callback));
  }

 private:
  FakeHost& host_;
};

// Records each query; the test answers it. Counts cancellations.
class RecordingDirectory final : public DirectoryLookup {
 public:
  struct Query {
    LookupRequest request;
    LookupCallback callback;
    bool cancelled = false;
  };
  LookupId lookup(const LookupRequest& request, LookupCallback callback) override {
    queries.push_back(Query{request, std::move(callback)});
    return queries.size();
  }
  void cancel(LookupId id) override { queries.at(id - 1).cancelled = true; }
  void answer(LookupResult result) {
    Query& q = queries.back();
    ASSERT_FALSE(q.cancelled);
    q.callback(std::move(result));
  }
  std::vector<Query> queries;
};

class SessionLookupTest : public SessionTest {
 protected:
  void SetUp() override {
    auto directory = std::make_unique<RecordingDirectory>();
    directory_ = directory.get();
    LookupConfig config;
    config.kind = LookupKind::kHttp;
    config.cache_ttl = std::chrono::milliseconds(0);
    host_.setLookupStage(std::make_shared<LookupStage>(lookup_loop_, std::move(directory), config,
                                                       host_.shared().lookup.stats));
  }
  void TearDown() override {
    SessionTest::TearDown();
    host_.setLookupStage(nullptr);
  }
  static LookupResult routeTo(const std::string& backend) {
    LookupResult r;
    r.outcome = LookupOutcome::kRoute;
    r.route.backend = backend;
    return r;
  }

  FakeLookupLoop lookup_loop_{host_};
  RecordingDirectory* directory_ = nullptr;
};

TEST_F(SessionLookupTest, RoutesWhereTheDirectorySaysWithItsUserAndPassword) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  EXPECT_EQ(state(), SessionState::kLookup);
  EXPECT_TRUE(host_.connects().empty()) << "no backend before the answer";
  ASSERT_EQ(directory_->queries.size(), 1u);
  const LookupRequest& request = directory_->queries[0].request;
  EXPECT_EQ(request.user, "alice");
  EXPECT_EQ(request.password, "secret");
  EXPECT_EQ(request.method, LookupAuthMethod::kPlain);
  EXPECT_EQ(request.attempt, 1u);
  EXPECT_EQ(request.client_ip, "192.0.2.7");
  EXPECT_EQ(request.local_ip, "192.0.2.1");
  EXPECT_FALSE(request.tls);

  // Whatever hashing would pick, the directory's backend wins.
  const std::string other = candidates("alice")[0] == "mbx1" ? "mbx2" : "mbx1";
  LookupResult answer = routeTo(other);
  answer.backend_user = "alice@store";
  answer.backend_password = "backend-pw";
  answer.proxy_timeout = std::chrono::milliseconds(700);
  directory_->answer(std::move(answer));
  ASSERT_EQ(host_.connects().size(), 1u);
  EXPECT_EQ(host_.connects()[0].backend, other);
  EXPECT_EQ(state(), SessionState::kConnecting);
  // proxy_timeout is the connect timeout.
  host_.advance(std::chrono::milliseconds(650));
  EXPECT_EQ(state(), SessionState::kConnecting);
  host_.advance(std::chrono::milliseconds(60));
  host_.runPending();
  EXPECT_THAT(client_->takeWritten(), HasSubstr("NO [UNAVAILABLE]"))
      << "the one candidate timed out after proxy_timeout";
}

TEST_F(SessionLookupTest, OverridesAreReplayedToTheBackend) {
  start();
  client_->deliver("a1 AUTHENTICATE PLAIN " + parser::encodeBase64(std::string("\0alice\0pw", 9)) +
                   "\r\n");
  ASSERT_EQ(directory_->queries.size(), 1u);
  EXPECT_EQ(directory_->queries[0].request.password, "pw") << "PLAIN's password is asked";
  LookupResult answer = routeTo("mbx1");
  answer.backend_user = "bob";
  answer.backend_password = "other";
  directory_->answer(std::move(answer));
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr);
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(backend->takeWritten(), "a1 LOGIN \"bob\" \"other\"\r\n");
}

TEST_F(SessionLookupTest, ASessionThatEndsCancelsItsLookup) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  ASSERT_EQ(directory_->queries.size(), 1u);
  EXPECT_FALSE(client_->paused()) << "read, to notice a client that leaves";
  client_->peerClose();
  host_.runPending();
  EXPECT_TRUE(ended());
  EXPECT_TRUE(directory_->queries[0].cancelled);
  session_ = nullptr;
}

TEST_F(SessionLookupTest, RefusalsUnavailableAndAuthWait) {
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  directory_->answer(LookupResult::unavailable("auth http server 10.9.9.9:80: cannot connect"));
  EXPECT_EQ(client_->takeWritten(),
            "a1 NO [UNAVAILABLE] Directory service unavailable, try again later.\r\n");
  EXPECT_EQ(state(), SessionState::kPrelogin);

  client_->deliver("a2 LOGIN alice secret\r\n");
  LookupResult refuse;
  refuse.outcome = LookupOutcome::kRefuse;
  refuse.reason = "Invalid login";
  refuse.wait_seconds = 3;
  directory_->answer(std::move(refuse));
  host_.advance(config().limits.login_failure_delay + std::chrono::milliseconds(5));
  EXPECT_EQ(client_->takeWritten(), "a2 NO [AUTHENTICATIONFAILED] Invalid login\r\n");
  client_->deliver("a3 LOGIN alice secret\r\n");
  EXPECT_THAT(client_->takeWritten(), StartsWith("a3 NO [UNAVAILABLE] Login refused for now"));
  EXPECT_EQ(directory_->queries.size(), 2u) << "not asked during Auth-Wait";
  host_.advance(std::chrono::seconds(3));
  client_->deliver("a4 LOGIN alice secret\r\n");
  EXPECT_EQ(directory_->queries.size(), 3u);

  LookupResult bye;
  bye.outcome = LookupOutcome::kRefuse;
  bye.reason = "No such user";
  directory_->answer(std::move(bye));
  host_.runPending();
  EXPECT_THAT(client_->takeWritten(),
              StartsWith("a4 NO [AUTHENTICATIONFAILED] No such user\r\n* BYE"));
}

}  // namespace
}  // namespace portico::proxy
