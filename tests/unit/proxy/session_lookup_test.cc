// Session with a directory lookup (session_testing.h): routing where the
// directory says, overrides, cancellation, refusals and the auth wait.

#include "session/session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lookup/lookup_stage.h"
#include "proxy/session_testing.h"

namespace portico::proxy {
namespace {

using namespace session_testing;

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
