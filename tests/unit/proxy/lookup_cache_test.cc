// LookupCache on a fake clock: TTL, positive answers only, the password
// binding of Auth-Pass answers, the size bound and flushes.
#include "lookup/lookup_cache.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace portico::proxy {
namespace {

using namespace std::chrono_literals;
using Clock = LookupCache::Clock;

const Clock::time_point kStart = Clock::time_point(100h);

LookupResult route(const std::string& backend) {
  LookupResult r;
  r.outcome = LookupOutcome::kRoute;
  r.route.backend = backend;
  return r;
}

LookupResult routeWithPass(const std::string& backend, const std::string& pass) {
  LookupResult r = route(backend);
  r.backend_password = pass;
  return r;
}

TEST(LookupCache, HitUntilTheTtlThenMiss) {
  LookupCache cache(60s, 100);
  const auto pw = cache.digest("pw");
  ASSERT_TRUE(cache.put("alice", pw, route("mbx1"), kStart));
  std::optional<LookupResult> hit = cache.get("alice", pw, kStart + 59'999ms);
  ASSERT_TRUE(hit);
  EXPECT_TRUE(hit->from_cache);
  EXPECT_EQ(hit->describe(), "route mbx1 (cached)");
  EXPECT_FALSE(cache.get("alice", pw, kStart + 60s));
  EXPECT_EQ(cache.size(), 0u) << "an expired entry goes when met";
}

TEST(LookupCache, UserIsNormalised) {
  LookupCache cache(60s, 100);
  const auto pw = cache.digest("pw");
  cache.put(" Alice@Example.ORG ", pw, route("mbx2"), kStart);
  EXPECT_TRUE(cache.get("alice@example.org", pw, kStart));
  EXPECT_FALSE(cache.get("bob@example.org", pw, kStart));
}

TEST(LookupCache, OnlyRoutesAreKept) {
  LookupCache cache(60s, 100);
  const auto pw = cache.digest("pw");
  LookupResult refuse;
  refuse.outcome = LookupOutcome::kRefuse;
  refuse.reason = "Invalid login";
  EXPECT_FALSE(cache.put("alice", pw, refuse, kStart));
  EXPECT_FALSE(cache.put("alice", pw, LookupResult::noEntry(), kStart));
  EXPECT_FALSE(cache.put("alice", pw, LookupResult::unavailable("down"), kStart));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(LookupCache, ZeroTtlDisables) {
  LookupCache cache(0ms, 100);
  EXPECT_FALSE(cache.enabled());
  const auto pw = cache.digest("pw");
  EXPECT_FALSE(cache.put("alice", pw, route("mbx1"), kStart));
  EXPECT_FALSE(cache.get("alice", pw, kStart));
}

// A route without a password override serves every password: Portico
// replays the client's own password, which the backend checks.
TEST(LookupCache, RouteWithoutPassServesAnyPassword) {
  LookupCache cache(60s, 100);
  cache.put("alice", cache.digest("right"), route("mbx1"), kStart);
  EXPECT_TRUE(cache.get("alice", cache.digest("wrong"), kStart));
}

// An Auth-Pass answer is bound to the password that produced it: a wrong
// password must go to the directory, never get the cached Auth-Pass.
TEST(LookupCache, AuthPassAnswerServesOnlyTheSamePassword) {
  LookupCache cache(60s, 100);
  cache.put("alice", cache.digest("right"), routeWithPass("mbx1", "backend-pw"), kStart);
  EXPECT_FALSE(cache.get("alice", cache.digest("wrong"), kStart));
  EXPECT_FALSE(cache.get("alice", cache.digest(""), kStart));
  std::optional<LookupResult> hit = cache.get("alice", cache.digest("right"), kStart);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->backend_password, "backend-pw");
  EXPECT_EQ(cache.size(), 1u) << "a mismatch does not evict the entry";
}

TEST(LookupCache, DigestsAreKeyedPerCache) {
  LookupCache one(60s, 10);
  LookupCache two(60s, 10);
  EXPECT_EQ(one.digest("pw"), one.digest("pw"));
  EXPECT_NE(one.digest("pw"), one.digest("pw2"));
  EXPECT_NE(one.digest("pw"), two.digest("pw")) << "a random key per cache";
}

TEST(LookupCache, NewAnswerReplacesTheOld) {
  LookupCache cache(60s, 100);
  const auto pw = cache.digest("pw");
  cache.put("alice", pw, route("mbx1"), kStart);
  cache.put("alice", pw, route("mbx2"), kStart + 30s);
  EXPECT_EQ(cache.size(), 1u);
  std::optional<LookupResult> hit = cache.get("alice", pw, kStart + 80s);
  ASSERT_TRUE(hit) << "the TTL counts from the newer answer";
  EXPECT_EQ(hit->route.backend, "mbx2");
}

TEST(LookupCache, BoundedLeastRecentlyUsedGoesFirst) {
  LookupCache cache(60s, 3);
  const auto pw = cache.digest("pw");
  cache.put("a", pw, route("mbx1"), kStart);
  cache.put("b", pw, route("mbx1"), kStart);
  cache.put("c", pw, route("mbx1"), kStart);
  EXPECT_TRUE(cache.get("a", pw, kStart));  // a is now the most recent
  cache.put("d", pw, route("mbx1"), kStart);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.evictions(), 1u);
  EXPECT_FALSE(cache.get("b", pw, kStart));
  EXPECT_TRUE(cache.get("a", pw, kStart));
  EXPECT_TRUE(cache.get("c", pw, kStart));
  EXPECT_TRUE(cache.get("d", pw, kStart));
}

TEST(LookupCache, Flush) {
  LookupCache cache(60s, 100);
  const auto pw = cache.digest("pw");
  cache.put("alice", pw, route("mbx1"), kStart);
  cache.put("bob", pw, route("mbx2"), kStart);
  cache.put("carol", pw, routeWithPass("mbx2", "x"), kStart);
  EXPECT_EQ(cache.flushUser("ALICE"), 1u);
  EXPECT_EQ(cache.flushUser("alice"), 0u);
  EXPECT_FALSE(cache.get("alice", pw, kStart));
  EXPECT_TRUE(cache.get("bob", pw, kStart));
  EXPECT_EQ(cache.flushAll(), 2u);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_FALSE(cache.get("bob", pw, kStart));
}

}  // namespace
}  // namespace portico::proxy
