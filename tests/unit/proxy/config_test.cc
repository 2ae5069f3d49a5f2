#include "config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace portico::proxy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// The smallest valid file: one listener, one backend (6 lines).
constexpr const char* kMinimal = R"([[listen]]
address = "127.0.0.1:10143"

[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
)";

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "portico-config-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& content) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  // A password file as it must be: the owner's alone (mode 0600).
  std::string writeSecret(const std::string& name, const std::string& content) {
    std::string path = write(name, content);
    std::filesystem::permissions(
        path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return path;
  }

  static ConfigResult parse(const std::string& text) { return parseConfig(text, "portico.toml"); }

  std::string dir_;
};

std::string joined(const std::vector<std::string>& errors) {
  std::string out;
  for (const std::string& e : errors) {
    out += e + "\n";
  }
  return out;
}

TEST_F(ConfigTest, FullFileSetsEveryKey) {
  std::string password = writeSecret("probe-mbx1.pass", "secret\n");
  std::string map = write("users.map", "# comment\n\nAlice@Example.COM   mbx2\n  bob mbx1\r\n");
  std::string text = R"(workers = 4
greeting = "Example IMAP ready"

[[listen]]
address = "0.0.0.0:143"
tls = "starttls"
cert = "/etc/portico/tls/mail.pem"
key = "/etc/portico/tls/mail.key"
require_tls = true

[[listen]]
address = "[::]:993"
tls = "implicit"
cert = "/etc/portico/tls/mail.pem"
key = "/etc/portico/tls/mail.key"

[[backend]]
name = "mbx1"
address = "10.0.0.11:143"
weight = 2
tls = "starttls"
ca = "/etc/portico/tls/backend-ca.pem"
server_name = "mbx1.example.net"
proxy_protocol = true
forward_id = true
probe_user = "HealthMailbox-MBX1"
probe_password_file = ")" +
                     password + R"("

[[backend]]
name = "mbx2"
address = "[2001:db8::12]:993"
weight = 0.5
tls = "implicit"

[routing]
map_file = ")" + map +
                     R"("
connect_retries = 3

[timeouts]
prelogin = "30s"
idle = "29m"
backend_connect = "5s"
backend_login = "20s"
shutdown = "500ms"

[limits]
max_connections = 20000
max_connections_per_ip = 50
max_bad_commands = 3
max_login_failures = 4
login_failure_delay = "2s"
prelogin_max_line = 4096
prelogin_max_literal = 2048
max_line = 131072
write_high_watermark = 65536
max_commands_in_flight = 64

[status]
listen = "[::1]:9090"
token = "s3cret-s3cret-s3cret"

[admin]
socket = "/tmp/portico-admin.sock"
idle_timeout = "90s"

[process]
dumpable = true

[protocol_log]
enabled = true
directory = "/var/log/portico/test"

[health]
hook = "/usr/local/bin/portico-hook"

[health.probe.ImapDeepTestProbe]
interval = "180s"
timeout = "110s"
retries = 1

[health.monitor.ImapDeepTestMonitor]
unhealthy_after = 5
healthy_after = 2
samples = 4
threshold = 0.75
)";
  ConfigResult result = parseConfig(text, "full.toml");
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  ASSERT_TRUE(result.config.has_value());
  const Config& c = *result.config;
  EXPECT_EQ(c.path, "full.toml");
  EXPECT_EQ(c.workers, 4u);
  EXPECT_EQ(c.greeting, "Example IMAP ready");

  ASSERT_EQ(c.listen.size(), 2u);
  EXPECT_EQ(c.listen[0].address.text(), "0.0.0.0:143");
  EXPECT_EQ(c.listen[0].tls, TlsMode::kStarttls);
  EXPECT_EQ(c.listen[0].cert, "/etc/portico/tls/mail.pem");
  EXPECT_EQ(c.listen[0].key, "/etc/portico/tls/mail.key");
  EXPECT_TRUE(c.listen[0].require_tls);
  EXPECT_EQ(c.listen[1].address.host, "::");
  EXPECT_TRUE(c.listen[1].address.ipv6);
  EXPECT_EQ(c.listen[1].address.port, 993);
  EXPECT_EQ(c.listen[1].tls, TlsMode::kImplicit);
  EXPECT_FALSE(c.listen[1].require_tls);

  ASSERT_EQ(c.backends.size(), 2u);
  const BackendConfig& b1 = c.backends[0];
  EXPECT_EQ(b1.name, "mbx1");
  EXPECT_EQ(b1.address.text(), "10.0.0.11:143");
  EXPECT_DOUBLE_EQ(b1.weight, 2.0);
  EXPECT_EQ(b1.tls, TlsMode::kStarttls);
  EXPECT_EQ(b1.ca, "/etc/portico/tls/backend-ca.pem");
  EXPECT_EQ(b1.server_name, "mbx1.example.net");
  EXPECT_TRUE(b1.proxy_protocol);
  EXPECT_TRUE(b1.forward_id);
  EXPECT_EQ(b1.probe_user, "HealthMailbox-MBX1");  // kept as given for LOGIN
  EXPECT_EQ(b1.probe_password_file, password);
  const BackendConfig& b2 = c.backends[1];
  EXPECT_EQ(b2.address.text(), "[2001:db8::12]:993");
  EXPECT_DOUBLE_EQ(b2.weight, 0.5);
  EXPECT_EQ(b2.tls, TlsMode::kImplicit);
  EXPECT_FALSE(b2.proxy_protocol);
  EXPECT_TRUE(b2.probe_user.empty());

  EXPECT_EQ(c.routing.map_file, map);
  EXPECT_EQ(c.routing.connect_retries, 3u);
  EXPECT_EQ(c.routing.map, (std::map<std::string, std::string>{
                               {"alice@example.com", "mbx2"},
                               {"bob", "mbx1"},
                               {"healthmailbox-mbx1", "mbx1"},
                           }));

  EXPECT_EQ(c.timeouts.prelogin, 30s);
  EXPECT_EQ(c.timeouts.idle, 29min);
  EXPECT_EQ(c.timeouts.backend_connect, 5s);
  EXPECT_EQ(c.timeouts.backend_login, 20s);
  EXPECT_EQ(c.timeouts.shutdown, 500ms);

  EXPECT_EQ(c.limits.max_connections, 20000u);
  EXPECT_EQ(c.limits.max_connections_per_ip, 50u);
  EXPECT_EQ(c.limits.max_bad_commands, 3u);
  EXPECT_EQ(c.limits.max_login_failures, 4u);
  EXPECT_EQ(c.limits.login_failure_delay, 2s);
  EXPECT_EQ(c.limits.prelogin_max_line, 4096u);
  EXPECT_EQ(c.limits.prelogin_max_literal, 2048u);
  EXPECT_EQ(c.limits.max_line, 131072u);
  EXPECT_EQ(c.limits.write_high_watermark, 65536u);
  EXPECT_EQ(c.limits.max_commands_in_flight, 64u);

  EXPECT_EQ(c.status.listen.text(), "[::1]:9090");
  EXPECT_EQ(c.status.token, "s3cret-s3cret-s3cret");
  EXPECT_EQ(c.admin.socket, "/tmp/portico-admin.sock");
  EXPECT_EQ(c.admin.idle_timeout, 90s);
  EXPECT_TRUE(c.process.dumpable);
  EXPECT_TRUE(c.protocol_log.enabled);
  EXPECT_EQ(c.protocol_log.directory, "/var/log/portico/test");
  EXPECT_EQ(c.health.hook, "/usr/local/bin/portico-hook");

  ASSERT_EQ(c.probes.size(), 1u);
  const ProbeSettings& probe = c.probes.at("ImapDeepTestProbe");
  EXPECT_EQ(probe.interval, Millis{180'000});
  EXPECT_EQ(probe.timeout, Millis{110'000});
  EXPECT_EQ(probe.retries, 1u);
  ASSERT_EQ(c.monitors.size(), 1u);
  const MonitorSettings& monitor = c.monitors.at("ImapDeepTestMonitor");
  EXPECT_EQ(monitor.unhealthy_after, 5u);
  EXPECT_EQ(monitor.healthy_after, 2u);
  EXPECT_EQ(monitor.samples, 4u);
  EXPECT_EQ(monitor.threshold, 0.75);
}

TEST_F(ConfigTest, AbsentKeysKeepDefaults) {
  ConfigResult result = parse(kMinimal);
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  const Config& c = *result.config;
  const Config defaults;
  EXPECT_EQ(c.workers, 0u);
  EXPECT_EQ(c.greeting, defaults.greeting);
  ASSERT_EQ(c.listen.size(), 1u);
  EXPECT_EQ(c.listen[0].tls, TlsMode::kNone);
  EXPECT_TRUE(c.listen[0].cert.empty());
  EXPECT_FALSE(c.listen[0].require_tls);
  ASSERT_EQ(c.backends.size(), 1u);
  EXPECT_EQ(c.backends[0].weight, 1.0);
  EXPECT_EQ(c.backends[0].tls, TlsMode::kNone);
  EXPECT_FALSE(c.backends[0].proxy_protocol);
  EXPECT_FALSE(c.backends[0].forward_id);
  EXPECT_TRUE(c.routing.map_file.empty());
  EXPECT_TRUE(c.routing.map.empty());
  EXPECT_EQ(c.routing.connect_retries, defaults.routing.connect_retries);
  EXPECT_EQ(c.timeouts.prelogin, 60s);
  EXPECT_EQ(c.timeouts.idle, 30min);
  EXPECT_EQ(c.timeouts.backend_connect, 10s);
  EXPECT_EQ(c.timeouts.backend_login, 30s);
  EXPECT_EQ(c.timeouts.shutdown, 10s);
  EXPECT_EQ(c.limits.max_connections, defaults.limits.max_connections);
  EXPECT_EQ(c.limits.max_connections_per_ip, defaults.limits.max_connections_per_ip);
  EXPECT_EQ(c.limits.max_bad_commands, defaults.limits.max_bad_commands);
  EXPECT_EQ(c.limits.max_login_failures, defaults.limits.max_login_failures);
  EXPECT_EQ(c.limits.login_failure_delay, 1s);
  EXPECT_EQ(c.limits.prelogin_max_line, defaults.limits.prelogin_max_line);
  EXPECT_EQ(c.limits.prelogin_max_literal, defaults.limits.prelogin_max_literal);
  EXPECT_EQ(c.limits.max_line, defaults.limits.max_line);
  EXPECT_EQ(c.limits.write_high_watermark, defaults.limits.write_high_watermark);
  EXPECT_EQ(c.limits.max_commands_in_flight, 1000u);
  EXPECT_EQ(c.status.listen.text(), "127.0.0.1:8080");
  EXPECT_TRUE(c.status.token.empty());
  EXPECT_EQ(c.admin.socket, "/run/portico/admin.sock");
  EXPECT_EQ(c.admin.idle_timeout, 60s);
  EXPECT_FALSE(c.process.dumpable);
  EXPECT_FALSE(c.protocol_log.enabled);
  EXPECT_EQ(c.protocol_log.directory, "/var/log/portico/imap");
  EXPECT_TRUE(c.probes.empty());
  EXPECT_TRUE(c.monitors.empty());
  EXPECT_TRUE(c.health.hook.empty());
}

TEST_F(ConfigTest, ProbeTableWithSomeKeysLeavesOthersUnset) {
  ConfigResult result = parse(std::string(kMinimal) +
                              "[health.probe.ImapSelfTestProbe]\ninterval = \"5s\"\n"
                              "[health.monitor.RequestsQueuedGt500Monitor]\nthreshold = 500\n");
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  const ProbeSettings& probe = result.config->probes.at("ImapSelfTestProbe");
  EXPECT_EQ(probe.interval, Millis{5'000});
  EXPECT_FALSE(probe.timeout.has_value());
  EXPECT_FALSE(probe.retries.has_value());
  const MonitorSettings& monitor = result.config->monitors.at("RequestsQueuedGt500Monitor");
  EXPECT_EQ(monitor.threshold, 500.0);
  EXPECT_FALSE(monitor.unhealthy_after.has_value());
}

TEST_F(ConfigTest, RespondersHistoryAndProcessKeys) {
  const std::string base =
      "[[listen]]\naddress = \"127.0.0.1:143\"\n[[backend]]\nname = \"a\"\n"
      "address = \"127.0.0.1:1\"\n";
  ConfigResult defaults = parse(base);
  ASSERT_TRUE(defaults.errors.empty()) << joined(defaults.errors);
  EXPECT_FALSE(defaults.config->health.responders_dry_run);
  EXPECT_EQ(defaults.config->health.action_history, 256u);
  EXPECT_EQ(defaults.config->process.user, "");

  ConfigResult set = parse(base +
                           "[health]\nresponders = \"dry-run\"\naction_history = 16\n"
                           "[process]\nuser = \"nobody\"\ngroup = \"nogroup\"\n");
  ASSERT_TRUE(set.errors.empty()) << joined(set.errors);
  EXPECT_TRUE(set.config->health.responders_dry_run);
  EXPECT_EQ(set.config->health.action_history, 16u);
  EXPECT_EQ(set.config->process.user, "nobody");
  EXPECT_EQ(set.config->process.group, "nogroup");

  ConfigResult bad = parse(base +
                           "[health]\nresponders = \"maybe\"\naction_history = 0\n"
                           "[process]\ngroup = \"nogroup\"\nuser = \"\"\nshell = 1\n");
  EXPECT_THAT(
      bad.errors,
      ElementsAre("portico.toml:7: 'responders' must be \"act\" or \"dry-run\"",
                  ::testing::StartsWith("portico.toml:8: "),
                  "portico.toml:10: 'group' needs 'user' in [process]",
                  ::testing::StartsWith("portico.toml:12: unknown key 'shell' in [process]")));
  EXPECT_THAT(parse(base + "[process]\nuser = \"a b\"\n").errors,
              ElementsAre("portico.toml:7: 'user' must be a user or group name"));
}

TEST_F(ConfigTest, TomlSyntaxErrorNamesFileAndLine) {
  ConfigResult result = parse("workers = 2\n\n[[listen]\naddress = \"1.2.3.4:143\"\n");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_THAT(result.errors[0], ::testing::StartsWith("portico.toml:3: "));
  EXPECT_FALSE(result.config.has_value());
}

TEST_F(ConfigTest, UnknownKeySuggestsTheNearestName) {
  ConfigResult result = parse(R"([[listen]]
address = "127.0.0.1:10143"

[[backend]]
name = "mbx1"
adress = "127.0.0.1:10144"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:4: [[backend]] is missing 'address'",
                          "portico.toml:6: unknown key 'adress' in [[backend]] (did you mean "
                          "'address'?)"));
  EXPECT_FALSE(result.config.has_value());
}

TEST_F(ConfigTest, UnknownTopLevelKeysAndTablesAreErrors) {
  ConfigResult result = parse(std::string("worker = 2\n") + kMinimal + "[stauts]\nlisten = \"\"\n");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:1: unknown key 'worker' at top level (did you mean "
                          "'workers'?)",
                          "portico.toml:8: unknown table 'stauts' at top level (did you mean "
                          "'status'?)"));
}

TEST_F(ConfigTest, UnknownKeysInEveryTableAreErrors) {
  ConfigResult result = parse(std::string(kMinimal) + R"(bogus = 1
[timeouts]
login = "5s"
[limits]
max_conns = 5
[health]
hooks = "x"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:7: unknown key 'bogus' in [[backend]]",
                          "portico.toml:9: unknown key 'login' in [timeouts]",
                          "portico.toml:11: unknown key 'max_conns' in [limits]",
                          "portico.toml:13: unknown key 'hooks' in [health] (did you mean "
                          "'hook'?)"));
}

TEST_F(ConfigTest, BadAddress) {
  ConfigResult result = parse(R"([[listen]]
address = "127.0.0.1:10143"

[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
[[backend]]
name = "mbx2"
address = "10.0.0.1"
[status]
listen = "localhost:8080"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:9: bad address '10.0.0.1' (expected IP:PORT)",
                          "portico.toml:11: bad address 'localhost:8080' (expected IP:PORT)"));
}

TEST_F(ConfigTest, DuplicateBackendName) {
  ConfigResult result = parse(std::string(kMinimal) + R"(
[[backend]]
name = "mbx1"
address = "127.0.0.1:10145"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:9: duplicate backend name 'mbx1' (first at line 5)"));
}

TEST_F(ConfigTest, DuplicateListenAddress) {
  ConfigResult result = parse(std::string(kMinimal) + R"([[listen]]
address = "127.0.0.1:10143"
)");
  EXPECT_THAT(result.errors, ElementsAre("portico.toml:8: duplicate listen address "
                                         "'127.0.0.1:10143' (first at line 2)"));
}

TEST_F(ConfigTest, TypeErrors) {
  ConfigResult result =
      parse(std::string("workers = \"2\"\ngreeting = 5\n") + kMinimal + R"(weight = "heavy"
proxy_protocol = "yes"
[routing]
connect_retries = 1.5
[protocol_log]
enabled = 1
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:1: expected an integer for 'workers'",
                          "portico.toml:2: expected a string for 'greeting'",
                          "portico.toml:9: expected a number for 'weight'",
                          "portico.toml:10: expected true or false for 'proxy_protocol'",
                          "portico.toml:12: expected an integer for 'connect_retries'",
                          "portico.toml:14: expected true or false for 'enabled'"));
}

TEST_F(ConfigTest, TablesOfTheWrongShape) {
  ConfigResult result = parse(R"(timeouts = 5
[listen]
address = "127.0.0.1:10143"
[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:1: expected a table for 'timeouts' (write [timeouts])",
                          "portico.toml:2: expected an array of tables for 'listen' (write "
                          "[[listen]])"));
}

TEST_F(ConfigTest, RangeErrors) {
  ConfigResult result = parse(std::string("workers = -1\n") + kMinimal + R"(weight = 0
[limits]
write_high_watermark = 1000
prelogin_max_line = 100
max_connections = 0
max_commands_in_flight = 0
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:1: 'workers' must be between 0 and 1024, not -1",
                          "portico.toml:8: 'weight' must be greater than 0",
                          "portico.toml:10: 'write_high_watermark' must be at least 4096, not 1000",
                          "portico.toml:11: 'prelogin_max_line' must be at least 1024, not 100",
                          "portico.toml:12: 'max_connections' must be at least 1, not 0",
                          "portico.toml:13: 'max_commands_in_flight' must be at least 1, not 0"));
}

TEST_F(ConfigTest, DurationErrors) {
  ConfigResult result = parse(std::string(kMinimal) + R"([timeouts]
idle = 60
prelogin = "60"
shutdown = "0s"
backend_login = true
)");
  EXPECT_THAT(
      result.errors,
      ElementsAre("portico.toml:8: 'idle' must be a duration string such as \"60s\" or "
                  "\"500ms\", not a bare number",
                  "portico.toml:9: bad duration '60' for 'prelogin' (expected a whole number and "
                  "a unit: \"500ms\", \"60s\", \"2m\", \"4h\")",
                  "portico.toml:10: 'shutdown' must not be zero",
                  "portico.toml:11: expected a duration string for 'backend_login' (e.g. "
                  "\"60s\")"));
}

TEST_F(ConfigTest, MissingRequiredTablesAndKeys) {
  EXPECT_THAT(parse("workers = 1\n").errors,
              ElementsAre("portico.toml:1: at least one [[listen]] is required",
                          "portico.toml:1: at least one [[backend]] is required"));
  EXPECT_THAT(parse("workers = 1\nlisten = []\nbackend = []\n").errors,
              ElementsAre("portico.toml:2: at least one [[listen]] is required",
                          "portico.toml:3: at least one [[backend]] is required"));
  ConfigResult result = parse(R"([[listen]]
tls = "starttls"
cert = "/x.pem"
[[backend]]
address = "127.0.0.1:10144"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:1: [[listen]] is missing 'address'",
                          "portico.toml:2: [[listen]] with tls = \"starttls\" needs 'key'",
                          "portico.toml:4: [[backend]] is missing 'name'"));
}

