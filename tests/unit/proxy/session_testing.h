// The SessionTest fixture shared by the session_*_test.cc files: the
// Session state machine over fakes (fakes.h), its config and helpers. Every
// test ends (TearDown) by checking that the session ended at most once, never
// touched a transport after its onClosed(), and gave back every gauge it took.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "accounting.h"
#include "portico/logging.h"
#include "proxy/fakes.h"
#include "routing.h"
#include "session/session.h"

namespace portico::proxy::session_testing {

using fakes::FakeHost;
using fakes::FakeTransport;
// The matchers and literals the session tests use, declared once here: a
// test file's `using namespace session_testing;` brings them in.
using ::testing::ElementsAre;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;
using namespace std::chrono_literals;
using namespace std::string_literals;

inline constexpr std::string_view kGreetingSaslIr =
    "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n";
inline constexpr std::string_view kGreetingNoSaslIr =
    "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n";
inline constexpr std::string_view kPlainAliceSecret = "AGFsaWNlAHNlY3JldA==";  // "\0alice\0secret"
inline constexpr std::size_t kBackends = 3;

// Stats slots deliberately differ from backend indices.
inline std::size_t slotOf(std::size_t backend_index) {
  return 4 + 3 * backend_index;
}

// Splits CRLF-terminated output into lines without their CRLF.
inline std::vector<std::string> lines(const std::string& text) {
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

inline Config baseConfig() {
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

}  // namespace portico::proxy::session_testing
