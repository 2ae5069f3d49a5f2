// UvTcpTransport over a real loopback TCP connection and a real libuv loop:
// the write queue counts the memory it holds (whole blocks, not payload),
// small slices of pooled blocks are copied out while they wait, and every
// byte still arrives in order. Each test ends with no handle left open.

#include "net_types.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <cstring>
#include <string>
#include <string_view>

namespace portico::proxy {
namespace {

using Clock = std::chrono::steady_clock;

class Recorder final : public TransportHandler {
 public:
  void onConnected(Transport*, bool ok, std::string_view) override { connected = ok ? 1 : -1; }
  void onData(Transport*, Chunk chunk) override {
    data.append(chunk.view());
    last_read = chunk.data();  // the chunk (and its block) is released on return
  }
  void onDrained(Transport*) override { ++drained; }
  void onClosed(Transport*, std::string_view) override { closed = true; }

  int connected = 0;
  int drained = 0;
  bool closed = false;
  std::string data;
  const char* last_read = nullptr;
};

// A chunk over a fresh pooled block holding `bytes`, as a read makes one.
Chunk pooled(BufferPool& pool, std::string_view bytes) {
  Block* block = pool.acquire();
  std::memcpy(block->data(), bytes.data(), bytes.size());
  return Chunk(block, block->data(), bytes.size());
}

class UvTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(listen_fd_, 0);
    // A small receive buffer (inherited by the accepted socket) makes the
    // transport's queue form after little data.
    int small = 4096;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ASSERT_EQ(::listen(listen_fd_, 1), 0);
    socklen_t len = sizeof(address);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &len);

    transport_ =
        UvTcpTransport::connect(&loop_, reinterpret_cast<sockaddr*>(&address), pool_, &handler_);
    ASSERT_NE(transport_, nullptr);
    ASSERT_TRUE(runUntil([this] { return handler_.connected != 0; }));
    ASSERT_EQ(handler_.connected, 1);
    peer_fd_ = ::accept(listen_fd_, nullptr, nullptr);
    ASSERT_GE(peer_fd_, 0);
    ::fcntl(peer_fd_, F_SETFL, ::fcntl(peer_fd_, F_GETFL) | O_NONBLOCK);
  }

  void TearDown() override {
    if (transport_ != nullptr && !handler_.closed) {
      transport_->close();
      EXPECT_TRUE(runUntil([this] { return handler_.closed; }));
    }
    if (peer_fd_ >= 0) {
      ::close(peer_fd_);
    }
    ::close(listen_fd_);
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle outlived the test";
    EXPECT_EQ(pool_.blocksInUse(), 0u) << "a block was never given back";
  }

  // Runs the loop (reading the peer's side when asked) until pred() or 5 s.
  template <typename Pred>
  bool runUntil(Pred pred, bool read_peer = false) {
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (!pred()) {
      if (Clock::now() > deadline) {
        return false;
      }
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (read_peer) {
        char buffer[65536];
        ssize_t n;
        while ((n = ::read(peer_fd_, buffer, sizeof(buffer))) > 0) {
          received_.append(buffer, static_cast<std::size_t>(n));
        }
      }
      if (!pred()) {
        ::usleep(1000);
      }
    }
    return true;
  }

  // Writes full pooled blocks until the kernel takes no more and a queue forms.
  std::string fillSocketBuffers() {
    std::string sent;
    for (int i = 0; i < 1024 && transport_->queuedBytes() == 0; ++i) {
      std::string bytes(pool_.blockSize(), static_cast<char>('a' + i % 26));
      transport_->write(pooled(pool_, bytes));
      sent += bytes;
    }
    EXPECT_GT(transport_->queuedBytes(), 0u) << "the socket never filled";
    return sent;
  }

  uv_loop_t loop_{};
  BufferPool pool_{64 * 1024, 16};
  Recorder handler_;
  UvTcpTransport* transport_ = nullptr;
  int listen_fd_ = -1;
  int peer_fd_ = -1;
  std::string received_;
};

