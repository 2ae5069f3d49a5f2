// The action history ring behind GET /health/actions: bounded, newest
// first, late results, the exact JSON shape.
#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "action_log.h"

namespace portico::health {
namespace {

using nlohmann::json;

const SystemTime kT0 = SystemTime(std::chrono::seconds(1'767'225'600));  // 2026-01-01T00:00:00Z

ActionRecord record(int n, const char* kind = "operator") {
  return ActionRecord{kT0 + std::chrono::milliseconds(n),
                      kind,
                      "backend drain",
                      "mbx" + std::to_string(n),
                      "why " + std::to_string(n),
                      "root (uid 0)",
                      "done"};
}

TEST(ActionLog, KeepsTheNewestUpToItsCapacityNewestFirst) {
  ActionLog log(3);
  for (int i = 1; i <= 5; ++i) {
    log.add(record(i));
  }
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log.newest(0).target, "mbx5");
  EXPECT_EQ(log.newest(2).target, "mbx3");
  log.setCapacity(2);
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log.newest(1).target, "mbx4");
  log.setCapacity(0);  // at least one
  EXPECT_EQ(log.capacity(), 1u);
  EXPECT_EQ(log.size(), 1u);
}

TEST(ActionLog, ResultsArriveLaterAndAreDroppedForEvictedEntries) {
  ActionLog log(2);
  const auto first = log.add(ActionRecord{kT0, "responder", "hook", "mbx1", "r", "M", ""});
  const auto second = log.add(record(2));
  log.setResult(first, "exit 0");
  EXPECT_EQ(log.newest(1).result, "exit 0");
  log.add(record(3));  // pushes `first` out
  log.setResult(first, "late");
  EXPECT_EQ(log.newest(0).result, "done");
  EXPECT_EQ(log.newest(1).result, "done");
  log.setResult(second, "changed");
  EXPECT_EQ(log.newest(1).result, "changed");
}

TEST(ActionLog, JsonShapeIsExact) {
  ActionLog log;
  log.add(record(1, "responder"));
  log.add(record(2));
  const json j = log.json();
  ASSERT_EQ(j.size(), 1u);
  ASSERT_TRUE(j["actions"].is_array());
  ASSERT_EQ(j["actions"].size(), 2u);
  const json& newest = j["actions"][0];
  std::set<std::string> keys;
  for (const auto& [key, value] : newest.items()) {
    keys.insert(key);
    EXPECT_TRUE(value.is_string()) << key;
  }
  EXPECT_EQ(keys,
            (std::set<std::string>{"time", "kind", "action", "target", "reason", "by", "result"}));
  EXPECT_EQ(newest["time"], "2026-01-01T00:00:00.002Z");
  EXPECT_EQ(newest["kind"], "operator");
  EXPECT_EQ(j["actions"][1]["kind"], "responder");
  EXPECT_EQ(j["actions"][1]["target"], "mbx1");
  EXPECT_EQ(ActionLog(4).json().dump(), R"({"actions":[]})");
}

TEST(ActionLog, InvalidUtf8FromAnOperatorIsReplacedNotThrown) {
  ActionLog log;
  log.add(ActionRecord{kT0, "operator", "kick", "user \xff\xfe", "admin socket: kick --user \xff",
                       "root (uid 0)", "refused: kick: no matching session"});
  std::string text;
  ASSERT_NO_THROW(text = log.text());
  const json j = json::parse(text);
  EXPECT_EQ(j["actions"][0]["target"], "user \xef\xbf\xbd\xef\xbf\xbd");
}

}  // namespace
}  // namespace portico::health
