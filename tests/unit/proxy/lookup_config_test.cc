// The [lookup] table through the whole configuration reader: defaults,
// every key, and each error as "FILE:LINE: message".
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "config/config.h"

namespace portico::proxy {
namespace {

using ::testing::ElementsAre;
using namespace std::chrono_literals;

// Six lines; [lookup] starts on line 7.
constexpr const char* kMinimal = R"([[listen]]
address = "127.0.0.1:10143"

[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
)";

ConfigResult parse(const std::string& lookup) {
  return parseConfig(std::string(kMinimal) + lookup, "portico.toml");
}

TEST(LookupConfig, DefaultsWithoutTheTable) {
  ConfigResult result = parse("");
  ASSERT_TRUE(result.config) << result.errors[0];
  const LookupConfig& l = result.config->lookup;
  EXPECT_EQ(l.kind, LookupKind::kNone);
  EXPECT_EQ(l.timeout, 5s);
  EXPECT_EQ(l.cache_ttl, 60s);
  EXPECT_EQ(l.cache_size, 100'000u);
  EXPECT_EQ(l.fallback, LookupFallback::kHash);
  EXPECT_EQ(l.key, "route:{user}");
  EXPECT_EQ(l.shard_key, "route:shard:{shard}");
  EXPECT_EQ(l.shards, 0u);
  EXPECT_EQ(l.redis_host, "127.0.0.1");
  EXPECT_EQ(l.redis_port, 6379);
}

TEST(LookupConfig, HttpAsInTheIssue) {
  ConfigResult result = parse(R"([lookup]
kind = "http"
url = "http://127.0.0.1:9000/auth"
timeout = "2s"
cache_ttl = "30s"
cache_size = 500
headers = { "X-Auth-Key" = "secret", "A-First" = "1", "Z-Last" = "2" }
fallback = "refuse"
)");
  ASSERT_TRUE(result.config) << result.errors[0];
  const LookupConfig& l = result.config->lookup;
  EXPECT_EQ(l.kind, LookupKind::kHttp);
  EXPECT_EQ(l.url, "http://127.0.0.1:9000/auth");
  EXPECT_EQ(l.http.host, "127.0.0.1");
  EXPECT_EQ(l.http.port, 9000);
  EXPECT_EQ(l.http.uri, "/auth");
  EXPECT_EQ(l.timeout, 2s);
  EXPECT_EQ(l.cache_ttl, 30s);
  EXPECT_EQ(l.cache_size, 500u);
  EXPECT_EQ(l.fallback, LookupFallback::kRefuse);
  // In file order, as nginx sends auth_http_header lines (toml++ sorts).
  using Header = std::pair<std::string, std::string>;
  EXPECT_THAT(l.headers, ElementsAre(Header{"X-Auth-Key", "secret"}, Header{"A-First", "1"},
                                     Header{"Z-Last", "2"}));
}

TEST(LookupConfig, RedisWithShards) {
  ConfigResult result = parse(R"([lookup]
kind = "redis"
address = "[::1]:6380"
key = "imap:route:{user}"
shards = 1024
shard_key = "imap:shard:{shard}"
cache_ttl = "0s"
)");
  ASSERT_TRUE(result.config) << result.errors[0];
  const LookupConfig& l = result.config->lookup;
  EXPECT_EQ(l.kind, LookupKind::kRedis);
  EXPECT_EQ(l.redis_host, "::1");
  EXPECT_TRUE(l.redis_ipv6);
  EXPECT_EQ(l.redis_port, 6380);
  EXPECT_EQ(l.key, "imap:route:{user}");
  EXPECT_EQ(l.shards, 1024u);
  EXPECT_EQ(l.shard_key, "imap:shard:{shard}");
  EXPECT_EQ(l.cache_ttl, 0ms);
}

TEST(LookupConfig, KindNoneIgnoresTheOtherKeys) {
  ConfigResult result = parse(R"([lookup]
kind = "none"
url = "http://127.0.0.1:9000/auth"
address = "127.0.0.1:6379"
)");
  EXPECT_TRUE(result.config) << result.errors[0];
}

TEST(LookupConfig, Errors) {
  struct Case {
    std::string lookup;
    std::vector<std::string> errors;
  };
  const std::vector<Case> cases = {
      {"[lookup]\nkind = \"ldap\"\n",
       {"portico.toml:8: bad lookup kind 'ldap' (expected none, http or redis)"}},
      {"[lookup]\nkind = \"http\"\n", {"portico.toml:8: kind = \"http\" needs 'url'"}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://auth.local/x\"\n",
       {"portico.toml:9: bad url 'http://auth.local/x': the host must be an IP literal "
        "(Portico resolves no names)"}},
      {"[lookup]\nkind = \"http\"\nurl = \"https://127.0.0.1/x\"\n",
       {"portico.toml:9: bad url 'https://127.0.0.1/x': only http:// and unix: URLs are "
        "supported (as by nginx's auth_http)"}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\ntimout = \"1s\"\n",
       {"portico.toml:10: unknown key 'timout' in [lookup] (did you mean 'timeout'?)"}},
      {"[lookup]\ntimeout = 5\n",
       {"portico.toml:8: 'timeout' must be a duration string such as \"60s\" or \"500ms\", "
        "not a bare number"}},
      {"[lookup]\ntimeout = \"0s\"\n", {"portico.toml:8: 'timeout' must not be zero"}},
      {"[lookup]\ncache_ttl = \"1 minute\"\n",
       {"portico.toml:8: bad duration '1 minute' for 'cache_ttl' (expected a whole number and "
        "a unit: \"500ms\", \"60s\", \"2m\", \"4h\")"}},
      {"[lookup]\ncache_size = 0\n", {"portico.toml:8: 'cache_size' must be at least 1, not 0"}},
      {"[lookup]\nfallback = \"deny\"\n",
       {"portico.toml:8: 'fallback' must be \"hash\" or \"refuse\", not 'deny'"}},
      {"[lookup]\nkind = \"redis\"\naddress = \"localhost:6379\"\n",
       {"portico.toml:9: bad address 'localhost:6379' (expected IP:PORT)"}},
      {"[lookup]\nkind = \"redis\"\nkey = \"route:user\"\n",
       {"portico.toml:9: 'key' must contain {user} exactly once"}},
      {"[lookup]\nkind = \"redis\"\nkey = \"{user}:{user}\"\n",
       {"portico.toml:9: 'key' must contain {user} exactly once"}},
      {"[lookup]\nkind = \"redis\"\nkey = \"route {user}\"\n",
       {"portico.toml:9: 'key' must be at most 256 printable characters without spaces"}},
      {"[lookup]\nkind = \"redis\"\nshards = -1\n",
       {"portico.toml:9: 'shards' must be between 0 and 1048576, not -1"}},
      {"[lookup]\nkind = \"redis\"\nshard_key = \"shard\"\n",
       {"portico.toml:9: 'shard_key' must contain {shard} exactly once"}},
      {"[lookup]\nkind = \"redis\"\nurl = \"http://127.0.0.1/\"\nheaders = {}\n",
       {"portico.toml:9: 'url' is only used with kind = \"http\"",
        "portico.toml:10: 'headers' is only used with kind = \"http\""}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\nshards = 4\n",
       {"portico.toml:10: 'shards' is only used with kind = \"redis\""}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\nheaders = \"X: y\"\n",
       {"portico.toml:10: 'headers' must be a table of strings, e.g. headers = { \"X-Auth-Key\" "
        "= \"...\" }"}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\nheaders = { \"X Y\" = \"1\" }\n",
       {"portico.toml:10: bad header name 'X Y' in 'headers' (letters, digits and '-')"}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\nheaders = { \"X\" = \"a\\r\\nB: "
       "c\" }\n",
       {"portico.toml:10: header 'X' in 'headers' must be one line of at most 1024 printable "
        "characters"}},
      {"[lookup]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\nheaders = { \"X\" = 1 }\n",
       {"portico.toml:10: header 'X' in 'headers' must be a string"}},
  };
  for (const Case& c : cases) {
    ConfigResult result = parse(c.lookup);
    EXPECT_FALSE(result.config) << c.lookup;
    EXPECT_EQ(result.errors, c.errors) << c.lookup;
  }
}

}  // namespace
}  // namespace portico::proxy
