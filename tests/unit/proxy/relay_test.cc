// Relay (session/relay.h) on its own, over a fake owner that records what
// the relay asks of its session: the commands reported to observers, the
// command cap and its read pause, the BYE a shutdown asked for, and the
// client's COMPRESS. Session-level behaviour stays in the session_*_test.cc
// files.

#include "session/relay.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/fakes.h"
#include "session/session.h"

namespace portico::proxy {
namespace {

using fakes::FakeHost;
using fakes::FakeTransport;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Records every call; closes nothing itself (a test checks what was asked).
class RecordingOwner final : public RelayOwner {
 public:
  void relayWriteClient(std::string_view bytes) override { client_writes.append(bytes); }
  void relayClose(std::string_view bye_line, EndReason reason, std::string_view detail) override {
    closes.push_back(std::string(bye_line));
    close_reason = reason;
    (void)detail;
    active = false;
  }
  void relayByeOnShutdown() override {
    ++byes;
    active = false;
  }
  void relayNoteCutResponse(std::string_view reason) override { (void)reason; }
  void relayWarnBackend(std::string_view what) override { warnings.push_back(std::string(what)); }
  void relayUpdateClientReading() override { ++reading_updates; }
  bool relayActive() const override { return active; }
  bool relayOffersCompression() const override { return offer_compress; }
  bool relayCompressClient(std::string_view ok_line) override {
    compress_ok_lines.push_back(std::string(ok_line));
    return compress_works;
  }
  void relayCommandSent(const parser::CommandEvent& event, CommandId command) override {
    (void)command;
    sent.push_back(std::string(event.tag));
  }
  void relayCommandCompleted(const CompletedCommand& command) override {
    completed.push_back(std::string(command.tag));
  }
  void relayLocalCommand(CommandId command, std::string_view parameters, std::string_view result,
                         parser::Status status, std::uint64_t request_bytes,
                         std::uint64_t response_bytes) override {
    (void)command, (void)parameters, (void)status, (void)request_bytes, (void)response_bytes;
    local_results.push_back(std::string(result));
  }

  std::string client_writes;
  std::vector<std::string> closes;
  EndReason close_reason = EndReason::kClosed;
  int byes = 0;
  std::vector<std::string> warnings;
  int reading_updates = 0;
  bool active = true;
  bool offer_compress = true;
  bool compress_works = true;
  std::vector<std::string> compress_ok_lines;
  std::vector<std::string> sent;
  std::vector<std::string> completed;
  std::vector<std::string> local_results;
};

// Takes data from neither side: the test calls the relay itself.
class NullHandler final : public TransportHandler {
 public:
  void onConnected(Transport*, bool, std::string_view) override {}
  void onData(Transport*, Chunk) override {}
  void onDrained(Transport*) override {}
  void onClosed(Transport*, std::string_view) override {}
};

class RelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Config cfg;
    BackendConfig backend;
    backend.name = "mbx1";
    backend.address = HostPort{"10.1.0.1", 143, false};
    cfg.backends.push_back(backend);
    cfg.limits.max_commands_in_flight = 4;
    runtime_ = std::make_shared<RuntimeConfig>(std::move(cfg), std::vector<std::size_t>{2});
    client_ = host_.newClient();
    client_->setHandler(&handler_);
    backend_ =
        static_cast<FakeTransport*>(host_.connectBackend(runtime_->config.backends[0], &handler_));
    client_ptr_ = client_;
    backend_ptr_ = backend_;
  }

  void startRelay(bool bye_requested = false) {
    relay_ = std::make_unique<Relay>(
        owner_, host_, *runtime_, 0,
        RelayLinks{&client_ptr_, &backend_ptr_, &commands_, &bytes_out_, &last_activity_},
        bye_requested);
  }
  void fromClient(std::string_view bytes) { relay_->fromClient(Chunk::copyOf(bytes)); }
  void fromBackend(std::string_view bytes) { relay_->fromBackend(Chunk::copyOf(bytes)); }

  FakeHost host_;
  NullHandler handler_;
  RuntimeConfigPtr runtime_;
  FakeTransport* client_ = nullptr;
  FakeTransport* backend_ = nullptr;
  Transport* client_ptr_ = nullptr;
  Transport* backend_ptr_ = nullptr;
  parser::CommandFramer commands_;
  std::uint64_t bytes_out_ = 0;
  std::chrono::steady_clock::time_point last_activity_{};
  RecordingOwner owner_;
  std::unique_ptr<Relay> relay_;
};

TEST_F(RelayTest, ReportsEachCommandOnceAndForwardsBytesUnchanged) {
  startRelay();
  fromClient("a1 NOOP\r\na2 SELECT INBOX\r\n");
  EXPECT_EQ(backend_->takeWritten(), "a1 NOOP\r\na2 SELECT INBOX\r\n");
  EXPECT_THAT(owner_.sent, ElementsAre("a1", "a2"));
  EXPECT_EQ(relay_->commandsInFlight(), 2u);
  EXPECT_EQ(last_activity_, host_.now());

  const std::string answers = "* 3 EXISTS\r\na2 OK done\r\na1 OK done\r\n";
  fromBackend(answers);
  EXPECT_EQ(client_->takeWritten(), answers);
  EXPECT_EQ(bytes_out_, answers.size());
  EXPECT_THAT(owner_.completed, ElementsAre("a2", "a1"));
  EXPECT_EQ(relay_->commandsInFlight(), 0u);
  EXPECT_EQ(relay_->commands(), 2u);
  EXPECT_THAT(owner_.closes, IsEmpty());
}

