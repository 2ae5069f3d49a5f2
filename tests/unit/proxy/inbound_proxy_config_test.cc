// Issue 11, inbound PROXY protocol: the [[listen]] keys proxy_protocol and
// trusted_networks, the CIDR networks behind them, and how a reload names
// their changes.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstring>

#include "config/config.h"
#include "net_types.h"
#include "runtime.h"

namespace portico::proxy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

sockaddr_storage ip(const char* text) {
  sockaddr_storage s{};
  if (std::strchr(text, ':') != nullptr) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&s);
    in6->sin6_family = AF_INET6;
    EXPECT_EQ(::inet_pton(AF_INET6, text, &in6->sin6_addr), 1) << text;
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(&s);
    in->sin_family = AF_INET;
    EXPECT_EQ(::inet_pton(AF_INET, text, &in->sin_addr), 1) << text;
  }
  return s;
}

std::vector<Network> networks(std::initializer_list<const char*> texts) {
  std::vector<Network> out;
  for (const char* t : texts) {
    auto n = parseNetwork(t);
    EXPECT_TRUE(n.ok()) << t << ": " << n.message();
    if (n.ok()) {
      out.push_back(*n);
    }
  }
  return out;
}

TEST(Network, ParsesAndPrints) {
  EXPECT_EQ(parseNetwork("10.0.0.0/8")->text(), "10.0.0.0/8");
  EXPECT_EQ(parseNetwork("127.0.0.1")->text(), "127.0.0.1/32");
  EXPECT_EQ(parseNetwork("fd00::/8")->text(), "fd00::/8");
  EXPECT_EQ(parseNetwork("::1")->text(), "::1/128");
  EXPECT_EQ(parseNetwork("0.0.0.0/0")->text(), "0.0.0.0/0");
  EXPECT_EQ(parseNetwork("192.168.4.0/22")->text(), "192.168.4.0/22");
}

TEST(Network, RefusesMalformed) {
  for (const char* bad : {"", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0/8", "host/8",
                          "10.0.0.0/8x", "10.0.0.0/-1", "10.0.0.0/0008"}) {
    auto n = parseNetwork(bad);
    EXPECT_FALSE(n.ok()) << bad;
    EXPECT_FALSE(n.message().empty()) << bad;
  }
  auto host_bits = parseNetwork("10.1.0.0/8");
  EXPECT_FALSE(host_bits.ok());
  EXPECT_THAT(host_bits.message(), HasSubstr("host bits set (did you mean \"10.0.0.0/8\"?)"));
  auto other = parseNetwork("192.168.5.0/22");
  EXPECT_FALSE(other.ok());
  EXPECT_THAT(other.message(), HasSubstr("192.168.4.0/22"));
}

TEST(Network, Contains) {
  auto list = networks({"127.0.0.0/8", "192.168.4.0/22", "fd00::/8"});
  EXPECT_TRUE(networksContain(list, ip("127.0.0.1")));
  EXPECT_TRUE(networksContain(list, ip("127.255.255.254")));
  EXPECT_TRUE(networksContain(list, ip("192.168.7.255")));
  EXPECT_FALSE(networksContain(list, ip("192.168.8.0")));
  EXPECT_FALSE(networksContain(list, ip("192.168.3.255")));
  EXPECT_FALSE(networksContain(list, ip("128.0.0.1")));
  EXPECT_TRUE(networksContain(list, ip("fd12::1")));
  EXPECT_FALSE(networksContain(list, ip("fe80::1")));
  EXPECT_FALSE(networksContain(list, ip("::1")));
  // IPv4-mapped IPv6 matches as IPv4; a v4 network never matches plain v6.
  EXPECT_TRUE(networksContain(list, ip("::ffff:127.0.0.1")));
  EXPECT_FALSE(networksContain(list, ip("::7f00:1")));
  EXPECT_FALSE(networksContain({}, ip("127.0.0.1")));
  EXPECT_TRUE(networksContain(networks({"0.0.0.0/0"}), ip("203.0.113.9")));
  EXPECT_TRUE(networksContain(networks({"::1"}), ip("::1")));
  sockaddr_storage unix_address{};
  unix_address.ss_family = AF_UNIX;
  EXPECT_FALSE(networksContain(networks({"0.0.0.0/0"}), unix_address));
}

