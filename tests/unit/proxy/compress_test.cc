// DeflateTransport (COMPRESS=DEFLATE, RFC 4978) over a fake connection: the
// client side is played with zlib directly, as a real client would.
#include "net_types.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/deflate_client.h"
#include "proxy/fakes.h"

namespace portico::proxy {
namespace {

using fakes::FakeLoop;
using fakes::FakeTimer;
using fakes::FakeTransport;
using fakes::ipv4Address;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing_zlib::ClientDeflater;
using testing_zlib::ClientInflater;
using namespace std::string_literals;

// What the session would be: records what it hears, and may pause the
// transport after each block (as the relay does over its watermark).
class Recorder final : public TransportHandler {
 public:
  void onConnected(Transport*, bool, std::string_view) override {}
  void onData(Transport* transport, Chunk chunk) override {
    ++reads;
    largest_read = std::max(largest_read, chunk.size());
    received.append(chunk.view());
    if (pause_each_read) {
      transport->pauseReading();
    }
  }
  void onDrained(Transport*) override { ++drained; }
  void onClosed(Transport*, std::string_view why) override {
    closed = true;
    reason = std::string(why);
  }

  std::string received;
  int reads = 0;
  std::size_t largest_read = 0;
  int drained = 0;
  bool pause_each_read = false;
  bool closed = false;
  std::string reason;
};

class DeflateTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    inner_ = std::make_unique<FakeTransport>(loop_, "client", ipv4Address("192.0.2.7", 50123),
                                             ipv4Address("192.0.2.1", 143));
    inner_->setHandler(&recorder_);  // as the session had it before COMPRESS
    transport_ = DeflateTransport::create(
        inner_.get(),
        [this](std::function<void()> callback) {
          return std::make_unique<FakeTimer>(loop_, std::move(callback));
        },
        pool_);
    ASSERT_NE(transport_, nullptr);
    transport_->setHandler(&recorder_);
  }
  void TearDown() override {
    if (!recorder_.closed) {
      transport_->close();
      loop_.runPending();
    }
    EXPECT_TRUE(recorder_.closed);
    EXPECT_THAT(loop_.violations(), IsEmpty());
    EXPECT_EQ(pool_.blocksInUse(), 0u) << "a block outlived the transport";
  }
  // What the client decodes of everything written to it so far.
  std::string clientView() {
    std::string out;
    EXPECT_TRUE(client_in_.decompress(inner_->takeWritten(), out));
    return out;
  }

  FakeLoop loop_;
  BufferPool pool_{16 * 1024, 8};
  std::unique_ptr<FakeTransport> inner_;
  Recorder recorder_;
  DeflateTransport* transport_ = nullptr;
  ClientDeflater client_out_;
  ClientInflater client_in_;
};

TEST_F(DeflateTransportTest, RoundTripsBothWays) {
  const std::string command = "a1 APPEND INBOX {12}\r\n\x01\x80\xff\r\nbody\r\n\0!\r\n"s;
  inner_->deliver(client_out_.compress(command));
  EXPECT_EQ(recorder_.received, command);

  const std::string response = "* 1 FETCH (BODY[] {6}\r\n\0\xfe\r\n\x7f!)\r\na2 OK done\r\n"s;
  transport_->write(std::string_view(response));
  transport_->write(std::string_view("* 2 EXISTS\r\n"));
  std::string wire = inner_->written();
  EXPECT_NE(wire.find("\x00\x00\xff\xff"s), std::string::npos) << "each write ends in a sync flush";
  EXPECT_EQ(clientView(), response + "* 2 EXISTS\r\n") << "decodable as soon as written";
  EXPECT_EQ(wire.find("a2 OK"), std::string::npos) << "not plaintext on the wire";
}

TEST_F(DeflateTransportTest, CompressedInputSplitAtEveryByte) {
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += "t" + std::to_string(i) + " UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n";
  }
  std::string wire = client_out_.compress(text);
  inner_->deliverBytewise(wire);
  EXPECT_EQ(recorder_.received, text);
}

TEST_F(DeflateTransportTest, WritesOfIncompressibleBytesStayDecodable) {
  std::mt19937 rng(7);
  std::string noise(200 * 1024, '\0');
  for (char& c : noise) {
    c = static_cast<char>(rng());
  }
  transport_->write(std::string_view(noise));
  EXPECT_EQ(clientView(), noise);
}

