// LookupStage (cache + metrics around a directory) on the fake loop and a
// scripted directory: exactly-once delivery, nothing from inside lookup(),
// cancellation through PendingLookup, the cache policy and the counters.
#include "lookup/lookup_stage.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fakes.h"

namespace portico::proxy {
namespace {

using namespace std::chrono_literals;
using fakes::FakeLoop;
using fakes::FakeTimer;

class FakeLookupLoop final : public LookupLoop {
 public:
  uv_loop_t* uvLoop() override { return nullptr; }
  std::chrono::steady_clock::time_point now() override { return loop.now(); }
  TimerPtr createTimer(std::function<void()> callback) override {
    return std::make_unique<FakeTimer>(loop, std::move(callback));
  }
  FakeLoop loop;
};

// Records each query; the test answers them. Honours the contract unless
// told to misbehave (answer after a cancel).
class ScriptedDirectory final : public DirectoryLookup {
 public:
  struct Query {
    LookupRequest request;
    LookupCallback callback;
    bool cancelled = false;
    bool answered = false;
  };

  LookupId lookup(const LookupRequest& request, LookupCallback callback) override {
    LookupId id = next_++;
    queries[id] = Query{request, std::move(callback)};
    order.push_back(id);
    return id;
  }
  void cancel(LookupId id) override {
    auto it = queries.find(id);
    if (it != queries.end()) {
      it->second.cancelled = true;
    }
  }
  // Delivers an answer as the loop would. `even_if_cancelled` breaks the
  // contract on purpose, to check that the stage still calls nobody.
  void answer(LookupId id, LookupResult result, bool even_if_cancelled = false) {
    Query& q = queries.at(id);
    if ((q.cancelled && !even_if_cancelled) || q.answered) {
      return;
    }
    q.answered = true;
    q.callback(std::move(result));
  }
  LookupId last() const { return order.back(); }

  std::map<LookupId, Query> queries;
  std::vector<LookupId> order;

 private:
  LookupId next_ = 100;
};

LookupResult route(const std::string& backend) {
  LookupResult r;
  r.outcome = LookupOutcome::kRoute;
  r.route.backend = backend;
  return r;
}

LookupRequest login(const std::string& user, const std::string& password = "pw") {
  LookupRequest r;
  r.user = user;
  r.password = password;
  r.client_ip = "127.0.0.1";
  return r;
}

class LookupStageTest : public ::testing::Test {
 protected:
  LookupStageTest() {
    config.cache_ttl = 60s;
    config.cache_size = 100;
    auto owned = std::make_unique<ScriptedDirectory>();
    directory = owned.get();
    stage = std::make_unique<LookupStage>(env, std::move(owned), config, stats);
  }

  // Starts a lookup whose results land in `results[name]`.
  PendingLookup start(const std::string& name, const LookupRequest& request) {
    return PendingLookup::start(
        *stage, request, [this, name](LookupResult r) { results[name].push_back(std::move(r)); });
  }

  std::uint64_t answers(LookupOutcome outcome) const {
    return stats.answers[static_cast<std::size_t>(outcome)].load();
  }

