// InboundProxyReader over a fake transport and clock: the header is read
// before anything is written, what follows it is handed on, and every other
// ending (timeout, garbage, peer close, shutdown) closes without a byte.
#include "inbound_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

#include "fakes.h"

namespace portico::proxy {
namespace {

using namespace std::chrono_literals;
using fakes::FakeLoop;
using fakes::FakeTimer;
using fakes::FakeTransport;
using fakes::ipv4Address;

struct RecordingHost final : InboundProxyHost {
  void headerRead(InboundProxyReader*, Transport* transport, const sockaddr_storage& c,
                  const sockaddr_storage& l, Chunk rest) override {
    ++read;
    EXPECT_EQ(static_cast<FakeTransport*>(transport)->handler(), nullptr)
        << "the reader must let go of the transport first";
    client = formatAddress(c);
    local = formatAddress(l);
    this->rest = std::string(rest.view());
  }
  void closed(InboundProxyReader*) override { ++closes; }
  int read = 0;
  int closes = 0;
  std::string client, local, rest;
};

class InboundProxyTest : public ::testing::Test {
 protected:
  InboundProxyReader* start() {
    auto timers = [this](std::function<void()> callback) -> TimerPtr {
      return std::make_unique<FakeTimer>(loop_, std::move(callback));
    };
    return new InboundProxyReader(host_, &transport_, "127.0.0.1:10143", timers, 1000ms, throttle_);
  }
  void TearDown() override {
    EXPECT_TRUE(loop_.violations().empty()) << loop_.violations()[0];
    EXPECT_EQ(transport_.written(), "") << "nothing may be written before the header is read";
    EXPECT_EQ(loop_.armedTimers(), 0u);
  }

  FakeLoop loop_;
  FakeTransport transport_{loop_, "client", ipv4Address("127.0.0.1", 40000),
                           ipv4Address("127.0.0.1", 10143)};
  RecordingHost host_;
  LogThrottle throttle_{std::chrono::seconds(1)};
};

const std::string kV2Header = std::string("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c", 16) +
                              std::string("\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x8f", 12);

TEST_F(InboundProxyTest, HeaderAndWhatFollowsInOneRead) {
  start();
  transport_.deliver(kV2Header + "\x16\x03\x01");
  EXPECT_EQ(host_.read, 1);
  EXPECT_EQ(host_.client, "192.0.2.1:56324");
  EXPECT_EQ(host_.local, "198.51.100.2:143");
  EXPECT_EQ(host_.rest, "\x16\x03\x01");
  EXPECT_FALSE(transport_.closeCalled());
}

TEST_F(InboundProxyTest, HeaderByteByByte) {
  start();
  transport_.deliverBytewise(kV2Header);
  EXPECT_EQ(host_.read, 1);
  EXPECT_EQ(host_.client, "192.0.2.1:56324");
  EXPECT_EQ(host_.rest, "");
}

TEST_F(InboundProxyTest, LocalHeaderKeepsTheConnectionsAddresses) {
  start();
  transport_.deliver(std::string("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", 16) + "a1 NOOP\r\n");
  EXPECT_EQ(host_.read, 1);
  EXPECT_EQ(host_.client, "127.0.0.1:40000");
  EXPECT_EQ(host_.local, "127.0.0.1:10143");
  EXPECT_EQ(host_.rest, "a1 NOOP\r\n");
}

TEST_F(InboundProxyTest, NoHeaderIsCutAtTheTimeout) {
  start();
  loop_.advance(999ms);
  EXPECT_FALSE(transport_.closeCalled());
  loop_.advance(1ms);
  EXPECT_TRUE(transport_.closeCalled());
  loop_.runPending();
  EXPECT_EQ(host_.closes, 1);
  EXPECT_EQ(host_.read, 0);
  EXPECT_EQ(throttle_.pending(), 0u) << "the first refusal is logged at once";
}

TEST_F(InboundProxyTest, SlowHeaderIsCutAtTheTimeoutToo) {
  start();
  const auto begin = loop_.now();
  int sent = 0;
  // 36 bytes, one every 50 ms: each byte is progress, none resets the clock.
  for (char c : std::string("PROXY TCP4 192.168.100.200 10.0.0.1 ")) {
    transport_.deliver(std::string(1, c));
    ++sent;
    loop_.advance(50ms);
    if (transport_.closeCalled()) {
      break;
    }
  }
  EXPECT_TRUE(transport_.closeCalled());
  EXPECT_EQ(sent, 20) << "cut at 1000 ms, not later";
  EXPECT_EQ(loop_.now() - begin, 1000ms);
  loop_.runPending();
  EXPECT_EQ(host_.closes, 1);
}

TEST_F(InboundProxyTest, GarbageIsRefusedAtOnce) {
  start();
  transport_.deliver("a1 LOGIN alice secret\r\n");
  EXPECT_TRUE(transport_.closeCalled());
  loop_.runPending();
  EXPECT_EQ(host_.closes, 1);
  EXPECT_EQ(host_.read, 0);
}

TEST_F(InboundProxyTest, OversizedV2IsRefusedBeforeItsBody) {
  start();
  transport_.deliver(std::string("\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", 16));
  EXPECT_TRUE(transport_.closeCalled());
  loop_.runPending();
  EXPECT_EQ(host_.closes, 1);
}

TEST_F(InboundProxyTest, PeerCloseMidHeader) {
  start();
  transport_.deliver("PROXY TCP4 ");
  transport_.peerClose();
  loop_.runPending();
  EXPECT_EQ(host_.closes, 1);
  EXPECT_EQ(host_.read, 0);
}

TEST_F(InboundProxyTest, AbortClosesQuietly) {
  InboundProxyReader* reader = start();
  reader->abort();
  EXPECT_TRUE(transport_.closeCalled());
  loop_.runPending();
  EXPECT_EQ(host_.closes, 1);
  EXPECT_EQ(throttle_.pending(), 0u);
}

TEST_F(InboundProxyTest, RefusalsAreThrottledAndCounted) {
  // Each reader owns the transport it reads; five in a row within a second.
  for (int i = 0; i < 5; ++i) {
    FakeTransport t(loop_, "c" + std::to_string(i), ipv4Address("127.0.0.1", 40001 + i),
                    ipv4Address("127.0.0.1", 10143));
    auto timers = [this](std::function<void()> callback) -> TimerPtr {
      return std::make_unique<FakeTimer>(loop_, std::move(callback));
    };
    new InboundProxyReader(host_, &t, "127.0.0.1:10143", timers, 1000ms, throttle_);
    t.deliver("x");
    loop_.runPending();
  }
  EXPECT_EQ(host_.closes, 5);
  EXPECT_EQ(throttle_.pending(), 4u) << "one line, four held back for the next";
  start()->abort();  // the fixture's own transport, for TearDown's checks
  loop_.runPending();
}

}  // namespace
}  // namespace portico::proxy
