// The pure parts of the Redis directory: the documented shard hash, key
// templates and how a stored value reads as a route.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "lookup/redis_lookup.h"

namespace portico::proxy {
namespace {

// The hash is part of the operator contract (docs/lookup.md): CRC-32 as
// zlib/Python compute it. These values come from Python:
//   zlib.crc32(b"123456789") == 0xCBF43926 (the CRC-32 check value)
//   zlib.crc32(b"alice") == 0x278EBC47 (= 663665735)
//   zlib.crc32(b"bob@example.org") == 0x7230979C (= 1915787164)
TEST(LookupShard, IsCrc32ModuloShards) {
  EXPECT_EQ(lookupShard("123456789", 0xFFFFFFFFu), 0xCBF43926u % 0xFFFFFFFFu);
  EXPECT_EQ(lookupShard("alice", 1024), 663665735u % 1024);
  EXPECT_EQ(lookupShard("bob@example.org", 1000), 1915787164u % 1000);
  EXPECT_EQ(lookupShard("", 16), 0u);
  EXPECT_EQ(lookupShard("alice", 1), 0u);
  EXPECT_EQ(lookupShard("alice", 0), 0u);
}

TEST(LookupShard, SpreadsUsers) {
  std::set<std::uint32_t> seen;
  for (int i = 0; i < 1000; ++i) {
    std::uint32_t shard = lookupShard("user" + std::to_string(i), 16);
    ASSERT_LT(shard, 16u);
    seen.insert(shard);
  }
  EXPECT_EQ(seen.size(), 16u);
}

TEST(KeyTemplate, ReplacesThePlaceholder) {
  EXPECT_EQ(expandKeyTemplate("route:{user}", "{user}", "alice"), "route:alice");
  EXPECT_EQ(expandKeyTemplate("{user}:route", "{user}", "a b"), "a b:route");
  EXPECT_EQ(expandKeyTemplate("route:shard:{shard}", "{shard}", "17"), "route:shard:17");
  EXPECT_EQ(expandKeyTemplate("x{shard}y", "{shard}", ""), "xy");
}

TEST(RouteValue, Parses) {
  struct Case {
    std::string value;
    std::string text;  // LookupRoute::text(), or "" for not a route
  };
  const std::vector<Case> cases = {
      {"10.0.0.11:143", "10.0.0.11:143"},
      {"  10.0.0.11:143\r\n", "10.0.0.11:143"},
      {"[::1]:1143", "[::1]:1143"},
      {"mbx1", "mbx1"},
      {"mbx-2.dc_a", "mbx-2.dc_a"},
      {"", ""},
      {"   ", ""},
      {"10.0.0.11", "10.0.0.11"},  // a name: no port, and names may hold dots
      {"10.0.0.11:0", ""},
      {"10.0.0.11:99999", ""},
      {"host.example.org:143", ""},
      {"mbx 1", ""},
      {"mbx1;DROP", ""},
      {std::string(200, 'a'), ""},
  };
  for (const Case& c : cases) {
    std::optional<LookupRoute> route = parseRouteValue(c.value);
    EXPECT_EQ(route ? route->text() : "", c.text) << "'" << c.value << "'";
  }
  std::optional<LookupRoute> v6 = parseRouteValue("[2001:db8::11]:143");
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->ipv6);
  EXPECT_EQ(v6->host, "2001:db8::11");
  EXPECT_TRUE(v6->backend.empty());
}

}  // namespace
}  // namespace portico::proxy