  FakeLookupLoop env;
  LookupConfig config;
  LookupStats stats;
  ScriptedDirectory* directory = nullptr;
  std::unique_ptr<LookupStage> stage;
  std::map<std::string, std::vector<LookupResult>> results;
};

TEST_F(LookupStageTest, MissAsksTheDirectoryThenHitsComeFromTheCacheAfterLookupReturns) {
  PendingLookup first = start("first", login("alice"));
  ASSERT_EQ(directory->order.size(), 1u);
  env.loop.advance(30ms);
  directory->answer(directory->last(), route("mbx1"));
  first.done();
  ASSERT_EQ(results["first"].size(), 1u);
  EXPECT_EQ(results["first"][0].describe(), "route mbx1");
  EXPECT_EQ(stats.latency_count.load(), 1u);
  EXPECT_EQ(stats.latency_sum_us.load(), 30'000u);
  EXPECT_EQ(stats.latency_buckets[5].load(), 1u) << "30 ms falls in the <= 50 ms bucket";

  PendingLookup second = start("second", login("Alice", "another password"));
  EXPECT_EQ(directory->order.size(), 1u) << "a hit does not ask the directory";
  EXPECT_TRUE(results["second"].empty()) << "never delivered from inside lookup()";
  env.loop.advance(0ms);
  second.done();
  ASSERT_EQ(results["second"].size(), 1u);
  EXPECT_EQ(results["second"][0].describe(), "route mbx1 (cached)");
  EXPECT_EQ(stats.cache_hits.load(), 1u);
  EXPECT_EQ(stats.cache_misses.load(), 1u);
  EXPECT_EQ(answers(LookupOutcome::kRoute), 2u);
  EXPECT_EQ(stats.latency_count.load(), 1u) << "cache hits are not timed";

  env.loop.advance(60s);
  PendingLookup third = start("third", login("alice"));
  EXPECT_EQ(directory->order.size(), 2u) << "expired after cache_ttl";
}

TEST_F(LookupStageTest, RefusalsAndFailuresAreNotCached) {
  for (LookupResult r : {LookupResult::unavailable("down"), LookupResult::noEntry()}) {
    PendingLookup p = start("x", login("bob"));
    directory->answer(directory->last(), r);
    p.done();
  }
  LookupResult refuse;
  refuse.outcome = LookupOutcome::kRefuse;
  refuse.reason = "Invalid login";
  PendingLookup p = start("x", login("bob"));
  directory->answer(directory->last(), refuse);
  p.done();
  PendingLookup again = start("x", login("bob"));
  EXPECT_EQ(directory->order.size(), 4u);
  EXPECT_EQ(answers(LookupOutcome::kUnavailable), 1u);
  EXPECT_EQ(answers(LookupOutcome::kNoEntry), 1u);
  EXPECT_EQ(answers(LookupOutcome::kRefuse), 1u);
}

TEST_F(LookupStageTest, AuthPassAnswerIsNotServedToAnotherPassword) {
  PendingLookup p = start("a", login("carol", "right"));
  LookupResult r = route("mbx2");
  r.backend_password = "backend-secret";
  directory->answer(directory->last(), r);
  p.done();
  PendingLookup wrong = start("wrong", login("carol", "wrong"));
  EXPECT_EQ(directory->order.size(), 2u) << "the wrong password goes to the directory";
  EXPECT_EQ(directory->queries[directory->last()].request.password, "wrong");
  PendingLookup right = start("right", login("carol", "right"));
  EXPECT_EQ(directory->order.size(), 2u);
  env.loop.advance(0ms);
  ASSERT_EQ(results["right"].size(), 1u);
  EXPECT_EQ(results["right"][0].backend_password, "backend-secret");
  EXPECT_TRUE(results["wrong"].empty());
}

TEST_F(LookupStageTest, CancelledLookupNeverCallsBack) {
  {
    PendingLookup p = start("gone", login("dave"));
    EXPECT_TRUE(p.active());
  }  // the session went away
  const LookupId inner = directory->last();
  EXPECT_TRUE(directory->queries[inner].cancelled) << "the directory hears the cancel";
  EXPECT_EQ(stats.cancelled.load(), 1u);
  // Even a directory that answers anyway reaches nobody.
  directory->answer(inner, route("mbx1"), /*even_if_cancelled=*/true);
  env.loop.advance(1s);
  EXPECT_TRUE(results["gone"].empty());
  EXPECT_EQ(stage->inFlight(), 0u);
  EXPECT_EQ(stage->cache().size(), 0u) << "a cancelled lookup's answer is not cached";
}

TEST_F(LookupStageTest, CancelledCacheHitIsNeverDelivered) {
  PendingLookup p = start("a", login("erin"));
  directory->answer(directory->last(), route("mbx1"));
  p.done();
  PendingLookup hit = start("hit", login("erin"));
  PendingLookup other = start("other", login("erin"));
  hit.cancel();
  env.loop.advance(0ms);
  EXPECT_TRUE(results["hit"].empty());
  EXPECT_EQ(results["other"].size(), 1u);
}

TEST_F(LookupStageTest, EveryLookupCompletesExactlyOnce) {
  std::vector<PendingLookup> pending;
  for (int i = 0; i < 20; ++i) {
    pending.push_back(start("u" + std::to_string(i % 5), login("user" + std::to_string(i % 5))));
  }
  // Answer the directory queries in reverse order; repeated answers are
  // ignored by the fake, and hits come from the loop.
  for (auto it = directory->order.rbegin(); it != directory->order.rend(); ++it) {
    directory->answer(*it, route("mbx1"));
    directory->answer(*it, route("mbx2"));
  }
  env.loop.advance(0ms);
  for (int u = 0; u < 5; ++u) {
    EXPECT_EQ(results["u" + std::to_string(u)].size(), 4u) << "user" << u;
  }
  EXPECT_EQ(stage->inFlight(), 0u);
}

TEST_F(LookupStageTest, FlushDropsCachedAnswers) {
  PendingLookup p = start("a", login("frank"));
  directory->answer(directory->last(), route("mbx1"));
  p.done();
  EXPECT_EQ(stage->cache().flushUser("FRANK"), 1u);
  PendingLookup again = start("b", login("frank"));
  EXPECT_EQ(directory->order.size(), 2u);
}

TEST_F(LookupStageTest, ZeroTtlAlwaysAsks) {
  config.cache_ttl = 0ms;
  auto owned = std::make_unique<ScriptedDirectory>();
  ScriptedDirectory* d = owned.get();
  LookupStage uncached(env, std::move(owned), config, stats);
  for (int i = 0; i < 3; ++i) {
    LookupId id = uncached.lookup(login("grace"), [](LookupResult) {});
    (void)id;
    d->answer(d->last(), route("mbx1"));
  }
  EXPECT_EQ(d->order.size(), 3u);
  EXPECT_EQ(stats.cache_hits.load() + stats.cache_misses.load(), 0u);
}

}  // namespace
}  // namespace portico::proxy
