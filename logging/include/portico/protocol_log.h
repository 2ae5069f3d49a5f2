// Portico's protocol log: one CSV line per IMAP command in the format of
// Exchange's IMAP4 protocol log, written to rotating files by one writer
// thread. Included from portico/logging.h; include that one.
//
// Contract:
// - formatRecord() and the redaction helpers are pure: no I/O, no clock, no
//   locks, no exceptions. Views in a ProtocolRecord are read during the call
//   only.
// - Passwords never reach a record: callers pass LOGIN and AUTHENTICATE
//   parameters through redactCommandParameters() first, and never log
//   AUTHENTICATE continuation lines.
// - ProtocolLog::submit() never blocks on disk: it copies the line into the
//   producer's bounded buffer under a per-producer mutex that only the
//   writer thread also takes (for a pointer swap). A full buffer drops the
//   record and counts it.
// - Disk errors (full disk, missing or unwritable directory) never stop the
//   proxy: the writer drops the records of the failing batch, counts them,
//   logs one warning per failure episode through portico::logging, and
//   retries (recreating the directory) on later batches.
// - Lines from one producer keep their order. Lines of different producers
//   are interleaved per batch, so a file is not sorted by time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "portico/status.h"

namespace portico::logging {

// One command as Exchange logs it. Views are borrowed for the call.
struct ProtocolRecord {
  std::int64_t time_ms = 0;         // Unix time in milliseconds (UTC)
  std::uint64_t session_id = 0;     // written as 16 lowercase hex digits
  std::uint32_t seq = 0;            // command number within the session, from 0
  std::string_view server_address;  // backend "ip:port"; empty before routing
  std::string_view client_address;  // client "ip:port"
  std::string_view user;            // empty before login
  std::int64_t duration_ms = 0;
  std::uint64_t request_bytes = 0;
  std::uint64_t response_bytes = 0;
  std::string_view command;     // "LOGIN", "SELECT", ...
  std::string_view parameters;  // already redacted; cut at kMaxParameterBytes
  std::string_view context;     // "key=value;key=value"
};

// Exchange cuts the parameters column at 2,048 characters. Portico counts
// bytes and backs off to a UTF-8 character boundary.
inline constexpr std::size_t kMaxParameterBytes = 2048;

inline constexpr std::string_view kProtocolLogFields =
    "dateTime,sessionId,seqNumber,sIp,cIp,user,duration,rqsize,rpsize,command,parameters,"
    "context";

// Appends one line to `out`: the columns of kProtocolLogFields, then "\r\n"
// (Exchange's line end). dateTime is ISO 8601 UTC with milliseconds
// ("2026-11-27T21:05:58.123Z"). A text field that contains a comma or a
// double quote is quoted, with quotes doubled. Control characters (CR, LF
// and the other bytes below 0x20 except TAB, and DEL) become spaces, so a
// record is always exactly one line.
void formatRecord(const ProtocolRecord& record, std::string& out);

// Removes secrets from a command's parameters (the text after the command
// name, without the line end). `command` is compared case-insensitively.
// - LOGIN: "<user> *****", the user as it appeared (atom or quoted string);
//   a literal user "{N}" gives "{N} *****" since its value is not on the
//   line. Anything unparsable gives "*****".
// - AUTHENTICATE: the mechanism only ("PLAIN"); a SASL-IR payload is never
//   kept. Callers that learned the user put it in the record's user column
//   (or in context as "user=...").
// - Other commands: `parameters` unchanged.
// The view form returns either a sub-view of `parameters` or a view of
// `storage` (LOGIN), valid while both live and `storage` is not modified.
std::string_view redactCommandParameters(std::string_view command, std::string_view parameters,
                                         std::string& storage);
std::string redactCommandParameters(std::string_view command, std::string_view parameters);

// The protocol log writer: owns one thread and the files of one log
// (directory + prefix). Thread-safe: submit() from any number of producers
// (each index used by one thread at a time, e.g. one per worker), the other
// calls from a control thread.
//
// Files: <directory>/<prefix><period>-<N>.LOG with N from 1. At start the
// writer continues the highest N of the current period. A new file begins
// with five lines: "#Software: Portico <version>", "#Version: 15.0.0.0"
// (Exchange 2013's, so tools that read Exchange logs take ours),
// "#Log-type: IMAP4 Protocol Log", "#Date: <creation time>" and
// "#Fields: <kProtocolLogFields>".
// Rollover: to a new period's file at the hour/day boundary (by the
// writer's clock when it writes, not by record times), and to N+1 before a
// write would pass max_file_size (split at line boundaries; a single longer
// line gets a file of its own).
// Retention, at start and after each rollover, over this log's files only
// (same prefix and name pattern): files not modified for max_age go, then
// the oldest by name (period, then N) while the total passes
// max_total_size. The current file is never deleted.
class ProtocolLog {
 public:
  struct Options {
    std::string directory;         // created if missing
    std::string prefix = "IMAP4";  // file names: <prefix><period>-<N>.LOG
    enum class Rollover { kHourly, kDaily };
    // The period in file names is UTC YYYYMMDDHH (hourly) or YYYYMMDD (daily).
    Rollover rollover = Rollover::kHourly;
    std::uint64_t max_file_size = 10ull << 20;  // roll to -N+1 before passing it; 0: no limit
    std::chrono::hours max_age{168};            // delete files not written for longer; 0: keep
    std::uint64_t max_total_size = 1ull << 30;  // then delete oldest files; 0: no limit
    // Per producer, reserved twice (the producer's and the writer's half);
    // pages are touched only as records arrive.
    std::size_t queue_bytes_per_producer = 4u << 20;
    std::string software_version = "0.1.0";  // in the "#Software: Portico <v>" header
    // Test seam: the writer's clock for file periods, #Date and age
    // retention. Empty: std::chrono::system_clock::now. Called on the writer
    // thread only.
    std::function<std::chrono::system_clock::time_point()> clock;
  };

