// Session relay (session_testing.h): bytes passed both ways, the accounting
// on a fake clock, COMPRESS=DEFLATE, unreadable literals and backpressure.

#include "session/session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "proxy/deflate_client.h"
#include "proxy/session_testing.h"

namespace portico::proxy {
namespace {

using namespace session_testing;

// ---------------------------------------------------------------------------
// Relay.

TEST_F(SessionTest, RelayPassesBytesUnchangedBothWays) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 SELECT INBOX\r\n");
  EXPECT_EQ(backend->takeWritten(), "a2 SELECT INBOX\r\n");
  backend->deliver("* 3 EXISTS\r\n* FLAGS (\\Seen \\Answered)\r\na2 OK [READ-WRITE] done\r\n");
  EXPECT_EQ(client_->takeWritten(),
            "* 3 EXISTS\r\n* FLAGS (\\Seen \\Answered)\r\na2 OK [READ-WRITE] done\r\n");

  // A command split over reads is forwarded as it comes and counted once.
  client_->deliver("a3 UID FE");
  client_->deliver("TCH 1:* (FL");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  client_->deliver("AGS)\r\n");
  EXPECT_EQ(backend->takeWritten(), "a3 UID FETCH 1:* (FLAGS)\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u);
  // A literal in the reply that looks like a tagged line completes nothing.
  backend->deliver("* 1 FETCH (UID 7 BODY[] {7}\r\na3 OK\r\n)\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u);
  backend->deliver("a3 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "* 1 FETCH (UID 7 BODY[] {7}\r\na3 OK\r\n)\r\na3 OK done\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);

  // APPEND: the backend, not Portico, answers the synchronizing literal.
  client_->deliver("a4 APPEND INBOX (\\Seen) {12}\r\n");
  EXPECT_EQ(client_->takeWritten(), "");
  backend->deliver("+ Ready for literal data\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ Ready for literal data\r\n");
  client_->deliver("x1 NOOP\r\nHi!\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "literal bytes are not a command";
  backend->deliver("a4 OK [APPENDUID 1 9] done\r\n");
  EXPECT_EQ(backend->takeWritten(), "a4 APPEND INBOX (\\Seen) {12}\r\nx1 NOOP\r\nHi!\r\n");
  EXPECT_EQ(client_->takeWritten(), "a4 OK [APPENDUID 1 9] done\r\n");
  EXPECT_EQ(commandStats(CommandId::kAPPEND).count.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 0u);
  EXPECT_EQ(commandStats(CommandId::kFETCH).count.get(), 1u);
}

TEST_F(SessionTest, AcknowledgesAtOnceOnlyWhenTheClientSendsMoreUnasked) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  const int before = client_->acksNow();
  // Whole commands: the answer carries the ACK, no syscall for it.
  client_->deliver("a2 NOOP\r\na3 SELECT INBOX\r\n");
  EXPECT_EQ(client_->acksNow(), before);
  // A synchronizing literal: the client waits for "+", which carries the ACK.
  client_->deliver("a4 APPEND INBOX {12}\r\n");
  EXPECT_EQ(client_->acksNow(), before);
  backend->deliver("+ Ready for literal data\r\n");
  // imaplib: the literal in one write, its CRLF in the next. Nothing answers
  // the literal, so it is acknowledged at once (or a client with Nagle on
  // holds the CRLF for the delayed-ACK timer).
  client_->deliver("Hello world!");
  EXPECT_EQ(client_->acksNow(), before + 1);
  client_->deliver("\r\n");
  EXPECT_EQ(client_->acksNow(), before + 1);
  // A line split over reads, or a small part of a literal body: likewise.
  client_->deliver("a5 NO");
  EXPECT_EQ(client_->acksNow(), before + 2);
  client_->deliver("OP\r\na6 APPEND INBOX {40000+}\r\nsmall part");
  EXPECT_EQ(client_->acksNow(), before + 3);
  // A large read inside a literal: a client streaming full segments, which
  // the kernel acknowledges by itself.
  client_->deliver(std::string(Session::kSmallClientRead, 'x'));
  EXPECT_EQ(client_->acksNow(), before + 3);
  client_->deliver(std::string(40000 - 10 - Session::kSmallClientRead, 'y') + "\r\n");
  EXPECT_EQ(client_->acksNow(), before + 3);
  // IDLE: the client waits for "+ idling".
  client_->deliver("a7 IDLE\r\n");
  EXPECT_EQ(client_->acksNow(), before + 3);
  EXPECT_EQ(backend->takeWritten().size(),
            std::string("a2 NOOP\r\na3 SELECT INBOX\r\na4 APPEND INBOX {12}\r\nHello world!\r\n"
                        "a5 NOOP\r\na6 APPEND INBOX {40000+}\r\n")
                    .size() +
                40000 + 2 + std::string("a7 IDLE\r\n").size());
}

TEST_F(SessionTest, ProcessingTimeIsMeasuredOnTheFakeClock) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 SELECT INBOX\r\n");
  host_.advance(250ms);
  backend->deliver("a2 OK done\r\n");
  CommandStats& select = commandStats(CommandId::kSELECT);
  EXPECT_EQ(select.count.get(), 1u);
  EXPECT_EQ(select.no.get(), 0u);
  EXPECT_EQ(select.bad.get(), 0u);
  EXPECT_EQ(select.time_us.get(), 250'000u);
  // 250 ms is over 100 us * 2^11 and within 100 us * 2^12.
  EXPECT_EQ(select.histogram[12].get(), 1u);
  EXPECT_EQ(select.histogram[11].get() + select.histogram[13].get(), 0u);

  // The clock starts at the command's last byte, not its first.
  client_->deliver("a3 FETCH 1 (FLA");
  host_.advance(100ms);
  client_->deliver("GS)\r\n");
  host_.advance(40ms);
  backend->deliver("a3 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kFETCH).time_us.get(), 40'000u);
}

TEST_F(SessionTest, ErrorsAndUnknownCommandsAreCounted) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 SELECT nosuch\r\na3 SELECT\r\na4 XYZZY 1\r\na5 uid fetch 1 FLAGS\r\n");
  backend->deliver("a2 NO [NONEXISTENT] no such mailbox\r\na3 BAD missing argument\r\n");
  backend->deliver("a4 BAD unknown command\r\na5 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kSELECT).count.get(), 2u);
  EXPECT_EQ(commandStats(CommandId::kSELECT).no.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kSELECT).bad.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kOTHER).count.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kOTHER).bad.get(), 1u);
  EXPECT_EQ(commandStats(CommandId::kFETCH).count.get(), 1u);
  EXPECT_EQ(session_->commandsInFlight(), 0u);
}

TEST_F(SessionTest, PipelinedCommandsAreMatchedByTag) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  BackendStats& stats = backendStats(relay_backend_);
  client_->deliver("p1 NOOP\r\np2 SELECT INBOX\r\np3 FETCH 1 FLAGS\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 3u);
  EXPECT_EQ(stats.commands_in_flight.get(), 3u);
  host_.advance(10ms);
  backend->deliver("p2 OK done\r\n");
  backend->deliver("zz OK not ours\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 2u);
  host_.advance(10ms);
  backend->deliver("p3 OK done\r\np1 OK done\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(stats.commands_in_flight.get(), 0u);
  EXPECT_EQ(commandStats(CommandId::kSELECT).time_us.get(), 10'000u);
  EXPECT_EQ(commandStats(CommandId::kFETCH).time_us.get(), 20'000u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).time_us.get(), 20'000u);

  // Many tags at once, answered in reverse.
  backend->takeWritten();
  std::string commands;
  std::string replies;
  for (int i = 0; i < 100; ++i) {
    commands += "t" + std::to_string(i) + " NOOP\r\n";
    replies = "t" + std::to_string(i) + " OK\r\n" + replies;
  }
  client_->deliver(commands);
  EXPECT_EQ(session_->commandsInFlight(), 100u);
  EXPECT_EQ(stats.commands_in_flight.get(), 100u);
  backend->deliver(replies);
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 101u);
  EXPECT_EQ(backend->takeWritten(), commands);
}

TEST_F(SessionTest, IdleIsCountedApartFromProcessingTime) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("i1 IDLE\r\n");
  backend->deliver("+ idling\r\n");
  host_.advance(5s);
  backend->deliver("* 4 EXISTS\r\n");
  host_.advance(5s);
  client_->deliver("DONE\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "IDLE ends with its tagged reply";
  backend->deliver("i1 OK IDLE terminated\r\n");
  EXPECT_EQ(backend->takeWritten(), "i1 IDLE\r\nDONE\r\n");
  EXPECT_EQ(client_->takeWritten(), "+ idling\r\n* 4 EXISTS\r\ni1 OK IDLE terminated\r\n");
  BackendStats& stats = backendStats(relay_backend_);
  EXPECT_EQ(stats.idle.count.get(), 1u);
  EXPECT_EQ(stats.idle.time_us.get(), 10'000'000u);
  EXPECT_EQ(commandStats(CommandId::kIDLE).count.get(), 0u);
  EXPECT_EQ(commandStats(CommandId::kIDLE).time_us.get(), 0u);
}

TEST_F(SessionTest, IdleRefusedByTheBackendLeavesTheNextCommandCounted) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("i1 IDLE\r\n");
  backend->deliver("i1 NO IDLE not now\r\n");
  client_->deliver("i2 NOOP\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "i2 is a command, not a line instead of DONE";
  backend->deliver("i2 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 1u);
  EXPECT_EQ(backend->takeWritten(), "i1 IDLE\r\ni2 NOOP\r\n");
}

TEST_F(SessionTest, LiteralRefusedByTheBackendLeavesTheNextCommandCounted) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  // Dovecot answers an APPEND to a missing mailbox at once, without "+";
  // the client sends no body but its next command.
  client_->deliver("a2 APPEND nosuch {8}\r\n");
  backend->deliver("a2 NO [TRYCREATE] Mailbox doesn't exist\r\n");
  EXPECT_EQ(client_->takeWritten(), "a2 NO [TRYCREATE] Mailbox doesn't exist\r\n");
  client_->deliver("a3 IDLE\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "a3 IDLE is a command, not a literal body";
  backend->deliver("+ idling\r\n");
  client_->deliver("DONE\r\n");
  backend->deliver("a3 OK Idle completed\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(backend->takeWritten(), "a2 APPEND nosuch {8}\r\na3 IDLE\r\nDONE\r\n");
  // A literal the backend invites is still a body.
  client_->deliver("a4 APPEND INBOX {8}\r\n");
  backend->deliver("+ OK\r\n");
  client_->deliver("a5 NOOP!");  // the 8 bytes of the message
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  client_->deliver("\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "a4 is complete";
  backend->deliver("a4 OK appended\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kAPPEND).count.get(), 1u);
}

TEST_F(SessionTest, CompressIsRefusedWithoutSupportAndNeverForwarded) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("z4 COMPRESS DEFLATE\r\n");
  EXPECT_EQ(backend->takeWritten(), "");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z4 NO [CANNOT]")));
  EXPECT_EQ(state(), SessionState::kRelay);

  // Capability lists in the relay lose the backend's COMPRESS, and a host
  // that cannot compress offers none of its own.
  client_->deliver("k1 CAPABILITY\r\n");
  backend->deliver("* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "* CAPABILITY IMAP4rev1 IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(commandStats(CommandId::kCOMPRESS).count.get(), 1u);
}

TEST_F(SessionTest, CompressOffOnTheListenerIsNeitherOfferedNorAccepted) {
  host_.enableCompression();
  start();
  session_->setCompressOffered(false);  // [[listen]] compress = false
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("k1 CAPABILITY\r\n");
  backend->deliver("* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(), "* CAPABILITY IMAP4rev1 IDLE\r\nk1 OK done\r\n");
  EXPECT_EQ(backend->takeWritten(), "k1 CAPABILITY\r\n");
  client_->deliver("z4 COMPRESS DEFLATE\r\n");
  EXPECT_EQ(backend->takeWritten(), "") << "COMPRESS is never forwarded";
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z4 NO [CANNOT]")));
  EXPECT_EQ(state(), SessionState::kRelay);
}

TEST_F(SessionTest, CompressDeflateIsOfferedAndTerminatedInPortico) {
  host_.enableCompression();
  start();
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  backend->deliver("a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] Logged in\r\n");
  EXPECT_EQ(client_->takeWritten(),
            "a1 OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] Logged in\r\n")
      << "Portico's own COMPRESS=DEFLATE, after login only";
  backend->takeWritten();
  relay_backend_ = session_->backendName();

  client_->deliver("c1 COMPRESS deflate\r\n");
  EXPECT_EQ(backend->takeWritten(), "") << "the backend never sees COMPRESS";
  EXPECT_EQ(client_->takeWritten(), "c1 OK DEFLATE active.\r\n") << "the last plain bytes";

  testing_zlib::ClientDeflater out;
  testing_zlib::ClientInflater in;
  auto clientReads = [&] {
    std::string text;
    EXPECT_TRUE(in.decompress(client_->takeWritten(), text));
    return text;
  };
  const std::string append = "a2 APPEND INBOX {8+}\r\n\x01\x80\r\n\xff\0\r\n!\r\n"s;
  client_->deliver(out.compress(append));
  EXPECT_EQ(backend->takeWritten(), append) << "plaintext on the backend leg";
  EXPECT_EQ(session_->commandsInFlight(), 1u) << "framed in plaintext";
  backend->deliver("* 3 EXISTS\r\na2 OK [APPENDUID 1 3] Append completed.\r\n");
  EXPECT_EQ(clientReads(), "* 3 EXISTS\r\na2 OK [APPENDUID 1 3] Append completed.\r\n");
  EXPECT_EQ(commandStats(CommandId::kAPPEND).count.get(), 1u);

  // A second COMPRESS, now compressed itself, is refused compressed.
  client_->deliver(out.compress("c2 COMPRESS DEFLATE\r\n"));
  EXPECT_EQ(clientReads(), "c2 NO [COMPRESSIONACTIVE] DEFLATE is already active.\r\n");
  EXPECT_EQ(commandStats(CommandId::kCOMPRESS).count.get(), 2u);

  // The client's ACK still comes from the TCP connection mid-command.
  const int acks = client_->acksNow();
  client_->deliver(out.compress("a3 APPEND INBOX {4+}\r\nab"));
  EXPECT_EQ(client_->acksNow(), acks + 1);
  client_->deliver(out.compress("cd\r\n"));
  EXPECT_EQ(backend->takeWritten(), "a3 APPEND INBOX {4+}\r\nabcd\r\n");

  // A corrupt stream ends the session with a reason in the log.
  LogCapture log;
  client_->deliver("\xff\xfe garbage that is no DEFLATE block");
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
  EXPECT_THAT(log.text(), HasSubstr("COMPRESS: corrupt DEFLATE stream"));
}

TEST_F(SessionTest, CompressOnlyAloneBetweenCommands) {
  host_.enableCompression();
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  // Pipelined plaintext after COMPRESS: refused, and the rest is relayed.
  client_->deliver("z2 COMPRESS DEFLATE\r\nz3 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "z3 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z2 BAD ")));
  // With a command in progress: refused.
  client_->deliver("z4 COMPRESS DEFLATE\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z4 NO [CANNOT]")));
  backend->deliver("z3 OK NOOP done\r\n");
  EXPECT_EQ(client_->takeWritten(), "z3 OK NOOP done\r\n");
  // Unknown mechanism.
  client_->deliver("z5 COMPRESS ZSTD\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("z5 BAD ")));
  EXPECT_EQ(backend->takeWritten(), "");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kCOMPRESS).count.get(), 3u);
  // Still plain: a plain NOOP works.
  client_->deliver("z6 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "z6 NOOP\r\n");
  backend->deliver("z6 OK\r\n");
  EXPECT_EQ(client_->takeWritten(), "z6 OK\r\n");
}

TEST_F(SessionTest, CompressBeforeLoginIsNotAllowed) {
  host_.enableCompression();
  start();
  client_->takeWritten();
  client_->deliver("p1 COMPRESS DEFLATE\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("p1 BAD ")));
  EXPECT_THAT(host_.connects(), IsEmpty());
  client_->deliver("p2 CAPABILITY\r\n");
  EXPECT_THAT(client_->takeWritten(), Not(HasSubstr("COMPRESS")));
}

TEST_F(SessionTest, ByteCountersMatchWhatWasRelayed) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  WorkerStats& worker = host_.stats();
  BackendStats& stats = backendStats(relay_backend_);
  const std::uint64_t to_clients = worker.bytes_to_clients.get();
  const std::uint64_t from_clients = worker.bytes_from_clients.get();
  const std::string commands = "y1 NOOP\r\ny2 COMPRESS DEFLATE\r\ny3 CAPABILITY\r\n";
  const std::string replies =
      "y1 OK\r\n* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\ny3 OK done\r\n";
  client_->deliver(commands);
  backend->deliver(replies);
  const std::string to_backend = backend->takeWritten();
  const std::string to_client = client_->takeWritten();
  EXPECT_EQ(to_backend, "y1 NOOP\r\ny3 CAPABILITY\r\n");
  EXPECT_EQ(worker.bytes_from_clients.get() - from_clients, commands.size());
  EXPECT_EQ(stats.bytes_from_backend.get(), replies.size());
  EXPECT_EQ(stats.bytes_to_backend.get(), to_backend.size());
  EXPECT_EQ(worker.bytes_to_clients.get() - to_clients, to_client.size());
}

TEST_F(SessionTest, UnreadableLiteralFromTheClientEndsTheSession) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  // A literal size too long to read: the stream cannot be resynchronised.
  client_->deliver("a2 APPEND INBOX {99999999999999999999999999}\r\na3 NOOP\r\n");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("* BYE ")));
  EXPECT_TRUE(client_->shutdownCalled());
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, UnreadableLiteralFromTheBackendEndsTheSession) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("a2 FETCH 1 BODY[]\r\n");
  backend->deliver("* 1 FETCH (BODY[] {99999999999999999999999999}\r\nabc");
  EXPECT_THAT(lines(client_->takeWritten()), ElementsAre(StartsWith("* BYE [UNAVAILABLE]")));
  EXPECT_TRUE(client_->shutdownCalled());
  host_.runPending();
  EXPECT_EQ(host_.endedCount(), 1);
}

TEST_F(SessionTest, UnreadableBackendLineDuringLoginFailsThatBackend) {
  Config cfg = baseConfig();
  for (BackendConfig& backend : cfg.backends) {
    backend.forward_id = true;
  }
  start(cfg);
  client_->deliver("a1 LOGIN alice secret\r\n");
  FakeTransport* backend = host_.lastBackend();
  backend->connectOk();
  backend->deliver(kGreetingSaslIr);
  EXPECT_EQ(state(), SessionState::kBackendId);
  backend->deliver("* 1 FETCH (BODY[] {99999999999999999999999999}\r\nP0ID OK\r\n");
  EXPECT_TRUE(backend->closeCalled());
  host_.runPending();
  EXPECT_EQ(host_.connects().size(), 2u) << "nothing was sent yet: the next candidate";
}

TEST_F(SessionTest, BackpressurePausesTheOtherSide) {
  start();
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  const std::size_t high = config().limits.write_high_watermark;

  backend->setQueuedBytes(high);
  client_->deliver("b1 NOOP\r\n");
  EXPECT_FALSE(client_->paused()) << "at the watermark is not over it";
  backend->setQueuedBytes(high + 1);
  client_->deliver("b2 NOOP\r\n");
  EXPECT_TRUE(client_->paused());
  client_->deliver("b3 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 NOOP\r\n");
  backend->drain();
  EXPECT_FALSE(client_->paused());
  host_.runPending();
  EXPECT_EQ(backend->takeWritten(), "b3 NOOP\r\n");

  client_->setQueuedBytes(high + 1);
  backend->deliver("* 1 EXISTS\r\n");
  EXPECT_TRUE(backend->paused());
  EXPECT_FALSE(client_->paused());
  client_->drain();
  EXPECT_FALSE(backend->paused());
  EXPECT_EQ(client_->takeWritten(), "* 1 EXISTS\r\n");
}

TEST_F(SessionTest, CommandsInFlightAreCappedAndReadingResumesAtHalf) {
  Config cfg = baseConfig();
  cfg.limits.max_commands_in_flight = 4;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);

  // Six commands in one read: four go out, the rest waits unparsed and the
  // client is not read until half of the four are answered.
  client_->deliver("b1 NOOP\r\nb2 NOOP\r\nb3 NOOP\r\nb4 NOOP\r\nb5 NOOP\r\nb6 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 NOOP\r\nb3 NOOP\r\nb4 NOOP\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 4u);
  EXPECT_TRUE(client_->paused());
  client_->deliver("b7 NOOP\r\n");  // held by the (fake) kernel while paused
  EXPECT_EQ(backend->takeWritten(), "");

  backend->deliver("b1 OK done\r\n");
  EXPECT_TRUE(client_->paused()) << "3 in flight is above half of 4";
  EXPECT_EQ(backend->takeWritten(), "");
  backend->deliver("b2 OK done\r\n");
  EXPECT_EQ(backend->takeWritten(), "b5 NOOP\r\nb6 NOOP\r\n") << "the held rest, in order";
  EXPECT_EQ(session_->commandsInFlight(), 4u);
  EXPECT_TRUE(client_->paused()) << "the held rest reached the cap again";

  backend->deliver("b3 OK done\r\nb4 OK done\r\n");
  host_.runPending();
  EXPECT_FALSE(client_->paused());
  EXPECT_EQ(backend->takeWritten(), "b7 NOOP\r\n");
  backend->deliver("b5 OK done\r\nb6 OK done\r\nb7 OK done\r\n");
  EXPECT_EQ(client_->takeWritten(),
            "b1 OK done\r\nb2 OK done\r\nb3 OK done\r\nb4 OK done\r\nb5 OK done\r\n"
            "b6 OK done\r\nb7 OK done\r\n");
  EXPECT_EQ(session_->commandsInFlight(), 0u);
  EXPECT_EQ(commandStats(CommandId::kNOOP).count.get(), 7u);
  EXPECT_EQ(session_->info(host_.now()).bytes_in, 23u + 63u)  // LOGIN, then the commands
      << "held bytes are counted once";
}

TEST_F(SessionTest, CommandCapNeverPausesInsideIdle) {
  Config cfg = baseConfig();
  cfg.limits.max_commands_in_flight = 2;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  client_->deliver("b1 NOOP\r\nb2 IDLE\r\n");
  EXPECT_FALSE(client_->paused()) << "IDLE waits for the client's DONE";
  backend->deliver("+ idling\r\n");
  client_->deliver("DONE\r\nb3 NOOP\r\nb4 NOOP\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 IDLE\r\nDONE\r\nb3 NOOP\r\n");
  EXPECT_TRUE(client_->paused());
  backend->deliver("b1 OK done\r\nb2 OK idle done\r\n");
  EXPECT_EQ(backend->takeWritten(), "b4 NOOP\r\n");
  backend->deliver("b3 OK done\r\nb4 OK done\r\n");
  EXPECT_FALSE(client_->paused());
}

TEST_F(SessionTest, WatermarkDrainDoesNotLiftTheCommandCap) {
  Config cfg = baseConfig();
  cfg.limits.max_commands_in_flight = 1;
  start(cfg);
  FakeTransport* backend = loginToRelay();
  ASSERT_NE(backend, nullptr);
  backend->setQueuedBytes(config().limits.write_high_watermark + 1);
  client_->deliver("b1 NOOP\r\nb2 NOOP\r\n");
  EXPECT_TRUE(client_->paused());
  backend->drain();
  EXPECT_TRUE(client_->paused()) << "still one command unanswered";
  backend->deliver("b1 OK done\r\n");
  EXPECT_EQ(backend->takeWritten(), "b1 NOOP\r\nb2 NOOP\r\n");
  backend->deliver("b2 OK done\r\n");
  EXPECT_FALSE(client_->paused());
}

}  // namespace
}  // namespace portico::proxy
