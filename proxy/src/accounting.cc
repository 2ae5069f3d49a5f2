#include "accounting.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace portico::proxy {

namespace {
constexpr const char* kNames[] = {
#define PORTICO_NAME(name) #name,
    PORTICO_COMMANDS(PORTICO_NAME)
#undef PORTICO_NAME
};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == kCommandCount, "a name for every command");

void addInto(StatsSnapshot::Command& out, const CommandStats& in) {
  out.count += in.count.get();
  out.no += in.no.get();
  out.bad += in.bad.get();
  out.time_us += in.time_us.get();
  for (std::size_t b = 0; b < kBuckets; ++b) {
    out.histogram[b] += in.histogram[b].get();
  }
}

void record(CommandStats& stats, parser::Status status, std::chrono::microseconds time) {
  stats.count.add();
  if (status == parser::Status::kNo) {
    stats.no.add();
  } else if (status == parser::Status::kBad) {
    stats.bad.add();
  }
  stats.time_us.add(static_cast<std::uint64_t>(time.count() < 0 ? 0 : time.count()));
  stats.histogram[bucketFor(time)].add();
}
}  // namespace

const char* commandName(CommandId id) {
  auto i = static_cast<std::size_t>(id);
  return i < kCommandCount ? kNames[i] : "OTHER";
}

CommandId commandId(std::string_view upper_name) {
  // Linear over ~40 short names: cheaper than hashing for names this short,
  // and branch-predictable for the common FETCH/UID FETCH/STORE stream.
  for (std::size_t i = 0; i + 1 < kCommandCount; ++i) {
    if (upper_name == kNames[i]) {
      return static_cast<CommandId>(i);
    }
  }
  return CommandId::kOTHER;
}

std::size_t bucketFor(std::chrono::microseconds time) {
  std::int64_t units = time.count() / 100;  // in 100 us units, rounded up below
  if (time.count() % 100 != 0) {
    ++units;
  }
  if (units <= 1) {
    return 0;
  }
  // Smallest k with 2^k >= units.
  std::size_t k = static_cast<std::size_t>(std::bit_width(static_cast<std::uint64_t>(units - 1)));
  return k < kBuckets - 1 ? k : kBuckets - 1;
}

double bucketUpperSeconds(std::size_t bucket) {
  if (bucket >= kBuckets - 1) {
    return std::numeric_limits<double>::infinity();
  }
  return 0.0001 * std::ldexp(1.0, static_cast<int>(bucket));
}

void BackendStats::recordCommand(CommandId id, parser::Status status,
                                 std::chrono::microseconds time) {
  record(commands[static_cast<std::size_t>(id)], status, time);
  // The ring of the last kRecent processing times, for the moving average.
  auto us = static_cast<std::uint32_t>(
      std::clamp<std::int64_t>(time.count(), 0, static_cast<std::int64_t>(UINT32_MAX)));
  std::uint32_t old = recent_us[recent_next].exchange(us, std::memory_order_relaxed);
  if (recent_count.get() < kRecent) {
    recent_count.add();
  } else {
    recent_sum_us.sub(old);
  }
  recent_sum_us.add(us);
  recent_next = (recent_next + 1) % kRecent;
}

void BackendStats::recordIdle(std::chrono::microseconds time) {
  record(idle, parser::Status::kOk, time);
}

BackendStats& WorkerStats::backend(std::size_t slot) {
  if (slot >= backends.size()) {
    slot = backends.size() - 1;  // "registry full" is refused at config load; never index past
  }
  BackendStats* b = backends[slot].load(std::memory_order_relaxed);
  if (b == nullptr) {
    b = new BackendStats();
    backends[slot].store(b, std::memory_order_release);
  }
  return *b;
}

WorkerStats::~WorkerStats() {
  for (auto& b : backends) {
    delete b.load(std::memory_order_relaxed);
  }
}

std::size_t BackendRegistry::slot(const std::string& name) {
  for (std::size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] == name) {
      return i;
    }
  }
  if (names_.size() >= kMaxBackends) {
    return kMaxBackends;
  }
  names_.push_back(name);
  return names_.size() - 1;
}

std::vector<std::string> BackendRegistry::names() const {
  return names_;
}

StatsSnapshot snapshot(const std::vector<const WorkerStats*>& workers) {
  StatsSnapshot out;
  for (const WorkerStats* w : workers) {
    for (std::size_t k = 0; k < kWorkerCounterCount; ++k) {
      out.*kWorkerSnapshotFields[k] += (w->*kWorkerCounterFields[k]).get();
    }
    for (std::size_t i = 0; i < w->backends.size(); ++i) {
      const BackendStats* bp = w->backends[i].load(std::memory_order_acquire);
      if (bp == nullptr) {
        continue;
      }
      if (out.backends.size() <= i) {
        out.backends.resize(i + 1);
      }
      const BackendStats& b = *bp;
      StatsSnapshot::Backend& o = out.backends[i];
      for (std::size_t k = 0; k < kBackendCounterCount; ++k) {
        o.*kBackendSnapshotFields[k] += (b.*kBackendCounterFields[k]).get();
      }
      for (std::size_t c = 0; c < kCommandCount; ++c) {
        addInto(o.commands[c], b.commands[c]);
      }
      addInto(o.idle, b.idle);
      o.recent_sum_us += b.recent_sum_us.get();
      o.recent_count += b.recent_count.get();
    }
  }
  return out;
}

}  // namespace portico::proxy