  struct Stats {
    std::uint64_t records_written = 0;
    std::uint64_t bytes_written = 0;               // header lines included
    std::uint64_t records_dropped = 0;             // all causes
    std::uint64_t records_dropped_queue_full = 0;  // the part dropped by submit()
    std::uint64_t files_opened = 0;
    std::string directory;
    std::string current_file;  // empty while no file is open
    std::string last_error;    // empty until a failure; kept after recovery
  };

  // `producers` buffers, indexes 0..producers-1 (at least 1).
  explicit ProtocolLog(std::size_t producers);
  ~ProtocolLog();  // stop()
  ProtocolLog(const ProtocolLog&) = delete;
  ProtocolLog& operator=(const ProtocolLog&) = delete;

  // Starts the writer. False (with `error`) for invalid options or when
  // already running. An unusable directory does not fail start: records are
  // dropped and counted until it becomes usable. Runs retention at once.
  Status start(Options options);
  // Writes everything submitted so far, closes the file and joins the
  // writer. Idempotent. Records submitted during or after stop() are
  // dropped (counted when they were already buffered).
  void stop();

  // The data path's check: one relaxed atomic load. False when stopped.
  bool enabled() const;
  std::size_t producers() const;

  // Appends one formatted line (from formatRecord; "\r\n" is added when the
  // line does not end in '\n'). Does nothing when not enabled. Never blocks
  // on the writer's I/O and never allocates (buffers are reserved at
  // start): when the producer's buffer has no room the line is dropped and
  // counted. The writer drains every 150 ms, or at once when a buffer
  // passes half full. Precondition: producer < producers().
  void submit(std::size_t producer, std::string_view line);

  // Waits until everything submitted before the call has been written (or
  // dropped). False on timeout. True at once when not running.
  bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Closes the current file and opens its name again before the next write
  // (after logrotate renamed it; a new file gets header lines). The writer
  // also notices a renamed or deleted file by itself on its next batch.
  void reopen();

  Stats stats() const;

  // Test hook: while paused the writer takes nothing from the buffers, so
  // they fill up (flush() then times out). stop() still drains.
  void pauseWriterForTest(bool paused);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

using ProtocolLogPtr = std::unique_ptr<ProtocolLog>;

}  // namespace portico::logging
