// Protocol log cost on a worker's data path, per record: formatRecord()
// alone, formatRecord() + submit() with the writer running into a temporary
// directory, and the "logging off" check (one relaxed atomic load).
// Items/s is records per second of one core; the time column is ns/record.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "portico/logging.h"

namespace {

using portico::logging::formatRecord;
using portico::logging::ProtocolLog;
using portico::logging::ProtocolRecord;

ProtocolRecord typicalRecord() {
  ProtocolRecord r;
  r.time_ms = 1795813558123;
  r.session_id = 0x00000a3f5c2e9b17ULL;
  r.seq = 42;
  r.server_address = "10.0.0.11:143";
  r.client_address = "192.0.2.7:50123";
  r.user = "joe@example.net";
  r.duration_ms = 3;
  r.request_bytes = 58;
  r.response_bytes = 4120;
  r.command = "UID FETCH";
  r.parameters = "1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Date)])";
  r.context = "R=ok;backend=mbx1";
  return r;
}

// One log shared by all benchmark threads; its files go to a temporary
// directory removed at exit.
struct BenchLog {
  BenchLog() : log(4) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "portico-bench-XXXXXX").string();
    directory = ::mkdtemp(pattern.data());
    ProtocolLog::Options options;
    options.directory = directory;
    options.max_file_size = 64ull << 20;
    options.max_total_size = 256ull << 20;  // retention keeps the disk use bounded
    started = log.start(options).ok();
  }
  ~BenchLog() {
    log.stop();
    std::error_code ec;
    std::filesystem::remove_all(directory, ec);
  }
  ProtocolLog log;
  std::string directory;
  bool started = false;
};

BenchLog& benchLog() {
  static BenchLog instance;
  return instance;
}

void BM_FormatRecord(benchmark::State& state) {
  const ProtocolRecord record = typicalRecord();
  std::string line;
  for (auto _ : state) {
    line.clear();
    formatRecord(record, line);
    benchmark::DoNotOptimize(line.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["bytes_per_record"] = static_cast<double>(line.size());
}
BENCHMARK(BM_FormatRecord);

// Arg 1: flush every 8,192 records (untimed) so the 4 MiB buffer never
// fills and every record is copied and written: the steady-state cost.
// Arg 0: never flush, so producers outrun the disk and most records take
// the "buffer full, drop and count" path: shows submit() never blocks.
void BM_FormatAndSubmit(benchmark::State& state) {
  BenchLog& bench = benchLog();
  if (!bench.started) {
    state.SkipWithError("protocol log did not start");
    return;
  }
  const bool flush_between = state.range(0) != 0;
  ProtocolRecord record = typicalRecord();
  const auto producer = static_cast<std::size_t>(state.thread_index());
  const std::uint64_t dropped_before = bench.log.stats().records_dropped;
  std::string line;
  std::uint32_t since_flush = 0;
  for (auto _ : state) {
    ++record.seq;
    line.clear();
    formatRecord(record, line);
    bench.log.submit(producer, line);
    if (flush_between && ++since_flush == 8192) {
      state.PauseTiming();
      bench.log.flush();
      since_flush = 0;
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
  bench.log.flush();
  if (state.thread_index() == 0) {
    state.counters["dropped"] =
        static_cast<double>(bench.log.stats().records_dropped - dropped_before);
  }
}
BENCHMARK(BM_FormatAndSubmit)->Arg(1)->Arg(0)->Threads(1)->Threads(2);

void BM_LoggingOff(benchmark::State& state) {
  static ProtocolLog stopped(1);  // never started: enabled() is false
  const ProtocolRecord record = typicalRecord();
  std::string line;
  for (auto _ : state) {
    if (stopped.enabled()) {
      formatRecord(record, line);
      stopped.submit(0, line);
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LoggingOff);

void BM_RedactLogin(benchmark::State& state) {
  std::string storage;
  for (auto _ : state) {
    benchmark::DoNotOptimize(portico::logging::redactCommandParameters(
        "LOGIN", "\"joe@example.net\" \"correct horse battery staple\"", storage));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RedactLogin);

}  // namespace