TEST_F(DeflateTransportTest, BombIsInflatedOneBlockAtATimeUnderBackpressure) {
  // 16 MiB of zeros is about 16 KiB on the wire: one read must not turn
  // into 16 MiB of memory. The recorder pauses after every block, as the
  // relay does when the backend's queue is over its watermark.
  const std::size_t total = 16u << 20;
  std::string zeros(1 << 20, '\0');
  std::string wire;
  for (std::size_t i = 0; i < total / zeros.size(); ++i) {
    wire += client_out_.compress(zeros, Z_NO_FLUSH);
  }
  wire += client_out_.compress("", Z_SYNC_FLUSH);
  ASSERT_LT(wire.size(), 32u * 1024);
  recorder_.pause_each_read = true;
  inner_->deliver(wire);
  EXPECT_EQ(recorder_.reads, 1);
  EXPECT_EQ(recorder_.received.size(), pool_.blockSize()) << "one block, then the pause holds";
  EXPECT_TRUE(inner_->paused()) << "no more compressed input is read while paused";
  EXPECT_LE(pool_.blocksInUse(), 1u) << "only the compressed input is held";
  EXPECT_LE(transport_->zlibBytes(), net::kDeflateMemoryBound);

  // Each resume inflates one more block, from the loop (never inside
  // resumeReading()).
  for (int round = 0; round < 5; ++round) {
    transport_->resumeReading();
    EXPECT_EQ(recorder_.reads, 1 + round) << "nothing delivered inside resumeReading()";
    loop_.advance(std::chrono::milliseconds(1));
    EXPECT_EQ(recorder_.reads, 2 + round);
  }
  // Without pauses the rest streams out in blocks.
  recorder_.pause_each_read = false;
  transport_->resumeReading();
  loop_.advance(std::chrono::milliseconds(1));
  EXPECT_EQ(recorder_.received.size(), total);
  EXPECT_EQ(recorder_.largest_read, pool_.blockSize());
  EXPECT_EQ(recorder_.received.find_first_not_of('\0'), std::string::npos);
  EXPECT_FALSE(recorder_.closed);
}

TEST_F(DeflateTransportTest, CorruptStreamClosesWithAReason) {
  inner_->deliver(client_out_.compress("a1 NOOP\r\n"));
  EXPECT_EQ(recorder_.received, "a1 NOOP\r\n");
  inner_->deliver("\xff\xff\xff\xff not deflate at all");
  EXPECT_TRUE(inner_->closeCalled());
  loop_.runPending();
  ASSERT_TRUE(recorder_.closed);
  EXPECT_THAT(recorder_.reason, HasSubstr("COMPRESS: corrupt DEFLATE stream"));
  EXPECT_EQ(recorder_.received, "a1 NOOP\r\n");
}

TEST_F(DeflateTransportTest, EndOfTheClientsStreamCloses) {
  inner_->deliver(client_out_.compress("a1 NOOP\r\n", Z_FINISH));
  loop_.runPending();
  ASSERT_TRUE(recorder_.closed);
  EXPECT_THAT(recorder_.reason, HasSubstr("ended its DEFLATE stream"));
}

TEST_F(DeflateTransportTest, ForwardsAcksWatermarksAndShutdown) {
  transport_->acknowledgeNow();
  EXPECT_EQ(inner_->acksNow(), 1) << "Nagle/QUICKACK behaviour is the TCP connection's";
  transport_->setHighWatermark(12345);
  EXPECT_EQ(inner_->highWatermark(), 12345u);
  inner_->setQueuedBytes(77);
  EXPECT_EQ(transport_->queuedBytes(), 77u);
  inner_->drain();
  EXPECT_EQ(recorder_.drained, 1);
  transport_->write(std::string_view("* BYE bye\r\n"));
  transport_->shutdown();
  EXPECT_TRUE(inner_->shutdownCalled());
  EXPECT_EQ(clientView(), "* BYE bye\r\n") << "nothing held back at shutdown";
  loop_.runPending();
  EXPECT_TRUE(recorder_.closed);
}

TEST_F(DeflateTransportTest, MemoryPerSessionStaysUnderTheDocumentedBound) {
  std::string text;
  for (int i = 0; i < 5000; ++i) {
    text += "* " + std::to_string(i) + " FETCH (FLAGS (\\Seen) UID " + std::to_string(i) + ")\r\n";
  }
  transport_->write(std::string_view(text));
  inner_->deliver(client_out_.compress(text));
  EXPECT_EQ(clientView(), text);
  EXPECT_EQ(recorder_.received, text);
  const std::size_t bytes = transport_->zlibBytes();
  // deflate: 4 KiB window x 2 + 1 << (6 + 9) + state; inflate: 32 KiB + state.
  EXPECT_GT(bytes, 80u * 1024);
  EXPECT_LE(bytes, net::kDeflateMemoryBound);
  RecordProperty("zlib_bytes_per_session", static_cast<int>(bytes));
  std::printf("zlib bytes per compressed session: %zu\n", bytes);
}

}  // namespace
}  // namespace portico::proxy
