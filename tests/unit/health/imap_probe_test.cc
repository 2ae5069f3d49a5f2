// ImapProbe against an in-test libuv IMAP server on 127.0.0.1: success,
// wrong password, a server that never greets, connection refused, retries,
// cancel. Every test ends with a loop that has no live handle.
#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <optional>
#include <string>

#include "../../../health/src/imap_probe.h"
#include "fake_imap_server.h"
#include "portico/health.h"

namespace portico::health {

inline void PrintTo(ResultType type, std::ostream* os) {
  *os << resultTypeName(type);
}
inline void PrintTo(ProbeStep step, std::ostream* os) {
  *os << probeStepName(step);
}

namespace {

using fakes::FakeImapServer;

class ImapProbeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle is still open";
  }

  ImapProbeSpec spec(std::uint16_t port, bool login) {
    ImapProbeSpec s;
    s.probe = login ? "ImapDeepTestProbe" : "ImapSelfTestProbe";
    s.health_set = "IMAP.Protocol";
    s.target = "mbx1";
    s.endpoint = Endpoint{"127.0.0.1", port, false};
    s.login = login;
    s.select = login;
    s.user = "probe";
    s.password = "s3cret-pw";
    s.timeout = Millis(5'000);
    return s;
  }

  // Runs one probe to completion, then stops the server.
  ProbeResult run(ImapProbeSpec s, FakeImapServer* server) {
    std::optional<ProbeResult> out;
    ImapProbe::start(&loop_, std::move(s), [&](ProbeResult r) {
      out = std::move(r);
      if (server != nullptr) {
        server->stop();
      }
    });
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_TRUE(out.has_value());
    return out.value_or(ProbeResult{});
  }

  // A port nobody listens on: bind an ephemeral one, then close it.
  std::uint16_t closedPort() {
    FakeImapServer server(&loop_, {});
    const std::uint16_t port = server.port();
    server.stop();
    uv_run(&loop_, UV_RUN_DEFAULT);
    return port;
  }

  static std::string joined(const ProbeResult& r) {
    std::string all = r.error;
    for (const auto& line : r.trace) {
      all += "\n" + line;
    }
    return all;
  }

  uv_loop_t loop_{};
};

TEST_F(ImapProbeTest, FullProbeSucceeds) {
  FakeImapServer server(&loop_, {});
  const ProbeResult r = run(spec(server.port(), true), &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_EQ(r.failed_step, ProbeStep::kDone);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.probe, "ImapDeepTestProbe");
  EXPECT_EQ(r.health_set, "IMAP.Protocol");
  EXPECT_EQ(r.target, "mbx1");
  EXPECT_EQ(r.retry_count, 0u);
  EXPECT_GT(r.sample_ms, 0);
  EXPECT_LE(r.start, r.end);
  ASSERT_EQ(r.trace.size(), 6u) << joined(r);
  EXPECT_TRUE(r.trace[0].starts_with("connect 127.0.0.1:")) << r.trace[0];
  EXPECT_TRUE(r.trace[1].starts_with("greeting OK ")) << r.trace[1];
  EXPECT_TRUE(r.trace[2].starts_with("CAPABILITY OK ")) << r.trace[2];
  EXPECT_TRUE(r.trace[3].starts_with("LOGIN probe ***** OK ")) << r.trace[3];
  EXPECT_TRUE(r.trace[4].starts_with("SELECT INBOX OK ")) << r.trace[4];
  EXPECT_TRUE(r.trace[5].starts_with("LOGOUT OK ")) << r.trace[5];
  EXPECT_TRUE(r.trace[3].ends_with("ms")) << r.trace[3];
  EXPECT_EQ(joined(r).find("s3cret-pw"), std::string::npos);
  // The password did travel, quoted, to the server.
  ASSERT_GE(server.received().size(), 2u);
  EXPECT_EQ(server.received()[1], "p2 LOGIN \"probe\" \"s3cret-pw\"");
}

TEST_F(ImapProbeTest, CapabilityOnlyProbeSucceeds) {
  FakeImapServer server(&loop_, {});
  const ProbeResult r = run(spec(server.port(), false), &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  ASSERT_EQ(r.trace.size(), 4u) << joined(r);
  EXPECT_TRUE(r.trace[3].starts_with("LOGOUT OK")) << joined(r);
  for (const auto& line : server.received()) {
    EXPECT_EQ(line.find("LOGIN"), std::string::npos);
  }
}

TEST_F(ImapProbeTest, WrongPasswordFailsAtLoginWithoutLeakingIt) {
  FakeImapServer::Options options;
  options.echo_password = true;  // a careless server that repeats what it got
  FakeImapServer server(&loop_, options);
  ImapProbeSpec s = spec(server.port(), true);
  s.password = "Wr0ng-Pass\"word";
  s.retries = 2;
  s.retry_delay = Millis(1);
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kLogin);
  EXPECT_EQ(r.retry_count, 2u);
  EXPECT_TRUE(r.error.starts_with("NO [AUTHENTICATIONFAILED]")) << r.error;
  const std::string all = joined(r);
  EXPECT_EQ(all.find("Wr0ng"), std::string::npos) << all;
  EXPECT_NE(all.find("LOGIN probe ***** NO"), std::string::npos) << all;
  EXPECT_NE(all.find("retry 2 of 2"), std::string::npos) << all;
  EXPECT_EQ(server.connections(), 3);
}

TEST_F(ImapProbeTest, ServerThatNeverGreetsTimesOutAtGreeting) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kSilent);
  ImapProbeSpec s = spec(server.port(), true);
  s.timeout = Millis(300);
  s.retries = 3;  // no time is left for them
  const auto start = std::chrono::steady_clock::now();
  const ProbeResult r = run(s, &server);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.result, ResultType::kTimedOut);
  EXPECT_EQ(r.failed_step, ProbeStep::kGreeting);
  EXPECT_NE(r.error.find("timed out in greeting"), std::string::npos) << r.error;
  EXPECT_GE(took, Millis(290));
  EXPECT_LT(took, Millis(1'500));
  EXPECT_GE(r.sample_ms, 290);
}

TEST_F(ImapProbeTest, ConnectionRefusedFailsAtConnect) {
  const std::uint16_t port = closedPort();
  const ProbeResult r = run(spec(port, false), nullptr);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kConnect);
  EXPECT_NE(r.error.find("refused"), std::string::npos) << r.error;
  ASSERT_EQ(r.trace.size(), 1u);
  EXPECT_TRUE(r.trace[0].starts_with("connect 127.0.0.1:")) << r.trace[0];
}

