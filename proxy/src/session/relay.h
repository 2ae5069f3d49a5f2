// Relay: the session's last phase, after the backend accepted the login.
// It relays both ways while framing both directions, keeps the commands in
// flight for per-command accounting, caps them (limits.max_commands_in_flight),
// applies write backpressure per direction, answers the client's COMPRESS
// itself and sends the BYE a shutdown asked for once the client is between
// commands.
//
// Ownership: a Session creates its Relay when it enters the relay phase and
// keeps it until the session is deleted. The session keeps what both phases
// share (the transports, the client's command framer, byte counters, the
// end reason); the relay sees those through RelayLinks and asks its owner
// for everything else through RelayOwner. All calls happen on the session's
// worker thread and nothing here blocks. Per command the relay allocates
// only what the in-flight entry needs (a tag longer than the string's
// inline buffer, a new block of the queue); bytes pass as Chunks, unchanged
// except for capability lines (see clientCapabilityLine()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "accounting.h"
#include "end_reason.h"
#include "net_types.h"
#include "portico/parser.h"
#include "runtime.h"

namespace portico::proxy {

class SessionHost;
struct CompletedCommand;
struct SessionInfo;

// What the relay asks of the session that owns it. Session implements it
// privately; a relay calls it at most a few times per read, never per byte.
class RelayOwner {
 public:
  // Writes `bytes` to the client, counted as bytes out.
  virtual void relayWriteClient(std::string_view bytes) = 0;
  // Ends the session (Session::closeWithBye): `bye_line` to the client
  // unless a response is part-way there, then close.
  virtual void relayClose(std::string_view bye_line, EndReason reason,
                          std::string_view detail = {}) = 0;
  // Ends the session with the BYE requestBye() asked for.
  virtual void relayByeOnShutdown() = 0;
  // The client is closed in the middle of a response: logs and counts it.
  virtual void relayNoteCutResponse(std::string_view reason) = 0;
  // Logs a warning about the backend with the session's context:
  // "backend <name> <what>; client=... user=...".
  virtual void relayWarnBackend(std::string_view what) = 0;
  // Pauses or resumes reading the client (Relay::readsClient() has a say).
  virtual void relayUpdateClientReading() = 0;
  // False once the session is closing: the relay starts nothing new.
  virtual bool relayActive() const = 0;
  // COMPRESS=DEFLATE is offered to this client (listener and worker allow it).
  virtual bool relayOffersCompression() const = 0;
  // Starts DEFLATE on the client connection: writes `ok_line` as the last
  // plain bytes, then reads and writes through the compressing transport.
  // False: compression is not available, nothing was written.
  virtual bool relayCompressClient(std::string_view ok_line) = 0;
  // Tell the session's observers (accounting, protocol log, tests).
  virtual void relayCommandSent(const parser::CommandEvent& event, CommandId command) = 0;
  virtual void relayCommandCompleted(const CompletedCommand& command) = 0;
  virtual void relayLocalCommand(CommandId command, std::string_view parameters,
                                 std::string_view result, parser::Status status,
                                 std::uint64_t request_bytes, std::uint64_t response_bytes) = 0;

 protected:
  ~RelayOwner() = default;
};

// The session's state the relay reads or updates on every read. Owned by the
// session, which outlives its relay and keeps the transport pointers current
// (nullptr once a side is closed; the client's changes with COMPRESS).
struct RelayLinks {
  Transport* const* client = nullptr;
  Transport* const* backend = nullptr;
  parser::CommandFramer* commands = nullptr;  // the client's, shared with pre-login
  std::uint64_t* bytes_out = nullptr;         // bytes to the client
  std::chrono::steady_clock::time_point* last_activity = nullptr;  // for the idle timeout
};

// A backend capability line as the client sees it: the backend's COMPRESS=
// entries replaced by Portico's own COMPRESS=DEFLATE when `offer_compress`,
// else dropped. Also used for the login's answer.
std::string clientCapabilityLine(std::string_view line, bool offer_compress);

class Relay {
 public:
  using Clock = std::chrono::steady_clock;

  // Client reads inside a literal body at least this big come from a
  // client streaming full segments, which the kernel acknowledges by itself
  // (see clientSendsMoreUnasked()).
  static constexpr std::size_t kSmallClientRead = 16 * 1024;

  // `backend_index` is the backend of `config` logged in to; `bye_requested`: requestBye() came
  // during the login, so the BYE goes out at the relay's first chance.
  // Resets both framers to the relay's limits.
  Relay(RelayOwner& owner, SessionHost& host, const RuntimeConfig& config,
        std::size_t backend_index, RelayLinks links, bool bye_requested);
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Bytes read from each side (already counted as bytes in by the session).
  void fromClient(Chunk chunk);
  void fromBackend(Chunk chunk);
  // A side's write queue drained below its low watermark.
  void clientDrained();
  void backendDrained();
  // Sends `* BYE` (RelayOwner::relayByeOnShutdown) now if the client is
  // between commands, else after the current command's tagged reply.
  void requestBye();

  // The client may be read: neither the backend's write queue nor the
  // command cap holds it.
  bool readsClient() const { return !client_paused_ && !commands_capped_; }
  // A backend response is part-way to the client.
  bool midResponse() const {
    return !response_framer_.failed() && !response_framer_.atResponseStart();
  }
  // The backend answered LOGOUT or said BYE itself.
  bool logoutSeen() const { return logout_seen_; }
  std::size_t commandsInFlight() const { return inflight_.size(); }
  std::uint64_t commands() const { return commands_; }
  // Fills the in-flight fields of `out` (command, command_ms, commands_in_flight).
  void describe(SessionInfo& out, Clock::time_point now) const;
  // With nothing in flight, gives both framers' line buffers back to the
  // allocator (Session::releaseIdleBuffers()). True if any was released.
  bool releaseIdleBuffers();

 private:
  struct InFlight {
    std::string tag;
    CommandId command = CommandId::kOTHER;
    bool idle = false;
    Clock::time_point sent{};
    std::uint64_t request_bytes = 0;
    std::uint64_t response_bytes = 0;
  };

  // The client's COMPRESS (RFC 4978), answered by Portico itself.
  void handleCompress(const parser::CommandEvent& event, bool pipelined);
  bool atCommandCap() const;
  // After a client read of `read_size` bytes: will the client send more of
  // this command without waiting for an answer (so its ACK must not wait)?
  bool clientSendsMoreUnasked(std::size_t read_size) const;
  void maybeResumeCommands();
  void completeCommand(const parser::ResponseEvent& event);
  void maybeByeOnShutdown();
  BackendStats* backendStats();
  Transport* client() const { return *links_.client; }
  Transport* backend() const { return *links_.backend; }

  RelayOwner& owner_;
  SessionHost& host_;
  const Limits& limits_;
  std::size_t stats_slot_;
  RelayLinks links_;
  parser::CommandFramer& command_framer_;
  parser::ResponseFramer response_framer_;

  std::deque<InFlight> inflight_;
  std::uint64_t commands_ = 0;
  // At limits.max_commands_in_flight: the client is not read, and what was
  // read past the command that reached the cap waits here, unparsed.
  Chunk client_held_;
  bool commands_capped_ = false;
  bool logout_seen_ = false;        // backend answered LOGOUT or sent BYE
  bool bye_requested_ = false;      // requestBye(): BYE once between commands
  bool client_paused_ = false;      // the backend's write queue is over the watermark
  bool backend_paused_ = false;     // the client's write queue is over the watermark
  bool client_compressed_ = false;  // COMPRESS=DEFLATE active on the client connection
};

}  // namespace portico::proxy
