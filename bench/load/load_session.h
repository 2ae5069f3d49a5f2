// The event-loop half of portico_load: LoadLoop owns one uv_loop_t and the
// IMAP sessions assigned to it; the main thread drives all loops through
// RunShared (phase + wake-up) and waits on its condition variable.
//
// A session's life: connect, greeting, LOGIN, SELECT, then
// - seed mode: APPEND messages until the mailbox holds --seed-messages, LOGOUT;
// - load mode: wait for Phase::kRun, keep --pipeline commands from the mix in
//   flight, timing each from send to its tagged reply, until Phase::kStop or
//   --max-commands; then LOGOUT.
// Every wait on the server has --timeout. Phase::kAbort closes everything
// without LOGOUT. Sessions are freed with their loop, after every close
// callback has run (the loop has no live handles when run() returns).
//
// Threading: a LoadLoop is built on the main thread, then run() on its own
// thread; only wake() may be called from other threads. stats() may be read
// after run() returned.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "latency_histogram.h"
#include "load_options.h"

namespace portico::load {

enum class Phase : int { kSetup, kRun, kStop, kAbort };

// Shared by the main thread and all loops. Counters are guarded by mu; the
// main thread waits on cv for them.
struct RunShared {
  explicit RunShared(const Options& o) : options(o) {}

  const Options& options;
  sockaddr_storage address{};
  std::string target;        // "host:port" for messages
  std::string seed_message;  // body APPENDed in seed mode
  std::atomic<int> phase{static_cast<int>(Phase::kSetup)};
  std::atomic<std::uint64_t> issued{0};  // commands started, for --max-commands

  std::mutex mu;
  std::condition_variable cv;
  std::uint32_t ready = 0;          // logged in and selected (load) or seeded (seed)
  std::uint32_t setup_failed = 0;   // sessions that never got ready
  std::uint32_t finished = 0;       // ready sessions done with the run (LOGOUT sent or lost)
  std::vector<std::string> errors;  // the first setup failures

  void addReady();
  void addSetupFailure(std::string message);
  void addFinished();
};

struct CommandStats {
  std::uint64_t ok = 0;
  std::uint64_t no = 0;
  std::uint64_t bad = 0;
  LatencyHistogram latency;  // nanoseconds, send -> tagged reply
};

struct LoopStats {
  std::vector<CommandStats> commands;  // by mix index; replies inside the window
  std::uint64_t disconnects = 0;       // the server closed a session during the run
  std::uint64_t timeouts = 0;          // no progress within --timeout during the run
  std::uint64_t protocol_errors = 0;   // unparsable or unexpected replies
  std::uint64_t logouts = 0;           // tagged OK to LOGOUT
  std::uint64_t late_replies = 0;      // replies after the window closed (not counted)
  std::uint64_t literal_bytes = 0;     // literal bodies skipped by count
  std::uint64_t bytes_in = 0;
  std::uint64_t reads = 0;  // read callbacks with data (segments seen by the client)
  std::uint64_t bytes_out = 0;
  std::uint64_t appended = 0;         // seed mode
  std::uint64_t empty_mailboxes = 0;  // SELECT saw EXISTS 0

  void merge(const LoopStats& other);
};

class Session;

class LoadLoop {
 public:
  enum class Mode { kSeed, kLoad };
  struct SessionSpec {
    std::uint32_t index;
    std::string user;
  };

  LoadLoop(RunShared& shared, Mode mode, std::vector<SessionSpec> sessions);
  ~LoadLoop();
  LoadLoop(const LoadLoop&) = delete;
  LoadLoop& operator=(const LoadLoop&) = delete;

  void run();   // returns when every session is closed
  void wake();  // any thread: re-read shared.phase
  const LoopStats& stats() const { return stats_; }

  // For sessions.
  uv_loop_t* uv() { return &loop_; }
  RunShared& shared() { return shared_; }
  const Options& options() const { return shared_.options; }
  Mode mode() const { return mode_; }
  Phase phase() const { return phase_; }
  LoopStats& mutableStats() { return stats_; }
  char* readBuffer() { return read_buffer_.data(); }
  std::size_t readBufferSize() const { return read_buffer_.size(); }
  void setupDone(bool ok, const std::string& message);
  void runFinished();
  void sessionClosed();

 private:
  static void onAsync(uv_async_t* handle);
  static void onSweep(uv_timer_t* handle);
  void applyPhase();
  void startMore();
  void shutdownIfDone();

  RunShared& shared_;
  Mode mode_;
  Phase phase_ = Phase::kSetup;
  uv_loop_t loop_{};
  uv_async_t async_{};
  uv_timer_t sweep_{};
  std::mutex alive_mu_;
  bool alive_ = true;  // async_ may be sent to
  bool shut_down_ = false;
  std::vector<std::unique_ptr<Session>> sessions_;
  std::size_t next_ = 0;  // next session to start
  std::uint32_t in_setup_ = 0;
  std::size_t closed_ = 0;
  std::vector<char> read_buffer_;
  LoopStats stats_;
};

}  // namespace portico::load