TEST_F(UvTransportTest, QueueCountsHeldMemoryAndCopiesSmallSlicesOut) {
  transport_->setHighWatermark(4096);
  std::string expected = fillSocketBuffers();
  const std::size_t overhead = UvTcpTransport::writeOverhead();
  const std::size_t block = sizeof(Block) + pool_.blockSize();

  // A 40-byte answer in a 64 KiB read block: copied out, so it holds about
  // its own size, and its block goes straight back to the pool.
  std::size_t before = transport_->queuedBytes();
  std::size_t blocks_before = pool_.blocksInUse();
  const std::string small = "a1 OK NOOP completed (0.001 secs).\r\n";
  transport_->write(pooled(pool_, small));
  expected += small;
  EXPECT_EQ(transport_->queuedBytes() - before, sizeof(Block) + small.size() + overhead);
  EXPECT_EQ(pool_.blocksInUse(), blocks_before) << "the small slice does not pin its block";

  // A quarter block waits zero-copy and counts the whole block it pins.
  before = transport_->queuedBytes();
  const std::string quarter(pool_.blockSize() / 4, 'q');
  transport_->write(pooled(pool_, quarter));
  expected += quarter;
  EXPECT_EQ(transport_->queuedBytes() - before, block + overhead);
  EXPECT_EQ(pool_.blocksInUse(), blocks_before + 1);

  // Copied bytes count their copy.
  before = transport_->queuedBytes();
  const std::string line = "* BYE shutting down\r\n";
  transport_->write(std::string_view(line));
  expected += line;
  EXPECT_EQ(transport_->queuedBytes() - before, sizeof(Block) + line.size() + overhead);

  // Everything arrives, in order; the queue and the pool are empty after.
  ASSERT_TRUE(runUntil([&] { return received_.size() >= expected.size(); }, true))
      << received_.size() << " of " << expected.size();
  EXPECT_TRUE(received_ == expected) << "bytes altered or reordered";
  EXPECT_EQ(transport_->queuedBytes(), 0u);
  EXPECT_EQ(pool_.blocksInUse(), 0u);
  EXPECT_GE(handler_.drained, 1);
}

TEST_F(UvTransportTest, ManySmallQueuedAnswersHoldAboutTheirOwnSize) {
  // 2,000 small answers queued behind a full socket: before, each pinned a
  // 64 KiB block while the queue counted 40 bytes. Now the queue counts
  // what they hold, and that is far below 2,000 blocks.
  std::string expected = fillSocketBuffers();
  const std::size_t before = transport_->queuedBytes();
  const std::size_t blocks_before = pool_.blocksInUse();
  const std::string answer = "a1 OK NOOP completed (0.001 secs).\r\n";
  for (int i = 0; i < 2000; ++i) {
    transport_->write(pooled(pool_, answer));
    expected += answer;
  }
  const std::size_t per_answer = (transport_->queuedBytes() - before) / 2000;
  EXPECT_EQ(per_answer, sizeof(Block) + answer.size() + UvTcpTransport::writeOverhead());
  EXPECT_LT(per_answer, 1024u);
  EXPECT_EQ(pool_.blocksInUse(), blocks_before);
  ASSERT_TRUE(runUntil([&] { return received_.size() >= expected.size(); }, true));
  EXPECT_TRUE(received_ == expected);
  EXPECT_EQ(transport_->queuedBytes(), 0u);
}

TEST_F(UvTransportTest, AReadThatCarriedALoginIsZeroedWhenReleased) {
  // Pre-login (the default): the block a LOGIN was read into goes back to
  // the pool zeroed, so no later session's read block still holds it.
  const std::string login = "a1 LOGIN alice s3cret-pw\r\n";
  ASSERT_EQ(::write(peer_fd_, login.data(), login.size()), static_cast<ssize_t>(login.size()));
  ASSERT_TRUE(runUntil([&] { return handler_.data.size() >= login.size(); }));
  EXPECT_EQ(handler_.data, login);
  ASSERT_EQ(pool_.blocksInUse(), 0u);
  Block* block = pool_.acquire();  // the cached block the read used
  ASSERT_EQ(block->data(), handler_.last_read);
  EXPECT_EQ(std::string(block->data(), login.size()), std::string(login.size(), '\0'))
      << "the password survived in the pool";
  pool_.release(block);

  // In relay the session turns it off: the relay path wipes nothing.
  transport_->setCarriesSecrets(false);
  handler_.data.clear();
  const std::string relay = "b1 FETCH 1 BODY[]\r\n";
  ASSERT_EQ(::write(peer_fd_, relay.data(), relay.size()), static_cast<ssize_t>(relay.size()));
  ASSERT_TRUE(runUntil([&] { return handler_.data.size() >= relay.size(); }));
  block = pool_.acquire();
  ASSERT_EQ(block->data(), handler_.last_read);
  EXPECT_EQ(std::string(block->data(), relay.size()), relay);
  pool_.release(block);
}

}  // namespace
}  // namespace portico::proxy
