// Per-command accounting, written by one worker thread and read by the
// control thread without locks: every counter is a relaxed atomic with a
// single writer (the worker does load+store, no locked read-modify-write),
// and readers sum across workers. Each worker's block is cache-line aligned.
//
// Processing time: from the moment a command's last byte is handed to the
// backend until its tagged reply arrives. Histogram buckets are log-scale:
// bucket k counts times <= 100us * 2^k, k = 0..kBuckets-2 (100 us .. ~14 min, past the
// 10 min the issue asks for),
// the last bucket counts the rest.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "counters.h"
#include "portico/parser.h"

namespace portico::proxy {

// Command names Portico counts by name; everything else is OTHER.
// clang-format 14 cannot lay out this X-macro list stably (it changes it on
// every run), so it is left as written.
// clang-format off
#define PORTICO_COMMANDS(X) \
  X(CAPABILITY) X(NOOP) X(LOGOUT) X(STARTTLS) X(AUTHENTICATE) X(LOGIN) X(ENABLE) \
  X(SELECT) X(EXAMINE) X(CREATE) X(DELETE) X(RENAME) X(SUBSCRIBE) X(UNSUBSCRIBE) \
  X(LIST) X(LSUB) X(NAMESPACE) X(STATUS) X(APPEND) X(IDLE) X(CHECK) X(CLOSE) \
  X(UNSELECT) X(EXPUNGE) X(SEARCH) X(FETCH) X(STORE) X(COPY) X(MOVE) X(ID) \
  X(GETQUOTA) X(GETQUOTAROOT) X(SETQUOTA) X(GETACL) X(SETACL) X(MYRIGHTS) \
  X(SORT) X(THREAD) X(COMPRESS) X(GETMETADATA) X(SETMETADATA) X(XLIST) X(OTHER)
// clang-format on

enum class CommandId : std::uint8_t {
#define PORTICO_ENUM(name) k##name,
  PORTICO_COMMANDS(PORTICO_ENUM)
#undef PORTICO_ENUM
      kCount
};
inline constexpr std::size_t kCommandCount = static_cast<std::size_t>(CommandId::kCount);
const char* commandName(CommandId id);
CommandId commandId(std::string_view upper_name);  // unknown -> kOTHER

inline constexpr std::size_t kBuckets = 25;
std::size_t bucketFor(std::chrono::microseconds time);
double bucketUpperSeconds(std::size_t bucket);  // +inf for the last

// A relaxed counter with one writer.
class Counter {
 public:
  void add(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void sub(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  std::uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

struct CommandStats {
  Counter count;
  Counter no;
  Counter bad;
  Counter time_us;  // sum of processing times
  std::array<Counter, kBuckets> histogram;
};

// One worker's counters for one backend (or, at index "none", sessions that
// never reached a backend).
struct alignas(64) BackendStats {
#define PORTICO_COUNTER_FIELD(field, ...) Counter field;
  PORTICO_BACKEND_COUNTERS(PORTICO_COUNTER_FIELD)
  std::array<CommandStats, kCommandCount> commands;
  CommandStats idle;  // IDLE ... DONE, kept apart from processing time

  // The last kRecent commands' processing times (IDLE excluded), for the
  // moving average that AverageCommandProcessingTimeGt60sMonitor samples.
  static constexpr std::size_t kRecent = 1024;
  std::array<std::atomic<std::uint32_t>, kRecent> recent_us{};
  Counter recent_sum_us;        // sum of the ring's values
  Counter recent_count;         // values in the ring (<= kRecent)
  std::size_t recent_next = 0;  // writer-only

  void recordCommand(CommandId id, parser::Status status, std::chrono::microseconds time);
  void recordIdle(std::chrono::microseconds time);
};

struct alignas(64) WorkerStats {
  // Logins Portico answered NO are logins_rejected (the backend said NO, or
  // the SASL payload named no user) or logins_unavailable (no backend could
  // be reached); successful logins are BackendStats::sessions_total.
  PORTICO_WORKER_COUNTERS(PORTICO_COUNTER_FIELD)
#undef PORTICO_COUNTER_FIELD
  // By backend stats slot (BackendRegistry); allocated by the worker on first
  // use and published with release, read by the control thread with acquire.
  std::array<std::atomic<BackendStats*>, 256> backends{};
  BackendStats& backend(std::size_t slot);
  ~WorkerStats();
};

// The portico_sessions_ended_total counter for `reason`.
inline Counter& endedCounter(WorkerStats& stats, EndReason reason) {
#define PORTICO_ENDED_FIELD(X, id, label, text) &WorkerStats::ended_##label,
  static constexpr Counter WorkerStats::*kFields[] = {PORTICO_END_REASONS(PORTICO_ENDED_FIELD, _)};
#undef PORTICO_ENDED_FIELD
  return stats.*kFields[static_cast<std::size_t>(reason)];
}

// Stable stats slots for backend names, so counters survive a reload that
// reorders or adds backends. Used by the control thread only (config load).
inline constexpr std::size_t kMaxBackends = 256;
class BackendRegistry {
 public:
  // Slot for `name`; a new name gets the next slot; returns kMaxBackends when full.
  std::size_t slot(const std::string& name);
  std::vector<std::string> names() const;  // by slot

 private:
  std::vector<std::string> names_;
};

// A sum over workers, taken by the control thread.
struct StatsSnapshot {
  struct Command {
    std::uint64_t count = 0, no = 0, bad = 0, time_us = 0;
    std::array<std::uint64_t, kBuckets> histogram{};
  };
  struct Backend {
#define PORTICO_SNAPSHOT_FIELD(field, ...) std::uint64_t field = 0;
    PORTICO_BACKEND_COUNTERS(PORTICO_SNAPSHOT_FIELD)
    std::array<Command, kCommandCount> commands{};
    Command idle;
    std::uint64_t recent_sum_us = 0, recent_count = 0;  // moving-average inputs
    double averageProcessingMs() const {
      return recent_count == 0 ? 0.0 : static_cast<double>(recent_sum_us) / recent_count / 1000.0;
    }
  };
  PORTICO_WORKER_COUNTERS(PORTICO_SNAPSHOT_FIELD)
#undef PORTICO_SNAPSHOT_FIELD
  std::vector<Backend> backends;
};

StatsSnapshot snapshot(const std::vector<const WorkerStats*>& workers);

// The lists' fields by row, in the order of kWorkerCounters and
// kBackendCounters, for code that walks the table.
#define PORTICO_MEMBER(field, ...) &Struct::field,
#define Struct WorkerStats
inline constexpr Counter WorkerStats::*kWorkerCounterFields[] = {
    PORTICO_WORKER_COUNTERS(PORTICO_MEMBER)};
#undef Struct
#define Struct StatsSnapshot
inline constexpr std::uint64_t StatsSnapshot::*kWorkerSnapshotFields[] = {
    PORTICO_WORKER_COUNTERS(PORTICO_MEMBER)};
#undef Struct
#define Struct BackendStats
inline constexpr Counter BackendStats::*kBackendCounterFields[] = {
    PORTICO_BACKEND_COUNTERS(PORTICO_MEMBER)};
#undef Struct
#define Struct StatsSnapshot::Backend
inline constexpr std::uint64_t StatsSnapshot::Backend::*kBackendSnapshotFields[] = {
    PORTICO_BACKEND_COUNTERS(PORTICO_MEMBER)};
#undef Struct
#undef PORTICO_MEMBER

}  // namespace portico::proxy