TEST_F(ConfigTest, ListenerTlsSettings) {
  ConfigResult result = parse(R"([[listen]]
address = "127.0.0.1:143"
require_tls = true
[[listen]]
address = "127.0.0.1:993"
tls = "tls"
[[backend]]
name = "mbx 1"
address = "127.0.0.1:10144"
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:3: 'require_tls' needs tls = \"starttls\" or "
                          "\"implicit\" on this listener",
                          "portico.toml:6: bad tls mode 'tls' for 'tls' (expected none, starttls "
                          "or implicit)",
                          "portico.toml:8: bad backend name 'mbx 1' (use letters, digits, '.', "
                          "'_' and '-')"));
}

TEST_F(ConfigTest, ProbePasswordFileMustBeReadable) {
  std::string missing = dir_ + "/missing.pass";
  ConfigResult result = parse(std::string(kMinimal) + "probe_user = \"hm1\"\n" +
                              "probe_password_file = \"" + missing + "\"\n");
  EXPECT_THAT(result.errors, ElementsAre("portico.toml:8: cannot read probe_password_file '" +
                                         missing + "': No such file or directory"));
  std::string password = writeSecret("probe.pass", "secret\n");
  EXPECT_THAT(parse(std::string(kMinimal) + "probe_user = \" \"\n" + "probe_password_file = \"" +
                    password + "\"\n")
                  .errors,
              ElementsAre("portico.toml:7: 'probe_user' must not be blank"));
  EXPECT_THAT(parse(std::string(kMinimal) + "probe_user = \"hm1\"\n").errors,
              ElementsAre("portico.toml:4: [[backend]] needs both 'probe_user' and "
                          "'probe_password_file', or neither"));
}