TEST_F(RelayTest, CapPausesTheClientAndResumesAtHalf) {
  startRelay();
  fromClient("a1 NOOP\r\na2 NOOP\r\na3 NOOP\r\na4 NOOP\r\na5 NOOP\r\n");
  EXPECT_EQ(backend_->takeWritten(), "a1 NOOP\r\na2 NOOP\r\na3 NOOP\r\na4 NOOP\r\n")
      << "a5 waits, unparsed, while four are in flight";
  EXPECT_FALSE(relay_->readsClient());
  const int updates = owner_.reading_updates;

  fromBackend("a1 OK\r\n");
  EXPECT_FALSE(relay_->readsClient()) << "three in flight: above half of four";
  fromBackend("a2 OK\r\n");
  EXPECT_TRUE(relay_->readsClient());
  EXPECT_GT(owner_.reading_updates, updates);
  EXPECT_EQ(backend_->takeWritten(), "a5 NOOP\r\n");
  EXPECT_EQ(relay_->commandsInFlight(), 3u);
}

TEST_F(RelayTest, ByeWaitsForTheTaggedReply) {
  startRelay();
  fromClient("a1 FETCH 1 BODY[]\r\n");
  relay_->requestBye();
  EXPECT_EQ(owner_.byes, 0) << "a command is in flight";
  fromBackend("* 1 FETCH (BODY[] {5}\r\nhello)\r\n");
  EXPECT_EQ(owner_.byes, 0);
  fromBackend("a1 OK done\r\n");
  EXPECT_EQ(owner_.byes, 1);
}

TEST_F(RelayTest, ByeRequestedDuringLoginGoesAtTheFirstChance) {
  startRelay(/*bye_requested=*/true);
  EXPECT_EQ(owner_.byes, 0) << "nothing checks before the first read";
  fromBackend("* OK still here\r\n");
  EXPECT_EQ(owner_.byes, 1);
}

TEST_F(RelayTest, CompressIsAnsweredByTheRelayNotTheBackend) {
  startRelay();
  fromClient("c1 COMPRESS DEFLATE\r\n");
  EXPECT_EQ(backend_->takeWritten(), "");
  EXPECT_THAT(owner_.compress_ok_lines, ElementsAre("c1 OK DEFLATE active.\r\n"));
  EXPECT_EQ(owner_.client_writes, "") << "the owner writes the OK before it swaps the transport";
  EXPECT_THAT(owner_.local_results, ElementsAre("OK DEFLATE active."));

  fromClient("c2 COMPRESS DEFLATE\r\n");
  EXPECT_EQ(owner_.client_writes, "c2 NO [COMPRESSIONACTIVE] DEFLATE is already active.\r\n");
  EXPECT_EQ(owner_.compress_ok_lines.size(), 1u);
}

TEST_F(RelayTest, PipelinedCompressIsRefusedAndTheRestRelayed) {
  startRelay();
  fromClient("c1 COMPRESS DEFLATE\r\na1 NOOP\r\n");
  EXPECT_THAT(owner_.compress_ok_lines, IsEmpty());
  EXPECT_EQ(owner_.client_writes, "c1 BAD Send nothing after COMPRESS before its reply.\r\n");
  EXPECT_EQ(backend_->takeWritten(), "a1 NOOP\r\n");
}

TEST_F(RelayTest, UnreadableBackendResponseWarnsAndCloses) {
  startRelay();
  fromClient("a1 NOOP\r\n");
  fromBackend("* 1 FETCH (BODY[] {99999999999999999999999999}\r\n");  // an unskippable literal
  ASSERT_EQ(owner_.warnings.size(), 1u);
  EXPECT_THAT(owner_.warnings[0], ::testing::StartsWith("sent an unreadable response ("));
  EXPECT_THAT(owner_.closes, ElementsAre("* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n"))
      << "at a response boundary the client gets a BYE";
  EXPECT_EQ(owner_.close_reason, EndReason::kBackendProtocolError);
  EXPECT_EQ(client_->takeWritten(), "");
}

TEST_F(RelayTest, DescribesTheOldestCommandAndReleasesBuffersOnlyWhenIdle) {
  startRelay();
  fromClient("a1 SEARCH ALL\r\n");
  host_.advance(std::chrono::milliseconds(250));
  fromClient("a2 NOOP\r\n");
  host_.advance(std::chrono::milliseconds(50));
  SessionInfo info;
  relay_->describe(info, host_.now());
  EXPECT_EQ(info.command, "SEARCH") << "the oldest of the two in flight, not the newest";
  EXPECT_EQ(info.command_ms, 300);
  EXPECT_EQ(info.commands_in_flight, 2u);
  EXPECT_FALSE(relay_->releaseIdleBuffers()) << "commands are in flight";
  fromBackend("a1 OK done\r\n");
  relay_->describe(info, host_.now());
  EXPECT_EQ(info.command, "NOOP") << "a2 is the oldest now";
  EXPECT_EQ(info.command_ms, 50);
  EXPECT_EQ(info.commands_in_flight, 1u);
  EXPECT_FALSE(relay_->releaseIdleBuffers()) << "a2 is still in flight";
  fromBackend("a2 OK done\r\n");
  EXPECT_TRUE(relay_->releaseIdleBuffers());
}

}  // namespace
}  // namespace portico::proxy
