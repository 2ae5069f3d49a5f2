// Framer throughput: streams built once, fed in read-sized chunks the way a
// relay sees them, every event taken. Bytes/s is stream bytes per second of
// one core. Targets (bench/RESULTS.md): literal FETCH >= 10 GB/s, short
// FETCH lines >= 1 GB/s, pipelined short commands >= 1 GB/s.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "portico/parser.h"

namespace {

using portico::parser::CommandFramer;
using portico::parser::ResponseFramer;

// Feeds `stream` in `chunk`-byte pieces; returns the number of events.
template <typename Framer>
std::uint64_t feedAll(Framer& framer, std::string_view stream, std::size_t chunk) {
  std::uint64_t events = 0;
  for (std::size_t at = 0; at < stream.size(); at += chunk) {
    std::string_view piece = stream.substr(at, chunk);
    while (!piece.empty()) {
      const auto result = framer.feed(piece);
      piece.remove_prefix(result.consumed);
      events += result.event.type != decltype(result.event.type)::kNeedMore;
      benchmark::DoNotOptimize(result.event.bytes);
    }
  }
  return events;
}

template <typename Framer>
void run(benchmark::State& state, const std::string& stream, std::uint64_t expected_events) {
  Framer framer;
  const std::size_t chunk = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    const std::uint64_t events = feedAll(framer, stream, chunk);
    if (events != expected_events) {
      state.SkipWithError("unexpected event count");
      return;
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * stream.size()));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * expected_events));
  state.counters["bytes_per_event"] =
      static_cast<double>(stream.size()) / static_cast<double>(expected_events);
}

// (a) FETCH responses each carrying a 100 KiB literal.
const std::string& literalFetchStream() {
  static const std::string stream = [] {
    std::string s;
    const std::string body(100 * 1024, 'x');
    for (int i = 1; i <= 64; ++i) {
      s += "* " + std::to_string(i) + " FETCH (UID " + std::to_string(1000 + i) + " BODY[] {" +
           std::to_string(body.size()) + "}\r\n" + body + ")\r\n";
    }
    return s;
  }();
  return stream;
}

// (b) ~80-byte FETCH FLAGS lines.
const std::string& flagsStream() {
  static const std::string stream = [] {
    std::string s;
    for (int i = 1; i <= 8192; ++i) {
      s += "* " + std::to_string(i) + " FETCH (UID " + std::to_string(100000 + i) +
           " MODSEQ (1234567" + std::to_string(i % 10) + ") FLAGS (\\Seen \\Answered $Label1))\r\n";
    }
    return s;
  }();
  return stream;
}

// (c) pipelined short client commands, 20 to 70 bytes.
const std::string& commandStream() {
  static const std::string stream = [] {
    const char* templates[] = {
        " UID FETCH 1:* (FLAGS)\r\n",
        " NOOP\r\n",
        " UID STORE 1:100 +FLAGS.SILENT (\\Seen)\r\n",
        " SELECT \"INBOX\"\r\n",
        " UID SEARCH UNSEEN SINCE 1-Jan-2024 NOT DELETED\r\n",
        " UID FETCH 4711 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)])\r\n",
        " STATUS \"Archive/2023\" (MESSAGES UNSEEN UIDNEXT)\r\n",
    };
    std::string s;
    for (int i = 0; i < 16384; ++i) {
      s += "a" + std::to_string(i) + templates[i % 7];
    }
    return s;
  }();
  return stream;
}

// An APPEND of a 1 MiB message (LITERAL+), then a short command.
const std::string& appendStream() {
  static const std::string stream = [] {
    std::string s;
    const std::string body(1 << 20, 'm');
    for (int i = 0; i < 8; ++i) {
      s += "a" + std::to_string(i) + " APPEND INBOX (\\Seen) {" + std::to_string(body.size()) +
           "+}\r\n" + body + "\r\nb" + std::to_string(i) + " NOOP\r\n";
    }
    return s;
  }();
  return stream;
}

void BM_ResponseLiteralFetch(benchmark::State& state) {
  run<ResponseFramer>(state, literalFetchStream(), 64);
}
void BM_ResponseFlagsLines(benchmark::State& state) {
  run<ResponseFramer>(state, flagsStream(), 8192);
}
void BM_CommandPipelined(benchmark::State& state) {
  run<CommandFramer>(state, commandStream(), 16384);
}
void BM_CommandAppendLiteral(benchmark::State& state) {
  run<CommandFramer>(state, appendStream(), 24);
}

BENCHMARK(BM_ResponseLiteralFetch)->Arg(16 * 1024)->Arg(64 * 1024);
BENCHMARK(BM_ResponseFlagsLines)->Arg(1024)->Arg(16 * 1024)->Arg(64 * 1024);
BENCHMARK(BM_CommandPipelined)->Arg(1024)->Arg(16 * 1024)->Arg(64 * 1024);
BENCHMARK(BM_CommandAppendLiteral)->Arg(64 * 1024);
// Worst case for the resumable paths: every line split across reads.
BENCHMARK(BM_ResponseFlagsLines)->Arg(7)->Name("BM_ResponseFlagsLines_7ByteReads");
BENCHMARK(BM_CommandPipelined)->Arg(7)->Name("BM_CommandPipelined_7ByteReads");

}  // namespace