TEST_F(ImapProbeTest, RetriesWithinOneExecution) {
  const std::uint16_t port = closedPort();
  ImapProbeSpec s = spec(port, false);
  s.retries = 2;
  s.retry_delay = Millis(5);
  const ProbeResult r = run(s, nullptr);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.retry_count, 2u);
  EXPECT_EQ(r.trace.size(), 5u) << joined(r);  // 3 failures, 2 "retry" lines
}

TEST_F(ImapProbeTest, RetrySucceedsAfterAFailedAttempt) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kHangUp);
  ImapProbeSpec s = spec(server.port(), false);
  s.retries = 3;
  s.retry_delay = Millis(50);
  uv_timer_t flip;
  uv_timer_init(&loop_, &flip);
  flip.data = &server;
  uv_timer_start(
      &flip,
      [](uv_timer_t* t) {
        static_cast<FakeImapServer*>(t->data)->setMode(FakeImapServer::Mode::kNormal);
        uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
      },
      10, 0);
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_EQ(r.retry_count, 1u);
  EXPECT_NE(joined(r).find("connection closed by the server"), std::string::npos);
}

TEST_F(ImapProbeTest, HangUpFailsAtGreeting) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kHangUp);
  const ProbeResult r = run(spec(server.port(), false), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kGreeting);
  EXPECT_EQ(r.error, "connection closed by the server");
}

TEST_F(ImapProbeTest, LoginDisabledFailsWithoutSendingThePassword) {
  FakeImapServer::Options options;
  options.login_disabled = true;
  FakeImapServer server(&loop_, options);
  const ProbeResult r = run(spec(server.port(), true), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kLogin);
  EXPECT_NE(r.error.find("LOGINDISABLED"), std::string::npos);
  for (const auto& line : server.received()) {
    EXPECT_EQ(line.find("s3cret"), std::string::npos);
  }
}

TEST_F(ImapProbeTest, TlsIsNotImplementedYet) {
  ImapProbeSpec s = spec(1, false);
  s.tls = ProbeTls::kImplicit;
  const ProbeResult r = run(s, nullptr);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
}

TEST_F(ImapProbeTest, CancelEndsItAsFailed) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kSilent);
  std::optional<ProbeResult> out;
  ImapProbe* probe = ImapProbe::start(&loop_, spec(server.port(), false), [&](ProbeResult r) {
    out = std::move(r);
    server.stop();
  });
  uv_timer_t timer;
  uv_timer_init(&loop_, &timer);
  timer.data = probe;
  uv_timer_start(
      &timer,
      [](uv_timer_t* t) {
        static_cast<ImapProbe*>(t->data)->cancel();
        uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
      },
      20, 0);
  uv_run(&loop_, UV_RUN_DEFAULT);
  ASSERT_TRUE(out);
  EXPECT_EQ(out->result, ResultType::kFailed);
  EXPECT_EQ(out->error, "cancelled");
  EXPECT_EQ(out->failed_step, ProbeStep::kGreeting);
}

}  // namespace
}  // namespace portico::health