// Secrets must be their owner's alone (as OpenSSH insists for private
// keys): a key or password file open to group or others is refused, naming
// the line, the file, its mode and the fix.
TEST_F(ConfigTest, SecretFilesMustBeOwnerOnly) {
  auto secret = [&](const std::string& name, std::filesystem::perms perms) {
    std::string path = write(name, "x\n");
    std::filesystem::permissions(path, perms);
    return path;
  };
  using P = std::filesystem::perms;
  const std::string key =
      secret("mail.key", P::owner_read | P::owner_write | P::group_read | P::others_read);
  const std::string sni_key = secret("sni.key", P::owner_read | P::group_read);
  const std::string client_key = secret("client.key", P::owner_read | P::others_write);
  const std::string password =
      secret("probe.pass", P::owner_read | P::owner_write | P::group_read | P::group_write);
  const std::string fine = secret("fine.key", P::owner_read);
  std::string text = R"([[listen]]
address = "127.0.0.1:10143"
tls = "implicit"
cert = "/x.pem"
key = ")" + key + R"("
[[listen.certificate]]
server_name = "a.example"
cert = "/a.pem"
key = ")" + sni_key + R"("
[[listen.certificate]]
server_name = "b.example"
cert = "/b.pem"
key = ")" + fine + R"("
[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
tls = "implicit"
client_cert = "/c.pem"
client_key = ")" + client_key +
                     R"("
probe_user = "hm1"
probe_password_file = ")" +
                     password + "\"\n";
  auto refusal = [](int line, const std::string& key_name, const std::string& file,
                    const std::string& mode) {
    return "portico.toml:" + std::to_string(line) + ": " + key_name + " '" + file +
           "' is open to group or others (mode " + mode +
           "); a secret must be its owner's alone: chmod 600 '" + file + "'";
  };
  EXPECT_THAT(parse(text).errors,
              ElementsAre(refusal(5, "key", key, "0644"), refusal(9, "key", sni_key, "0440"),
                          refusal(19, "client_key", client_key, "0402"),
                          refusal(21, "probe_password_file", password, "0660")));
  for (const std::string& path : {key, sni_key, client_key, password}) {
    std::filesystem::permissions(path, P::owner_read | P::owner_write);
  }
  EXPECT_TRUE(parse(text).errors.empty()) << joined(parse(text).errors);
}

TEST_F(ConfigTest, UnverifiedBackendNeedsAPin) {
  const std::string backend = R"([[listen]]
address = "127.0.0.1:10143"
[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
)";
  EXPECT_THAT(parse(backend + "tls = \"implicit\"\nverify = false\n").errors,
              ElementsAre("portico.toml:7: verify = false without 'pin_sha256' accepts any "
                          "certificate (a man in the middle would read every password); set "
                          "pin_sha256, or verify = true"));
  EXPECT_THAT(parse(backend + "verify = false\ntls = \"starttls\"\n").errors,
              ElementsAre(::testing::StartsWith("portico.toml:6: verify = false without")));
  EXPECT_TRUE(parse(backend + "tls = \"implicit\"\nverify = false\npin_sha256 = \"" +
                    std::string(64, 'a') + "\"\n")
                  .errors.empty());
  EXPECT_TRUE(parse(backend + "tls = \"none\"\nverify = false\n").errors.empty());
}

TEST_F(ConfigTest, StatusTokenNeedsSixteenCharacters) {
  EXPECT_THAT(parse(std::string(kMinimal) + "[status]\ntoken = \"s3cret\"\n").errors,
              ElementsAre("portico.toml:8: 'token' is 6 characters; a bearer token needs at least "
                          "16 (e.g. openssl rand -hex 16), or \"\" for none"));
  EXPECT_TRUE(
      parse(std::string(kMinimal) + "[status]\ntoken = \"0123456789abcdef\"\n").errors.empty());
  EXPECT_TRUE(parse(std::string(kMinimal) + "[status]\ntoken = \"\"\n").errors.empty());
}

TEST_F(ConfigTest, AdminIdleTimeoutAndProcessKeys) {
  EXPECT_THAT(parse(std::string(kMinimal) +
                    "[admin]\nidle_timeout = \"0s\"\n[process]\ndumpable = \"no\"\ncore = 1\n")
                  .errors,
              ElementsAre("portico.toml:8: 'idle_timeout' must not be zero",
                          "portico.toml:10: expected true or false for 'dumpable'",
                          "portico.toml:11: unknown key 'core' in [process]"));
}

TEST_F(ConfigTest, MapFileErrorsNameTheMapFileAndLine) {
  std::string map = write("users.map",
                          "alice mbx1\n"
                          "# comment\n"
                          "bob\n"
                          "carol mbx9\n"
                          "dave mbx1 extra\n"
                          "ALICE mbx2\n"
                          "alice mbx1\n");
  ConfigResult result = parse(std::string(kMinimal) + R"([[backend]]
name = "mbx2"
address = "127.0.0.1:10145"
[routing]
map_file = ")" + map + "\"\n");
  EXPECT_THAT(result.errors,
              ElementsAre(map + ":3: malformed line (expected 'user backend')",
                          map + ":4: unknown backend 'mbx9' (did you mean 'mbx1'?)",
                          map + ":5: malformed line (expected 'user backend')",
                          map + ":6: user 'alice' is mapped again, to 'mbx2' (first to 'mbx1' "
                                "at line 1)"));
}

TEST_F(ConfigTest, UnreadableMapFile) {
  std::string missing = dir_ + "/nope.map";
  ConfigResult result =
      parse(std::string(kMinimal) + "[routing]\nmap_file = \"" + missing + "\"\n");
  EXPECT_THAT(result.errors, ElementsAre("portico.toml:8: cannot read map_file '" + missing +
                                         "': No such file or directory"));
}

TEST_F(ConfigTest, ProbeUsersArePinnedToTheirBackend) {
  std::string password = writeSecret("p.pass", "x");
  std::string map = write("users.map", "hm2 mbx2\nhm1 mbx2\n");
  std::string text = R"([[listen]]
address = "127.0.0.1:10143"
[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
probe_user = "HM1"
probe_password_file = ")" +
                     password + R"("
[[backend]]
name = "mbx2"
address = "127.0.0.1:10145"
probe_user = "hm2"
probe_password_file = ")" +
                     password + R"("
[[backend]]
name = "mbx3"
address = "127.0.0.1:10146"
probe_user = "hm1"
probe_password_file = ")" +
                     password + R"("
[routing]
map_file = ")" + map +
                     "\"\n";
  ConfigResult result = parse(text);
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:16: probe_user 'hm1' is also backend 'mbx1''s "
                          "probe_user (each backend needs its own)",
                          map + ":2: user 'hm1' is backend 'mbx1''s probe_user (portico.toml:6) "
                                "and cannot be mapped to 'mbx2'"));
}

