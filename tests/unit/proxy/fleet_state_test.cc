// Fleet mode's pure state: verdict encoding and ordering, hold expiry, and
// the login gate workers ask.
#include "fleet/fleet_state.h"
#include "fleet/login_penalty.h"
#include "fleet/session_limit.h"

#include <gtest/gtest.h>

#include "config/config.h"

namespace portico::proxy::fleet {
namespace {

using std::chrono::milliseconds;

TEST(FleetVerdictTest, EncodesAndDecodesEveryState) {
  for (Verdict v : {Verdict{true, false, 1733300000123, "portico-a"},
                    Verdict{true, true, 5, "node.b_2"}, Verdict{false, false, 0, "c"}}) {
    std::optional<Verdict> back = decodeVerdict(encodeVerdict(v));
    ASSERT_TRUE(back.has_value()) << encodeVerdict(v);
    EXPECT_EQ(*back, v);
  }
  EXPECT_EQ(encodeVerdict(Verdict{true, true, 42, "a"}), "drained+move 42 a");
  EXPECT_EQ(encodeVerdict(Verdict{false, false, 7, "b"}), "enabled 7 b");
}

TEST(FleetVerdictTest, RefusesForeignOrDamagedValues) {
  for (const char* text :
       {"", "drained", "drained 12", "drained x12 a", "paused 12 a", "drained 12 ",
        "drained 12 bad node", "enabled -1 a", "drained 99999999999999999999999 a"}) {
    EXPECT_FALSE(decodeVerdict(text).has_value()) << text;
  }
}

TEST(FleetVerdictTest, NewestStampWinsThenNodeName) {
  Verdict older{true, false, 100, "z"};
  Verdict later{false, false, 101, "a"};
  EXPECT_TRUE(newer(later, older));
  EXPECT_FALSE(newer(older, later));
  Verdict tie_a{true, false, 100, "a"};
  Verdict tie_b{false, false, 100, "b"};
  EXPECT_TRUE(newer(tie_b, tie_a));
  EXPECT_FALSE(newer(tie_a, tie_b));
  EXPECT_FALSE(newer(tie_a, tie_a));  // the same verdict is not applied twice
}

TEST(FleetNodeNameTest, AcceptsHostNamesOnly) {
  EXPECT_EQ(nodeNameProblem("portico-a.example_1"), "");
  EXPECT_NE(nodeNameProblem(""), "");
  EXPECT_NE(nodeNameProblem("a b"), "");
  EXPECT_NE(nodeNameProblem(std::string(65, 'a')), "");
  EXPECT_EQ(nodeNameProblem(defaultNodeName()), "");
}

TEST(FleetQuorumTest, MajorityOfTheLiveNodesUnlessConfigured) {
  EXPECT_EQ(quorumNeeded(1, 0), 1u);
  EXPECT_EQ(quorumNeeded(2, 0), 2u);
  EXPECT_EQ(quorumNeeded(3, 0), 2u);
  EXPECT_EQ(quorumNeeded(4, 0), 3u);
  EXPECT_EQ(quorumNeeded(3, 1), 1u);
  EXPECT_EQ(quorumNeeded(3, 5), 5u);  // more than live: never reached
}

TEST(FleetQuorumTest, DrainsTheBackendsWithEnoughVotes) {
  std::map<std::string, std::uint32_t> votes{{"mbx1", 2}, {"mbx2", 1}, {"mbx3", 3}};
  EXPECT_EQ(quorumDrains(votes, 3, 0), (std::vector<std::string>{"mbx1", "mbx3"}));
  // A node died: its votes went with it, and the majority of two is two.
  votes = {{"mbx1", 1}};
  EXPECT_TRUE(quorumDrains(votes, 2, 0).empty());
  EXPECT_EQ(quorumDrains(votes, 2, 1), (std::vector<std::string>{"mbx1"}));
  EXPECT_TRUE(quorumDrains(votes, 0, 0).empty());
  EXPECT_TRUE(quorumDrains({{"mbx1", 3}}, 3, 5).empty());
}

TEST(FleetHoldTableTest, HoldsEndAtTheirTime) {
  const Clock::time_point t0{};
  HoldTable holds;
  holds.put("alice", t0 + milliseconds(1000));
  holds.put("bob", t0 + milliseconds(5000));
  EXPECT_TRUE(holds.held("alice", t0 + milliseconds(999)));
  EXPECT_FALSE(holds.held("alice", t0 + milliseconds(1000)));
  EXPECT_FALSE(holds.held("carol", t0));
  EXPECT_EQ(holds.expire(t0 + milliseconds(1000)), 1u);
  EXPECT_EQ(holds.entries().count("alice"), 0u);
  EXPECT_TRUE(holds.held("bob", t0 + milliseconds(4999)));
  EXPECT_TRUE(holds.erase("bob"));
  EXPECT_FALSE(holds.erase("bob"));
  EXPECT_TRUE(holds.entries().empty());
}

TEST(FleetHoldTableTest, ReplaceTakesRedisRemainingTimes) {
  const Clock::time_point t0{};
  HoldTable holds;
  holds.put("gone", t0 + milliseconds(60'000));
  holds.replace({{"alice", 2000}, {"dead", 0}, {"negative", -2}}, t0);
  EXPECT_FALSE(holds.held("gone", t0));  // Redis no longer has it
  EXPECT_TRUE(holds.held("alice", t0 + milliseconds(1999)));
  EXPECT_FALSE(holds.held("alice", t0 + milliseconds(2000)));
  EXPECT_EQ(holds.entries().size(), 1u);
}

TEST(FleetLoginGateTest, RefusesHeldUsersUntilTheirHoldEnds) {
  LoginGate gate;
  const Clock::time_point t0 = Clock::now();
  EXPECT_FALSE(gate.refusal("alice", t0).has_value());
  HoldTable holds;
  holds.put("alice", t0 + milliseconds(1000));
  gate.setHolds(holds);
  std::optional<std::string> refusal = gate.refusal("alice", t0);
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->rfind("[UNAVAILABLE] ", 0), 0u) << *refusal;
  EXPECT_FALSE(gate.refusal("bob", t0).has_value());
  // Expiry needs no update from the control loop.
  EXPECT_FALSE(gate.refusal("alice", t0 + milliseconds(1000)).has_value());
  gate.setHolds(HoldTable{});
  EXPECT_FALSE(gate.refusal("alice", t0).has_value());
}

TEST(FleetLoginGateTest, RefusesEveryoneWhileRefusing) {
  LoginGate gate;
  const Clock::time_point t0 = Clock::now();
  gate.setRefusing(true);
  EXPECT_TRUE(gate.refusing());
  ASSERT_TRUE(gate.refusal("anyone", t0).has_value());
  EXPECT_NE(gate.refusal("anyone", t0)->find("[UNAVAILABLE]"), std::string::npos);
  gate.setRefusing(false);
  EXPECT_FALSE(gate.refusal("anyone", t0).has_value());
}

TEST(FleetConfigTest, ReadsAndChecksTheFleetTable) {
  const std::string base =
      "[[listen]]\naddress = \"127.0.0.1:10143\"\n[[backend]]\nname = "
      "\"mbx1\"\naddress = \"127.0.0.1:10144\"\n";
  ConfigResult none = parseConfig(base, "t.toml");
  ASSERT_TRUE(none.errors.empty()) << none.errors[0];
  EXPECT_FALSE(none.config->fleet.enabled());
  EXPECT_EQ(none.config->fleet.on_redis_down, "local");

  ConfigResult on = parseConfig(
      base +
          "[fleet]\nredis = \"127.0.0.1:6379\"\nnode = \"portico-a\"\non_redis_down = \"refuse\"\n",
      "t.toml");
  ASSERT_TRUE(on.errors.empty()) << on.errors[0];
  EXPECT_TRUE(on.config->fleet.enabled());
  EXPECT_EQ(on.config->fleet.node, "portico-a");
  EXPECT_TRUE(on.config->fleet.refuseWhenDown());

  for (const char* bad : {"redis = \"localhost\"", "on_redis_down = \"wait\"",
                          "node = \"two words\"", "nodes = \"a\""}) {
    ConfigResult result = parseConfig(base + "[fleet]\n" + bad + "\n", "t.toml");
    EXPECT_FALSE(result.errors.empty()) << bad;
  }
}

TEST(FleetSessionCountsTest, LimitCountsThisNodeAndTheOthers) {
  SessionCounts counts;
  UserSlot a, b, c;
  ASSERT_TRUE(counts.acquire("alice", 2, a));
  ASSERT_TRUE(counts.acquire("alice", 2, b));
  EXPECT_FALSE(counts.acquire("alice", 2, c));
  EXPECT_FALSE(c.held());
  EXPECT_TRUE(counts.acquire("bob", 2, c));  // per user
  EXPECT_EQ(counts.local("alice"), 2u);

  b.reset();  // a failed login or an ended session gives the slot back
  EXPECT_EQ(counts.local("alice"), 1u);
  // Another node has one of alice's sessions: the last slot is taken.
  counts.setRemote({{"alice", 1}});
  UserSlot d;
  EXPECT_FALSE(counts.acquire("alice", 2, d));
  EXPECT_TRUE(counts.acquire("alice", 0, d));  // 0: no limit
  // Redis away: only this node's sessions count.
  counts.setRemote({});
  d.reset();
  EXPECT_TRUE(counts.acquire("alice", 2, d));
}

TEST(FleetSessionCountsTest, SlotsGiveBackOnceAndTrackChanges) {
  SessionCounts counts;
  const std::uint64_t before = counts.generation();
  {
    UserSlot slot;
    ASSERT_TRUE(counts.acquire("alice", 1, slot));
    UserSlot moved(std::move(slot));
    EXPECT_FALSE(slot.held());
    slot.reset();  // the moved-from slot gives nothing back
    EXPECT_EQ(counts.localCounts(), (CountMap{{"alice", 1}}));
  }
  EXPECT_TRUE(counts.localCounts().empty());
  EXPECT_NE(counts.generation(), before);
  UserSlot held, refused;
  EXPECT_TRUE(counts.acquire("alice", 1, held));
  EXPECT_FALSE(counts.acquire("alice", 1, refused));  // a refusal leaves no slot behind
  EXPECT_FALSE(refused.held());
  EXPECT_EQ(counts.local("alice"), 1u);
}

TEST(FleetSessionCountsTest, AddsPublishedCountsSkippingDamagedOnes) {
  CountMap sum;
  addCounts(sum, "alice", "2");
  addCounts(sum, "alice", "3");
  addCounts(sum, "bob", "x1");
  addCounts(sum, "carol", "0");
  addCounts(sum, "", "4");
  addCounts(sum, "dave", "-1");
  EXPECT_EQ(sum, (CountMap{{"alice", 5}}));
}

TEST(FleetLoginPenaltiesTest, NotesGoOutOnceAndPenaltiesRefuseIpOrUser) {
  EXPECT_EQ(clientIp("192.0.2.7:40001"), "192.0.2.7");
  EXPECT_EQ(clientIp("[2001:db8::1]:993"), "2001:db8::1");
  LoginPenalties p;
  p.record("192.0.2.7", "alice");
  p.record("192.0.2.8", "bob");
  EXPECT_EQ(p.take().size(), 2u);
  EXPECT_TRUE(p.take().empty());
  EXPECT_FALSE(p.refusal("192.0.2.7", "alice"));
  p.setPenalised({"ip:192.0.2.7", "user:carol"});
  EXPECT_TRUE(p.refusal("192.0.2.7", "dave"));
  EXPECT_TRUE(p.refusal("192.0.2.9", "carol"));
  EXPECT_FALSE(p.refusal("192.0.2.9", "alice"));
  p.setPenalised({});
  EXPECT_FALSE(p.refusal("192.0.2.7", "carol"));
  for (std::size_t i = 0; i < LoginPenalties::kMaxNotes + 5; ++i) {
    p.record("192.0.2.1", "eve");
  }
  EXPECT_EQ(p.dropped(), 5u);  // bounded
  EXPECT_EQ(p.take().size(), LoginPenalties::kMaxNotes);
}

}  // namespace
}  // namespace portico::proxy::fleet
