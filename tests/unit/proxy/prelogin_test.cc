// PreloginDialogue on its own, through a fake PreloginOwner: the narrow
// interface is all the dialogue needs, and the login it reads arrives as
// one LoginRequest. The session's own tests (session_prelogin_test.cc,
// session_login_test.cc) cover the dialogue inside a session end to end.
#include "session/prelogin.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "session/session_internal.h"

namespace portico::proxy {
namespace {

using namespace std::string_literals;

class FakeOwner : public PreloginOwner {
 public:
  bool dialogueOpen() const override { return open; }
  void writeClient(std::string_view bytes) override { written.append(bytes); }
  void closeWithBye(std::string_view bye_line, EndReason reason, std::string_view) override {
    written.append(bye_line);
    closed = reason;
    open = false;
  }
  void notifyPrelogin(const parser::PreloginCommand&, std::string_view,
                      std::string_view result) override {
    results.emplace_back(result);
  }
  void notifyLoginCommand(const parser::PreloginCommand&, std::string_view) override {
    ++login_commands;
  }
  bool clientTls() const override { return false; }
  void upgradeClientToTls(std::shared_ptr<const ServerTlsContext>) override { ++tls_upgrades; }
  void startLogin(LoginRequest&& request) override {
    logins.push_back(std::move(request));
    open = false;  // the session leaves the dialogue while it logs in
  }
  void refuseLogin(std::string_view, std::string_view client_line) override {
    refusals.emplace_back(client_line);
  }
  WorkerStats& stats() override { return *stats_; }

  bool open = true;
  std::string written;
  std::optional<EndReason> closed;
  std::vector<std::string> results;
  int login_commands = 0;
  int tls_upgrades = 0;
  std::vector<LoginRequest> logins;
  std::vector<std::string> refusals;

 private:
  std::unique_ptr<WorkerStats> stats_ = std::make_unique<WorkerStats>();
};

class PreloginDialogueTest : public ::testing::Test {
 protected:
  void start(Config cfg = Config{}) {
    framer_.setLimits(session_detail::preloginLimits(cfg.limits));
    config_ = std::make_shared<RuntimeConfig>(std::move(cfg), std::vector<std::size_t>{});
    dialogue_ = std::make_unique<PreloginDialogue>(owner_, *config_, framer_);
  }
  void send(std::string_view bytes) {
    dialogue_->append(bytes);
    dialogue_->process();
  }

  FakeOwner owner_;
  parser::CommandFramer framer_;
  RuntimeConfigPtr config_;
  PreloginDialoguePtr dialogue_;
};

TEST_F(PreloginDialogueTest, LoginIsHandedOverAsOneRequest) {
  start();
  send("a1 NOOP\r\na2 LOGIN alice \"s3cret pw\"\r\na3 SELECT INBOX\r\n");
  EXPECT_EQ(owner_.written, "a1 OK NOOP completed.\r\n");
  ASSERT_EQ(owner_.logins.size(), 1u);
  const LoginRequest& login = owner_.logins[0];
  EXPECT_EQ(login.kind, LoginRequest::Kind::kLogin);
  EXPECT_EQ(login.tag, "a2");
  EXPECT_EQ(login.user, "alice");
  EXPECT_EQ(login.password, "s3cret pw");
  EXPECT_EQ(owner_.login_commands, 1);
  // The session no longer reads the dialogue: what was pipelined waits,
  // untouched, for the relay.
  EXPECT_FALSE(dialogue_->processing());
  EXPECT_EQ(dialogue_->takePending(), "a3 SELECT INBOX\r\n");
  EXPECT_TRUE(dialogue_->idle());
}

TEST_F(PreloginDialogueTest, AuthenticateWaitsForItsSaslLine) {
  start();
  const std::string sasl = parser::encodeBase64("\0bob\0pw"s);
  send("t1 AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(owner_.written, "+ \r\n");
  EXPECT_TRUE(dialogue_->awaitingSasl());
  EXPECT_FALSE(dialogue_->idle());
  send(sasl.substr(0, 3));  // a line in two reads
  EXPECT_TRUE(owner_.logins.empty());
  send(sasl.substr(3) + "\r\n");
  EXPECT_FALSE(dialogue_->awaitingSasl());
  ASSERT_EQ(owner_.logins.size(), 1u);
  const LoginRequest& login = owner_.logins[0];
  EXPECT_EQ(login.kind, LoginRequest::Kind::kAuthenticate);
  EXPECT_EQ(login.tag, "t1");
  EXPECT_EQ(login.user, "bob");
  EXPECT_EQ(login.mechanism, "PLAIN");
  EXPECT_EQ(login.sasl, sasl);
  EXPECT_TRUE(login.password.empty());
}

TEST_F(PreloginDialogueTest, SaslWithoutAUserIsRefusedByTheOwner) {
  start();
  send("t1 AUTHENTICATE PLAIN " + parser::encodeBase64("\0\0pw"s) + "\r\n");
  EXPECT_TRUE(owner_.logins.empty());
  ASSERT_EQ(owner_.refusals.size(), 1u);
  EXPECT_EQ(owner_.refusals[0], "t1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
}

TEST_F(PreloginDialogueTest, NothingIsAnsweredWhileTheOwnerIsBusy) {
  start();
  owner_.open = false;  // a login or its failed-login delay in progress
  send("a1 NOOP\r\n");
  EXPECT_EQ(owner_.written, "");
  EXPECT_FALSE(dialogue_->idle());
  owner_.open = true;
  dialogue_->process();
  EXPECT_EQ(owner_.written, "a1 OK NOOP completed.\r\n");
  EXPECT_TRUE(dialogue_->idle());
}

TEST_F(PreloginDialogueTest, BadCommandsInARowEndTheSession) {
  Config cfg;
  cfg.limits.max_bad_commands = 2;
  start(cfg);
  send("a1 FETCH 1 BODY[]\r\na2 NOOP\r\na3 SELECT INBOX\r\na4 LIST \"\" *\r\n");
  EXPECT_EQ(owner_.written,
            "a1 BAD Command not allowed before login\r\n"
            "a2 OK NOOP completed.\r\n"  // resets the count
            "a3 BAD Command not allowed before login\r\n"
            "a4 BAD Command not allowed before login\r\n"
            "* BYE Too many invalid commands\r\n");
  EXPECT_EQ(owner_.closed, EndReason::kTooManyInvalidCommands);
  EXPECT_EQ(owner_.stats().prelogin_bad_commands.get(), 3u);
}

TEST_F(PreloginDialogueTest, StarttlsDropsWhatWasPipelinedInPlaintext) {
  start();
  dialogue_->setListener(TlsMode::kStarttls, false, nullptr);
  EXPECT_NE(dialogue_->capabilities().find("STARTTLS"), std::string::npos);
  send("s1 STARTTLS\r\ns2 LOGIN mallory pw\r\n");
  EXPECT_EQ(owner_.written, "s1 OK Begin TLS negotiation now.\r\n");
  EXPECT_EQ(owner_.tls_upgrades, 1);
  EXPECT_TRUE(owner_.logins.empty());
  EXPECT_TRUE(dialogue_->idle());
}

TEST_F(PreloginDialogueTest, TheFailedLoginDelayHoldsOneAnswer) {
  start();
  dialogue_->holdReply("a1 NO [AUTHENTICATIONFAILED] no\r\n");
  EXPECT_EQ(dialogue_->takeHeldReply(), "a1 NO [AUTHENTICATIONFAILED] no\r\n");
  EXPECT_EQ(dialogue_->takeHeldReply(), "");
}

}  // namespace
}  // namespace portico::proxy