TEST_F(ConfigTest, HealthNamesAreChecked) {
  ConfigResult result = parse(std::string(kMinimal) + R"([health.probe.ImapDeepTestProbe]
interval = "1s"
intervall = "1s"
[health.probe.ImapDeepProbe]
interval = "1s"
[health.monitor.ImapCTPMonitor]
unhealthy_after = 0
[health.monitor.QueueMonitor]
samples = 2
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:9: unknown key 'intervall' in "
                          "[health.probe.ImapDeepTestProbe] (did you mean 'interval'?)",
                          "portico.toml:10: unknown probe 'ImapDeepProbe' in [health.probe] "
                          "(did you mean 'ImapDeepTestProbe'?)",
                          "portico.toml:13: 'unhealthy_after' must be at least 1, not 0",
                          "portico.toml:14: unknown monitor 'QueueMonitor' in [health.monitor]"));
}

TEST_F(ConfigTest, CollectsEveryErrorInLineOrder) {
  ConfigResult result = parse(R"(workers = "many"
[[listen]]
address = "1.2.3.4"
[[backend]]
name = "mbx1"
address = "127.0.0.1:10144"
wieght = 2
[timeouts]
idle = 5
[admin]
socket = ""
)");
  EXPECT_THAT(result.errors,
              ElementsAre("portico.toml:1: expected an integer for 'workers'",
                          "portico.toml:3: bad address '1.2.3.4' (expected IP:PORT)",
                          "portico.toml:7: unknown key 'wieght' in [[backend]] (did you mean "
                          "'weight'?)",
                          "portico.toml:9: 'idle' must be a duration string such as \"60s\" or "
                          "\"500ms\", not a bare number",
                          "portico.toml:11: 'socket' must be a path of 1 to 107 bytes"));
  EXPECT_FALSE(result.config.has_value());
}

