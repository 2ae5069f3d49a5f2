// BackendPool ([backend_pool]): its numbers (PoolPlan) on their own, the
// login client's hold before the login, and the pool with real Sessions
// over the fake host: pooled connections are greeted ahead, handed to a
// LOGIN that then costs one round trip, never handed out once dead, and a
// taken one that dies falls back to a fresh connect the client never sees.
#include "session/backend_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "proxy/fakes.h"
#include "session/session.h"

namespace portico::proxy {
namespace {

using fakes::FakeHost;
using fakes::FakeTransport;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using namespace std::chrono_literals;

using Clock = std::chrono::steady_clock;

constexpr std::string_view kGreeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n";

// ---------------------------------------------------------------------------
// PoolPlan

TEST(PoolPlanTest, OpensUpToTargetCountingThoseStillOpening) {
  PoolPlan plan;
  Clock::time_point now{};
  EXPECT_EQ(plan.toOpen(0, now), 0u);
  EXPECT_EQ(plan.toOpen(1, now), 1u);
  EXPECT_EQ(plan.toOpen(8, now), 8u);
  plan.opening();
  plan.opening();
  EXPECT_EQ(plan.toOpen(2, now), 0u) << "two already opening";
  EXPECT_EQ(plan.toOpen(8, now), 6u);
  plan.opened();
  EXPECT_EQ(plan.toOpen(2, now), 0u) << "one ready and one opening make two";
  EXPECT_EQ(plan.toOpen(3, now), 1u);
  plan.readyGone();
  EXPECT_EQ(plan.ready(), 0u);
  EXPECT_EQ(plan.toOpen(2, now), 1u);
}

TEST(PoolPlanTest, FailuresBackOffDoublingUpToTheCapAndASuccessResets) {
  PoolPlan plan;
  Clock::time_point now{};
  std::vector<std::chrono::milliseconds> waits;
  for (int i = 0; i < 10; ++i) {
    plan.opening();
    plan.failed(now);
    waits.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(plan.retryAt() - now));
    EXPECT_EQ(plan.toOpen(2, now), 0u) << "no refill while backing off";
    EXPECT_EQ(plan.toOpen(2, plan.retryAt() - 1ms), 0u);
    EXPECT_EQ(plan.toOpen(2, plan.retryAt()), 2u);
  }
  EXPECT_EQ(waits[0], PoolPlan::kFirstBackoff);
  EXPECT_EQ(waits[1], 2 * PoolPlan::kFirstBackoff);
  EXPECT_EQ(waits[2], 4 * PoolPlan::kFirstBackoff);
  EXPECT_EQ(waits.back(), PoolPlan::kMaxBackoff);
  plan.opening();
  plan.opened();
  EXPECT_EQ(plan.failures(), 0u);
  EXPECT_EQ(plan.toOpen(3, now), 2u) << "a success ends the backoff (one is ready)";
  plan.readyLost(now);
  EXPECT_EQ(plan.ready(), 0u);
  EXPECT_EQ(plan.toOpen(3, now), 0u) << "a ready connection lost backs off too";
}

TEST(PoolPlanTest, AbandonedIsNoFailure) {
  PoolPlan plan;
  Clock::time_point now{};
  plan.opening();
  plan.abandoned();
  EXPECT_EQ(plan.connecting(), 0u);
  EXPECT_EQ(plan.failures(), 0u);
  EXPECT_EQ(plan.toOpen(1, now), 1u);
}

// ---------------------------------------------------------------------------
// BackendLoginClient held before the login.

TEST(BackendLoginHoldTest, StopsAfterGreetingThenResumesWithTheLogin) {
  BackendLoginParams hold;
  hold.hold_before_login = true;
  BackendLoginClient client(std::move(hold));
  client.feed(kGreeting);
  EXPECT_EQ(client.next().type, BackendLoginEventType::kNeedMore);
  EXPECT_EQ(client.state(), BackendLoginClient::State::kReady);
  EXPECT_EQ(client.output(), "");
  EXPECT_FALSE(client.loginSent());

  BackendLoginParams login;
  login.tag = "a1";
  login.user = "alice";
  login.password = "secret";
  login.id_command = "P0ID ID (\"x-session-id\" \"1\")\r\n";
  client.resumeLogin(std::move(login));
  EXPECT_EQ(client.output(), "P0ID ID (\"x-session-id\" \"1\")\r\n");
  client.clearOutput();
  client.feed("* ID NIL\r\nP0ID OK done\r\n");
  EXPECT_EQ(client.next().type, BackendLoginEventType::kNeedMore);
  EXPECT_EQ(client.output(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  client.clearOutput();
  client.feed("a1 OK Logged in\r\n");
  EXPECT_EQ(client.next().type, BackendLoginEventType::kLoggedIn);
}

TEST(BackendLoginHoldTest, StarttlsAndCapabilityHappenBeforeTheHold) {
  BackendLoginParams hold;
  hold.hold_before_login = true;
  hold.starttls = true;
  BackendLoginClient client(std::move(hold));
  client.feed("* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n");
  EXPECT_EQ(client.next().type, BackendLoginEventType::kNeedMore);
  EXPECT_EQ(client.output(), "P0TLS STARTTLS\r\n");
  client.clearOutput();
  client.feed("P0TLS OK go\r\n");
  EXPECT_EQ(client.next().type, BackendLoginEventType::kStartTls);
  client.tlsEstablished();
  EXPECT_EQ(client.output(), "P0CAP CAPABILITY\r\n");
  client.clearOutput();
  client.feed("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nP0CAP OK done\r\n");
  EXPECT_EQ(client.next().type, BackendLoginEventType::kNeedMore);
  EXPECT_EQ(client.state(), BackendLoginClient::State::kReady);
  EXPECT_EQ(client.output(), "");
}

TEST(BackendLoginHoldTest, AnyLineWhileHeldFails) {
  BackendLoginParams hold;
  hold.hold_before_login = true;
  BackendLoginClient client(std::move(hold));
  client.feed(kGreeting);
  EXPECT_EQ(client.next().type, BackendLoginEventType::kNeedMore);
  client.feed("* BYE Disconnected for inactivity.\r\n");
  EXPECT_EQ(client.next().type, BackendLoginEventType::kFailed);
}

// ---------------------------------------------------------------------------
// The pool with sessions over the fake host.

std::size_t slotOf(std::size_t index) {
  return 2 + index;
}

class BackendPoolTest : public ::testing::Test {
 protected:
  void SetUp() override { host_.setBackendPool(&pool_); }
  void TearDown() override {
    pool_.shutdown();
    host_.runPending();
    EXPECT_THAT(host_.violations(), IsEmpty());
    EXPECT_EQ(host_.loop().armedTimers(), 0u) << "a timer outlived the pool";
  }

  void configure(std::uint32_t size, bool proxy_protocol = false) {
    Config cfg;
    BackendConfig backend;
    backend.name = "mbx1";
    backend.address = HostPort{"10.1.0.1", 143, false};
    backend.proxy_protocol = proxy_protocol;
    cfg.backends.push_back(backend);
    cfg.backend_pool.size = size;
    cfg.backend_pool.idle_timeout = 4s;
    auto runtime = std::make_shared<RuntimeConfig>(std::move(cfg), std::vector<std::size_t>{2});
    runtime->backend_tls.resize(1);
    runtime_ = std::move(runtime);
    pool_.configure(runtime_);
  }
  BackendStats& stats() { return host_.stats().backend(slotOf(0)); }

  // Connects and greets every backend connection not yet greeted.
  void greetAll() {
    for (std::size_t i = greeted_; i < host_.connects().size(); ++i) {
      FakeTransport* t = host_.connects()[i].transport;
      t->connectOk();
      t->deliver(kGreeting);
    }
    greeted_ = host_.connects().size();
  }

  // A session whose client has sent LOGIN.
  FakeTransport* login(std::string tag = "a1") {
    FakeTransport* client = host_.newClient();
    auto* session = new Session(host_, runtime_, client, 0x77);
    session->start();
    client->takeWritten();
    client->deliver(tag + " LOGIN alice secret\r\n");
    return client;
  }

  FakeHost host_;
  BackendPool pool_{host_};
  RuntimeConfigPtr runtime_;
  std::size_t greeted_ = 0;
};

TEST_F(BackendPoolTest, NoPoolByDefault) {
  configure(0);
  EXPECT_EQ(host_.connects().size(), 0u);
  host_.advance(5s);
  EXPECT_EQ(host_.connects().size(), 0u);
}

TEST_F(BackendPoolTest, LoginTakesAGreetedConnectionAndSendsTheLoginAtOnce) {
  configure(2);
  ASSERT_EQ(host_.connects().size(), 2u) << "the pool fills at start";
  greetAll();
  EXPECT_EQ(stats().pool_ready.get(), 2u);
  EXPECT_EQ(stats().pool_opened.get(), 2u);
  FakeTransport* pooled = host_.connects()[1].transport;
  EXPECT_EQ(pooled->takeWritten(), "") << "nothing but the greeting before a login";

  FakeTransport* client = login();
  EXPECT_EQ(stats().pool_hits.get(), 1u);
  EXPECT_EQ(pooled->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n")
      << "the newest pooled connection carries the login at once";
  ASSERT_EQ(host_.connects().size(), 2u)
      << "no refill while the backend works on the login: it would compete with it";
  pooled->deliver("a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
  EXPECT_EQ(client->takeWritten(), "a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
  ASSERT_EQ(host_.connects().size(), 3u) << "refilled once the login was answered";
  EXPECT_EQ(stats().sessions_current.get(), 1u);
  EXPECT_EQ(stats().connect_failures.get(), 0u);
  client->peerClose();
  host_.runPending();
}

// The backend closed the pooled connection (or said BYE) just before the
// take, unseen until the LOGIN went out on it.
class TakenConnectionDiesTest : public BackendPoolTest,
                                public ::testing::WithParamInterface<bool> {};

TEST_P(TakenConnectionDiesTest, FallsBackToAFreshConnectTheClientNeverSees) {
  configure(1);
  greetAll();
  FakeTransport* pooled = host_.connects()[0].transport;
  FakeTransport* client = login();
  ASSERT_EQ(stats().pool_hits.get(), 1u);
  ASSERT_EQ(host_.connects().size(), 1u) << "no refill before the login's answer";
  if (GetParam()) {
    pooled->deliver("* BYE Disconnected for inactivity.\r\n");
  } else {
    pooled->peerClose();
  }
  host_.runPending();
  EXPECT_EQ(stats().pool_stale.get(), 1u);
  ASSERT_EQ(host_.connects().size(), 3u)
      << "the pool refills and the session connects afresh, not from the pool";
  EXPECT_EQ(host_.connects()[1].transport->takeWritten(), "") << "the refill carries no login";
  FakeTransport* fresh = host_.lastBackend();
  fresh->connectOk();
  fresh->deliver(kGreeting);
  EXPECT_EQ(fresh->takeWritten(), "a1 LOGIN \"alice\" \"secret\"\r\n");
  fresh->deliver("a1 OK Logged in\r\n");
  EXPECT_EQ(client->takeWritten(), "a1 OK Logged in\r\n") << "the client saw nothing else";
  EXPECT_EQ(stats().connect_failures.get(), 0u);
  EXPECT_EQ(stats().sessions_current.get(), 1u);
  EXPECT_EQ(host_.stats().logins_unavailable.get(), 0u);
  client->peerClose();
  host_.runPending();
}

INSTANTIATE_TEST_SUITE_P(ByeOrEof, TakenConnectionDiesTest, ::testing::Bool());

TEST_F(BackendPoolTest, ARefusedLoginRefillsAndAVanishedClientLeavesItToTheTick) {
  configure(1);
  greetAll();
  FakeTransport* pooled = host_.connects()[0].transport;
  FakeTransport* client = login();
  ASSERT_EQ(stats().pool_hits.get(), 1u);
  ASSERT_EQ(host_.connects().size(), 1u);
  pooled->deliver("a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 2u) << "the refused login's answer refills too";
  greetAll();

  // A client that leaves while its pooled login is at the backend: the
  // session never hears the answer, so the pool's tick refills.
  FakeTransport* second = login("b1");
  ASSERT_EQ(stats().pool_hits.get(), 2u);
  ASSERT_EQ(host_.connects().size(), 2u);
  second->peerClose();
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 2u);
  host_.advance(1s);
  EXPECT_EQ(host_.connects().size(), 3u) << "refilled by the tick";
  client->peerClose();
  host_.runPending();
}

TEST_F(BackendPoolTest, AConnectionTheBackendSpeaksOnIsNeverHandedOut) {
  configure(1);
  greetAll();
  FakeTransport* pooled = host_.connects()[0].transport;
  pooled->deliver("* BYE Autologout\r\n");
  host_.runPending();
  EXPECT_TRUE(pooled->closed());
  EXPECT_EQ(stats().pool_lost.get(), 1u);
  EXPECT_EQ(stats().pool_ready.get(), 0u);
  FakeTransport* client = login();
  EXPECT_EQ(stats().pool_misses.get(), 1u);
  EXPECT_EQ(stats().pool_hits.get(), 0u);
  EXPECT_EQ(pooled->writtenAfterClose(), "");
  client->peerClose();
  host_.runPending();
}

TEST_F(BackendPoolTest, IdleConnectionsExpireAndAreReplaced) {
  configure(1);
  greetAll();
  FakeTransport* pooled = host_.connects()[0].transport;
  host_.advance(3s);
  EXPECT_FALSE(pooled->closeCalled()) << "not yet idle_timeout";
  host_.advance(2s);
  host_.runPending();
  EXPECT_TRUE(pooled->closed());
  EXPECT_EQ(stats().pool_expired.get(), 1u);
  EXPECT_EQ(host_.connects().size(), 2u) << "replaced";
}

TEST_F(BackendPoolTest, AProxyProtocolBackendNeverGetsAPool) {
  configure(4, true);
  host_.advance(3s);
  EXPECT_EQ(host_.connects().size(), 0u);
  FakeTransport* client = login();
  EXPECT_EQ(stats().pool_misses.get(), 0u) << "not even a miss: no pool at all";
  EXPECT_EQ(host_.connects().size(), 1u) << "the session's own connect";
  client->peerClose();
  host_.runPending();
}

TEST_F(BackendPoolTest, ADrainedBackendsPoolIsEmptiedAndNotRefilled) {
  configure(2);
  greetAll();
  host_.shared().drained_by_operator[slotOf(0)] = true;
  host_.advance(1s);
  host_.runPending();
  EXPECT_TRUE(host_.connects()[0].transport->closed());
  EXPECT_TRUE(host_.connects()[1].transport->closed());
  EXPECT_EQ(stats().pool_ready.get(), 0u);
  host_.advance(5s);
  EXPECT_EQ(host_.connects().size(), 2u) << "no refill while drained";
  host_.shared().drained_by_operator[slotOf(0)] = false;
  host_.advance(1s);
  EXPECT_EQ(host_.connects().size(), 4u) << "refilled once enabled";
}

TEST_F(BackendPoolTest, ABackendThatRefusesConnectionsIsRetriedWithBackoff) {
  configure(1);
  ASSERT_EQ(host_.connects().size(), 1u);
  for (int round = 0; round < 6; ++round) {
    host_.connects().back().transport->connectFail();
    host_.runPending();
    std::size_t before = host_.connects().size();
    host_.advance(PoolPlan::kFirstBackoff * (1 << round) - 10ms);
    EXPECT_EQ(host_.connects().size(), before) << "round " << round << ": retried too soon";
    host_.advance(1200ms);  // the tick's period, after the backoff
    EXPECT_EQ(host_.connects().size(), before + 1) << "round " << round;
  }
  EXPECT_EQ(stats().pool_lost.get(), 6u);
}

}  // namespace
}  // namespace portico::proxy