constexpr const char* kBackend = "[[backend]]\nname = \"mbx1\"\naddress = \"127.0.0.1:10144\"\n";

ConfigResult parse(const std::string& listen) {
  return parseConfig("[[listen]]\naddress = \"127.0.0.1:10143\"\n" + listen + kBackend,
                     "portico.toml");
}

TEST(InboundProxyConfig, KeysAndDefaults) {
  ConfigResult off = parse("");
  ASSERT_TRUE(off.errors.empty());
  EXPECT_FALSE(off.config->listen[0].proxy_protocol);
  EXPECT_TRUE(off.config->listen[0].trusted_networks.empty());

  ConfigResult on =
      parse("proxy_protocol = true\ntrusted_networks = [\"127.0.0.0/8\", \"fd00::/8\"]\n");
  ASSERT_TRUE(on.errors.empty()) << on.errors[0];
  EXPECT_TRUE(on.config->listen[0].proxy_protocol);
  EXPECT_EQ(on.config->listen[0].trusted_networks, networks({"127.0.0.0/8", "fd00::/8"}));
}

TEST(InboundProxyConfig, Errors) {
  EXPECT_THAT(parse("proxy_protocol = true\n").errors,
              ElementsAre("portico.toml:3: 'proxy_protocol = true' needs 'trusted_networks' (the "
                          "load balancers' addresses)"));
  EXPECT_THAT(parse("proxy_protocol = true\ntrusted_networks = []\n").errors,
              ElementsAre(HasSubstr("portico.toml:3: 'proxy_protocol = true' needs")));
  EXPECT_THAT(parse("trusted_networks = [\"10.0.0.0/8\"]\n").errors,
              ElementsAre("portico.toml:3: 'trusted_networks' needs 'proxy_protocol = true' on "
                          "this listener"));
  EXPECT_THAT(parse("proxy_protocol = true\ntrusted_networks = [\"10.0.0.0/8\", \"10.1.0.0/8\", "
                    "7]\n")
                  .errors,
              ElementsAre(HasSubstr("portico.toml:4: network \"10.1.0.0/8\" has host bits set"),
                          "portico.toml:4: expected a string in 'trusted_networks'"));
  EXPECT_THAT(parse("proxy_protocol = true\ntrusted_networks = \"10.0.0.0/8\"\n").errors,
              ElementsAre("portico.toml:4: expected an array of strings for 'trusted_networks'"));
  EXPECT_THAT(parse("proxy_protocol = \"yes\"\n").errors,
              ElementsAre("portico.toml:3: expected true or false for 'proxy_protocol'"));
}

TEST(InboundProxyConfig, ReloadNamesTheChange) {
  Config before = *parse("").config;
  Config after = *parse("proxy_protocol = true\ntrusted_networks = [\"10.0.0.0/8\"]\n").config;
  EXPECT_THAT(diffListeners(before, after).changed,
              ElementsAre("127.0.0.1:10143 (proxy_protocol false -> true, trusted_networks [] -> "
                          "[10.0.0.0/8])"));
  Config wider =
      *parse("proxy_protocol = true\ntrusted_networks = [\"10.0.0.0/8\", \"::1\"]\n").config;
  EXPECT_THAT(diffListeners(after, wider).changed,
              ElementsAre("127.0.0.1:10143 (trusted_networks [10.0.0.0/8] -> [10.0.0.0/8 "
                          "::1/128])"));
  EXPECT_TRUE(diffListeners(wider, wider).empty());
}

}  // namespace
}  // namespace portico::proxy