TEST_F(ConfigTest, GreetingMustBeOneLine) {
  EXPECT_THAT(parse("greeting = \"hi\\r\\n* BYE\"\n" + std::string(kMinimal)).errors,
              ElementsAre("portico.toml:1: 'greeting' must be one line of at most 512 printable "
                          "characters"));
}

TEST_F(ConfigTest, LoadConfigReadsAFileAndReportsMissingOnes) {
  std::string path = write("portico.toml", kMinimal);
  ConfigResult result = loadConfig(path);
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  EXPECT_EQ(result.config->path, path);

  std::string missing = dir_ + "/absent.toml";
  result = loadConfig(missing);
  EXPECT_FALSE(result.config.has_value());
  EXPECT_THAT(result.errors, ElementsAre(missing + ":1: cannot read configuration file: No such "
                                                   "file or directory"));

  std::string broken = write("broken.toml", std::string(kMinimal) + "weight = [\n");
  result = loadConfig(broken);
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_THAT(result.errors[0], ::testing::StartsWith(broken + ":"));
}

struct DurationCase {
  const char* text;
  std::optional<std::int64_t> millis;
};

TEST(ParseDurationTest, Table) {
  const DurationCase cases[] = {
      {"500ms", 500},
      {"60s", 60'000},
      {"2m", 120'000},
      {"4h", 14'400'000},
      {"0s", 0},
      {"0ms", 0},
      {"007s", 7'000},
      {"9223372036854775807ms", 9223372036854775807},
      {"", std::nullopt},
      {"60", std::nullopt},
      {"s", std::nullopt},
      {"ms", std::nullopt},
      {"-5s", std::nullopt},
      {"+5s", std::nullopt},
      {"1.5s", std::nullopt},
      {"5 s", std::nullopt},
      {" 5s", std::nullopt},
      {"5s ", std::nullopt},
      {"5sec", std::nullopt},
      {"5S", std::nullopt},
      {"5d", std::nullopt},
      {"5us", std::nullopt},
      {"1h30m", std::nullopt},
      {"9223372036854775808ms", std::nullopt},
      {"99999999999999999999s", std::nullopt},
      {"9223372036854775807h", std::nullopt},
  };
  for (const DurationCase& c : cases) {
    std::optional<Millis> parsed = parseDuration(c.text);
    if (c.millis) {
      ASSERT_TRUE(parsed.has_value()) << c.text;
      EXPECT_EQ(parsed->count(), *c.millis) << c.text;
    } else {
      EXPECT_FALSE(parsed.has_value()) << c.text;
    }
  }
}

struct AddressCase {
  const char* text;
  bool ok;
  const char* host;
  std::uint16_t port;
  bool ipv6;
};

TEST(ParseHostPortTest, Table) {
  const AddressCase cases[] = {
      {"1.2.3.4:143", true, "1.2.3.4", 143, false},
      {"0.0.0.0:143", true, "0.0.0.0", 143, false},
      {"127.0.0.1:65535", true, "127.0.0.1", 65535, false},
      {"127.0.0.1:1", true, "127.0.0.1", 1, false},
      {"[::1]:143", true, "::1", 143, true},
      {"[::]:143", true, "::", 143, true},
      {"[2001:db8::1]:993", true, "2001:db8::1", 993, true},
      {"[::ffff:10.0.0.1]:143", true, "::ffff:10.0.0.1", 143, true},
      {"", false, "", 0, false},
      {"10.0.0.1", false, "", 0, false},
      {"10.0.0.1:", false, "", 0, false},
      {"10.0.0.1:0", false, "", 0, false},
      {"10.0.0.1:65536", false, "", 0, false},
      {"10.0.0.1:143x", false, "", 0, false},
      {"10.0.0.1:+80", false, "", 0, false},
      {"10.0.0.1:-1", false, "", 0, false},
      {"10.0.0.1:1000000", false, "", 0, false},
      {"10.0.0.1:143:1", false, "", 0, false},
      {":143", false, "", 0, false},
      {"localhost:143", false, "", 0, false},
      {"mail.example.net:143", false, "", 0, false},
      {"1.2.3:143", false, "", 0, false},
      {"256.1.1.1:143", false, "", 0, false},
      {" 1.2.3.4:143", false, "", 0, false},
      {"::1:143", false, "", 0, false},
      {"[::1]143", false, "", 0, false},
      {"[::1]", false, "", 0, false},
      {"[::1]:", false, "", 0, false},
      {"[::1:143", false, "", 0, false},
      {"[1.2.3.4]:143", false, "", 0, false},
      {"[fe80::1%eth0]:143", false, "", 0, false},
      {"[]:143", false, "", 0, false},
  };
  for (const AddressCase& c : cases) {
    std::optional<HostPort> parsed = parseHostPort(c.text);
    ASSERT_EQ(parsed.has_value(), c.ok) << c.text;
    if (c.ok) {
      EXPECT_EQ(parsed->host, c.host) << c.text;
      EXPECT_EQ(parsed->port, c.port) << c.text;
      EXPECT_EQ(parsed->ipv6, c.ipv6) << c.text;
      EXPECT_EQ(parsed->text(), c.text);
    }
  }
}

TEST(TlsModeTest, Names) {
  EXPECT_STREQ(tlsModeName(TlsMode::kNone), "none");
  EXPECT_STREQ(tlsModeName(TlsMode::kStarttls), "starttls");
  EXPECT_STREQ(tlsModeName(TlsMode::kImplicit), "implicit");
}

// The shipped configs must load: the reference documents every key, and the
// demo is what scripts and outside harnesses start.
// From the source tree's path, not __FILE__: ccache's base_dir makes
// __FILE__ relative to the build directory, not to where the test runs.
std::filesystem::path confDir() {
  return std::filesystem::path(PORTICO_SOURCE_DIR) / "conf";
}

TEST(ShippedConfigTest, ReferenceConfigLoads) {
  std::filesystem::path path = confDir() / "portico.toml";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  ConfigResult result = loadConfig(path.string());
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  const Config& c = *result.config;
  EXPECT_EQ(c.workers, 0u);
  EXPECT_FALSE(c.listen.empty());
  EXPECT_FALSE(c.backends.empty());
  EXPECT_EQ(c.probes.size(), 4u);
  EXPECT_EQ(c.monitors.size(), 6u);
}

TEST(ShippedConfigTest, PackagedConfigLoads) {
  // What the Debian package installs as /etc/portico/portico.toml: valid as
  // it stands, loopback only, no file it would need on a fresh install.
  std::filesystem::path path = confDir() / ".." / "packaging" / "portico.toml";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  ConfigResult result = loadConfig(path.string());
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  const Config& c = *result.config;
  ASSERT_EQ(c.listen.size(), 1u);
  EXPECT_EQ(c.listen[0].address.host, "127.0.0.1");
  EXPECT_EQ(c.listen[0].tls, TlsMode::kNone);
  EXPECT_EQ(c.status.listen.host, "127.0.0.1");
  EXPECT_EQ(c.admin.socket, "/run/portico/admin.sock");
  EXPECT_EQ(c.process.user, "portico");
  EXPECT_FALSE(c.health.responders_dry_run);
}

TEST(ShippedConfigTest, DemoConfigLoads) {
  std::filesystem::path path = std::filesystem::absolute(confDir() / "demo.toml");
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  // The demo's relative paths (probe password files) are resolved from the
  // working directory, which scripts/demo.py sets to the repository and
  // fills before starting Portico; do the same in a scratch directory.
  std::filesystem::path scratch =
      std::filesystem::temp_directory_path() / ("portico-demo-" + std::to_string(::getpid()));
  std::filesystem::create_directories(scratch / ".run");
  for (const char* name : {"probe-mbx1.pass", "probe-mbx2.pass"}) {
    std::ofstream(scratch / ".run" / name) << "secret\n";
    std::filesystem::permissions(scratch / ".run" / name, std::filesystem::perms::owner_read |
                                                              std::filesystem::perms::owner_write);
  }
  std::filesystem::path previous = std::filesystem::current_path();
  std::filesystem::current_path(scratch);
  ConfigResult result = loadConfig(path.string());
  std::filesystem::current_path(previous);
  std::filesystem::remove_all(scratch);
  ASSERT_TRUE(result.errors.empty()) << joined(result.errors);
  const Config& c = *result.config;
  EXPECT_EQ(c.workers, 2u);
  ASSERT_EQ(c.listen.size(), 1u);
  EXPECT_EQ(c.listen[0].address.text(), "127.0.0.1:10143");
  EXPECT_EQ(c.listen[0].tls, TlsMode::kNone);
  ASSERT_EQ(c.backends.size(), 2u);
  EXPECT_EQ(c.backends[0].name, "mbx1");
  EXPECT_EQ(c.backends[0].address.text(), "127.0.0.1:10144");
  EXPECT_EQ(c.backends[1].name, "mbx2");
  EXPECT_EQ(c.backends[1].address.text(), "127.0.0.1:10145");
  EXPECT_EQ(c.status.listen.text(), "127.0.0.1:18080");
  EXPECT_EQ(c.admin.socket, ".run/admin.sock");
  EXPECT_EQ(c.protocol_log.directory, ".run/imap-log");
}

}  // namespace
}  // namespace portico::proxy
