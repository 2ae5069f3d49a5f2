// SessionObserver: a test observer sees a session's events in the order
// they happen on the wire, with the values the protocol log and the
// counters are built from, and never a password.
#include "session/session_observer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "proxy/fakes.h"
#include "session/session.h"

namespace portico::proxy {
namespace {

using fakes::FakeHost;
using fakes::FakeTransport;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

class RecordingObserver final : public SessionObserver {
 public:
  std::vector<std::string> events;

  void onConnect(const Session& session, std::string_view greeting, bool tls) override {
    events.push_back(fmt("connect", session) + " " + std::string(greeting) +
                     (tls ? " tls" : " plain"));
  }
  void onPreloginCommand(const Session& session, const parser::PreloginCommand& command,
                         std::string_view bytes, std::string_view result) override {
    events.push_back(fmt("prelogin", session) + " " + command.name + " " +
                     std::to_string(bytes.size()) + " " + std::string(result));
  }
  void onLoginCommand(const Session& session, const parser::PreloginCommand& command,
                      std::string_view bytes) override {
    (void)bytes;
    events.push_back(fmt("login-command", session) + " " + command.name);
  }
  void onLoginDone(const Session& session, const LoginOutcome& outcome) override {
    events.push_back(fmt("login-done", session) + (outcome.ok ? " ok " : " failed ") +
                     std::string(outcome.result) + (outcome.backend ? " stats" : ""));
  }
  void onCommandSent(const Session& session, const parser::CommandEvent& event,
                     CommandId command) override {
    events.push_back(fmt("sent", session) + " " + std::string(event.tag) + " " +
                     commandName(command));
  }
  void onCommandCompleted(const Session& session, const CompletedCommand& command) override {
    events.push_back(
        fmt("completed", session) + " " + std::string(command.tag) + " " +
        commandName(command.command) + " " + parser::statusName(command.status) + " [" +
        std::string(command.result) + "] " + std::to_string(command.request_bytes) + "/" +
        std::to_string(command.response_bytes) + " " + std::to_string(command.time.count()) + "us");
  }
  void onLocalCommand(const Session& session, CommandId command, std::string_view parameters,
                      std::string_view result, parser::Status status, std::uint64_t request_bytes,
                      std::uint64_t response_bytes) override {
    (void)request_bytes, (void)response_bytes, (void)status;
    events.push_back(fmt("local", session) + " " + commandName(command) + " " +
                     std::string(parameters) + " " + std::string(result));
  }
  void onSessionEnd(const Session& session, EndReason reason, std::string_view text,
                    std::chrono::milliseconds duration) override {
    (void)duration;
    events.push_back(fmt("end", session) + " " + std::string(endReasonText(reason)) + " " +
                     std::string(text));
  }

 private:
  // The event with the user the session knows at that moment.
  static std::string fmt(const char* name, const Session& session) {
    return std::string(name) + "(" + session.user() + ")";
  }
};

Config oneBackend() {
  Config cfg;
  cfg.greeting = "Portico ready.";
  BackendConfig backend;
  backend.name = "mbx1";
  backend.address = HostPort{"10.1.0.1", 143, false};
  cfg.backends.push_back(backend);
  return cfg;
}

class SessionObserverTest : public ::testing::Test {
 protected:
  void start() {
    auto runtime = std::make_shared<RuntimeConfig>(oneBackend(), std::vector<std::size_t>{0});
    runtime->backend_tls.resize(1);
    runtime_ = std::move(runtime);
    client_ = host_.newClient();
    session_ = new Session(host_, runtime_, client_, 7);  // deleted by the host when it ends
    session_->addObserver(&observer_);
    session_->start();
  }

  FakeHost host_;
  RuntimeConfigPtr runtime_;
  FakeTransport* client_ = nullptr;
  Session* session_ = nullptr;
  RecordingObserver observer_;
};

TEST_F(SessionObserverTest, SeesTheSessionsEventsInOrder) {
  start();
  client_->deliver("c1 CAPABILITY\r\n");
  client_->deliver("c2 FETCH 1 BODY[]\r\n");  // not before login: BAD
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr);
  backend->connectOk();
  backend->deliver("* OK [CAPABILITY IMAP4rev1] ready\r\n");
  backend->deliver("a1 OK Logged in\r\n");
  host_.runPending();
  client_->deliver("a2 SELECT INBOX\r\na3 NOOP\r\n");
  host_.advance(std::chrono::milliseconds(5));
  backend->deliver("* 2 EXISTS\r\na2 OK [READ-WRITE] done\r\n");
  client_->deliver("a4 COMPRESS BOGUS\r\n");
  client_->deliver("a5 LOGOUT\r\n");
  backend->deliver("* BYE bye\r\na5 OK LOGOUT completed\r\n");
  backend->close();
  host_.runPending();
  client_->close();
  host_.runPending();
  ASSERT_EQ(host_.endedCount(), 1);

  // The login command comes before its user is taken; a3 is never
  // answered, so the BYE counts as its data, not LOGOUT's.
  EXPECT_THAT(observer_.events,
              ElementsAre("connect() Portico ready. plain", "prelogin() CAPABILITY 15 OK",
                          "prelogin() FETCH 0 BAD Command not allowed before login",
                          "login-command() LOGIN", "login-done(alice) ok OK stats",
                          "sent(alice) a2 SELECT", "sent(alice) a3 NOOP",
                          "completed(alice) a2 SELECT OK [OK [READ-WRITE] done] 17/37 5000us",
                          "local(alice) COMPRESS BOGUS BAD Unknown compression mechanism.",
                          "sent(alice) a5 LOGOUT",
                          "completed(alice) a5 LOGOUT OK [OK LOGOUT completed] 11/24 0us",
                          "end(alice) logout logout"));
  for (const std::string& event : observer_.events) {
    EXPECT_THAT(event, Not(HasSubstr("secret")));
  }
}

TEST_F(SessionObserverTest, ARefusedLoginIsOneLoginDoneWithTheAnswer) {
  start();
  client_->deliver("a1 LOGIN alice wrong\r\n");
  FakeTransport* backend = host_.lastBackend();
  ASSERT_NE(backend, nullptr);
  backend->connectOk();
  backend->deliver("* OK ready\r\n");
  backend->deliver("a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
  host_.runPending();
  session_->abort(EndReason::kShutdown);
  host_.runPending();
  ASSERT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(observer_.events,
              ElementsAre("connect() Portico ready. plain", "login-command() LOGIN",
                          "login-done(alice) failed NO [AUTHENTICATIONFAILED] Invalid credentials",
                          "end(alice) shutdown shutdown"));
}

}  // namespace
}  // namespace portico::proxy
