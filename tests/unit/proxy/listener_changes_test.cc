// Reload matches listeners by address (issue 9, defect 3): reordering
// [[listen]] is no change, and every real change is named for the log.
#include <gtest/gtest.h>

#include "config/config.h"
#include "runtime.h"

namespace portico::proxy {
namespace {

ListenConfig entry(const std::string& address, TlsMode tls = TlsMode::kNone,
                   bool require_tls = false) {
  ListenConfig l;
  l.address = *parseHostPort(address);
  l.tls = tls;
  l.require_tls = require_tls;
  return l;
}

Config withListeners(std::vector<ListenConfig> listeners) {
  Config c;
  c.listen = std::move(listeners);
  return c;
}

TEST(ListenerChanges, ReorderIsNoChange) {
  Config before =
      withListeners({entry("127.0.0.1:143"), entry("127.0.0.1:993", TlsMode::kImplicit)});
  Config after =
      withListeners({entry("127.0.0.1:993", TlsMode::kImplicit), entry("127.0.0.1:143")});
  ListenerChanges changes = diffListeners(before, after);
  EXPECT_TRUE(changes.empty());
  EXPECT_EQ(changes.summary(), "listeners unchanged");
}

TEST(ListenerChanges, AddedRemovedAndChangedByAddress) {
  Config before = withListeners({entry("127.0.0.1:143", TlsMode::kStarttls),
                                 entry("127.0.0.1:993", TlsMode::kImplicit), entry("[::1]:143")});
  Config after =
      withListeners({entry("127.0.0.1:993", TlsMode::kNone),
                     entry("127.0.0.1:143", TlsMode::kStarttls, true), entry("127.0.0.1:1143")});
  ListenerChanges changes = diffListeners(before, after);
  EXPECT_EQ(changes.added, std::vector<std::string>{"127.0.0.1:1143"});
  EXPECT_EQ(changes.removed, std::vector<std::string>{"[::1]:143"});
  EXPECT_EQ(changes.changed,
            (std::vector<std::string>{"127.0.0.1:993 (tls implicit -> none)",
                                      "127.0.0.1:143 (require_tls false -> true)"}));
  EXPECT_EQ(changes.summary(),
            "listeners added 127.0.0.1:1143; removed [::1]:143; changed 127.0.0.1:993 (tls "
            "implicit -> none), 127.0.0.1:143 (require_tls false -> true)");
}

TEST(ListenerChanges, TlsMinVersionCountsOnlyWithTls) {
  ListenConfig a = entry("127.0.0.1:993", TlsMode::kImplicit);
  ListenConfig b = a;
  b.tls_min_version = "TLSv1.3";
  EXPECT_EQ(diffListeners(withListeners({a}), withListeners({b})).changed,
            std::vector<std::string>{"127.0.0.1:993 (tls_min_version TLSv1.2 -> TLSv1.3)"});
  ListenConfig plain = entry("127.0.0.1:143");
  ListenConfig plain13 = plain;
  plain13.tls_min_version = "TLSv1.3";
  EXPECT_TRUE(diffListeners(withListeners({plain}), withListeners({plain13})).empty());
}

TEST(ListenerChanges, CertificatesAloneAreNoListenerChange) {
  ListenConfig a = entry("127.0.0.1:993", TlsMode::kImplicit);
  a.cert = "/a.pem";
  ListenConfig b = a;
  b.cert = "/b.pem";  // re-read on every reload anyway
  EXPECT_TRUE(diffListeners(withListeners({a}), withListeners({b})).empty());
}

TEST(ListenerChanges, RuntimeFindsSettingsByAddress) {
  Config c = withListeners({entry("127.0.0.1:993", TlsMode::kImplicit), entry("127.0.0.1:143")});
  RuntimeConfig runtime(std::move(c), {});
  ASSERT_EQ(runtime.listener_index.size(), 2u);
  EXPECT_EQ(runtime.config.listen[runtime.listener_index.at("127.0.0.1:993")].tls,
            TlsMode::kImplicit);
  EXPECT_EQ(runtime.config.listen[runtime.listener_index.at("127.0.0.1:143")].tls, TlsMode::kNone);
}

// One spelling per IPv6 address, so the same address is the same listener
// across reloads (and a duplicate is found).
TEST(ListenerChanges, Ipv6AddressesAreCanonical) {
  EXPECT_EQ(parseHostPort("[::0001]:143")->text(), "[::1]:143");
  EXPECT_EQ(parseHostPort("[2001:DB8:0:0::1]:993")->text(), "[2001:db8::1]:993");
  Config before = withListeners({entry("[0:0::1]:143")});
  Config after = withListeners({entry("[::1]:143")});
  EXPECT_TRUE(diffListeners(before, after).empty());
}

}  // namespace
}  // namespace portico::proxy
