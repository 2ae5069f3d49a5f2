// Self-test for portico_load's pure parts: the reply scanner (every case fed
// whole, byte at a time and split at every offset), the latency histogram
// and the option parsers. Prints failures and exits non-zero on any.
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "latency_histogram.h"
#include "load_options.h"
#include "reply_scanner.h"

namespace portico::load {
namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

struct Collector {
  std::vector<std::string> lines;
  bool onResponse(ReplyScanner::Kind kind, std::string_view line) {
    char k = kind == ReplyScanner::Kind::kTagged     ? 'T'
             : kind == ReplyScanner::Kind::kUntagged ? 'U'
                                                     : 'C';
    lines.push_back(std::string(1, k) + ":" + std::string(line));
    return true;
  }
};

struct ScanCase {
  std::string input;
  std::vector<std::string> expected;
  bool ok = true;
};

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    out += "[" + s + "]";
  }
  return out;
}

void runScan(const ScanCase& c, const std::vector<std::size_t>& cuts, const std::string& how) {
  ReplyScanner scanner;
  Collector sink;
  bool ok = true;
  std::size_t pos = 0;
  for (std::size_t cut : cuts) {
    ok = ok && scanner.feed(c.input.data() + pos, cut - pos, sink);
    pos = cut;
  }
  ok = ok && scanner.feed(c.input.data() + pos, c.input.size() - pos, sink);
  check(ok == c.ok, "scan ok flag " + how + " for " + c.input.substr(0, 60));
  if (c.ok) {
    check(sink.lines == c.expected, "scan " + how + ": got " + join(sink.lines) + " want " +
                                        join(c.expected) + " for " + c.input.substr(0, 60));
    check(scanner.idle(), "scanner not idle after " + how);
  }
}

void testScanner() {
  std::string big(70000, 'x');
  std::vector<ScanCase> cases = {
      {"* OK ready\r\n", {"U:* OK ready"}},
      {"a1 OK done\r\n", {"T:a1 OK done"}},
      {"+ go ahead\r\n+\r\n", {"C:+ go ahead", "C:+"}},
      {"* 1 FETCH (BODY[] {5}\r\nab}\r\n)\r\na2 OK Fetch\r\n",
       {"U:* 1 FETCH (BODY[] {5}", "T:a2 OK Fetch"}},
      // Literal whose body looks like lines and a tagged reply.
      {"* 1 FETCH (BODY[] {14}\r\na9 OK fake\r\n\r\n FLAGS ())\r\na3 OK x\r\n",
       {"U:* 1 FETCH (BODY[] {14}", "T:a3 OK x"}},
      // Two literals in one response, a zero-length one, binary ~{N}.
      {"* 2 FETCH (BODY[1] {3}\r\nabc BODY[2] {0}\r\n BINARY[3] ~{2}\r\n\r\n)\r\na4 OK\r\n",
       {"U:* 2 FETCH (BODY[1] {3}", "T:a4 OK"}},
      // A status response ending in "}" carries no literal.
      {"* OK [ALERT] see {5}\r\na5 OK\r\n", {"U:* OK [ALERT] see {5}", "T:a5 OK"}},
      {"* LIST () \"/\" {5}\r\nINBOX\r\na6 OK\r\n", {"U:* LIST () \"/\" {5}", "T:a6 OK"}},
      {"* 3 EXISTS\n* 0 RECENT\r\n", {"U:* 3 EXISTS", "U:* 0 RECENT"}},
      {"* 1 FETCH (BODY[] {" + std::to_string(big.size()) + "}\r\n" + big + ")\r\na7 OK\r\n",
       {"U:* 1 FETCH (BODY[] {" + std::to_string(big.size()) + "}", "T:a7 OK"}},
      {"* 1 FETCH (BODY[] {12345678901234567890}\r\n", {}, false},
  };
  for (const ScanCase& c : cases) {
    runScan(c, {}, "whole");
    if (c.input.size() < 2000) {
      std::vector<std::size_t> bytewise;
      for (std::size_t i = 1; i < c.input.size(); ++i) {
        bytewise.push_back(i);
      }
      runScan(c, bytewise, "byte at a time");
      for (std::size_t i = 1; i < c.input.size(); ++i) {
        runScan(c, {i}, "split at " + std::to_string(i));
      }
    } else {
      for (std::size_t i = 1; i < c.input.size(); i += 997) {
        runScan(c, {i}, "split at " + std::to_string(i));
      }
    }
  }
  // A too-long line is fatal.
  ReplyScanner scanner;
  Collector sink;
  std::string huge(ReplyScanner::kMaxLine + 10, 'y');
  check(!scanner.feed(huge.data(), huge.size(), sink), "overlong line accepted");
}

void testHistogram() {
  LatencyHistogram h;
  for (std::uint64_t v = 1; v <= 100000; ++v) {
    h.record(v * 1000);
  }
  auto near = [](std::uint64_t got, double want) {
    return got >= want * 0.99 && got <= want * 1.01;
  };
  check(near(h.percentile(50), 50e6), "p50 " + std::to_string(h.percentile(50)));
  check(near(h.percentile(99), 99e6), "p99 " + std::to_string(h.percentile(99)));
  check(near(h.percentile(99.9), 99.9e6), "p999 " + std::to_string(h.percentile(99.9)));
  check(h.percentile(100) == 100000000, "p100 is the max");
  check(h.min() == 1000 && h.count() == 100000, "min/count");
  for (std::uint64_t v : {0ull, 1ull, 127ull, 128ull, 255ull, 1000ull, 123456789ull, ~0ull}) {
    std::uint64_t back = LatencyHistogram::valueOf(LatencyHistogram::bucketOf(v));
    double err =
        v ? (static_cast<double>(back) - static_cast<double>(v)) / static_cast<double>(v) : 0;
    check(err > -0.005 && err < 0.005, "bucket precision at " + std::to_string(v));
    check(LatencyHistogram::bucketOf(v) < LatencyHistogram::kBuckets, "bucket range");
  }
  LatencyHistogram one;
  one.record(42);
  check(one.percentile(50) == 42 && one.percentile(99.9) == 42, "single sample");
}

void testOptions() {
  std::uint64_t ns = 0;
  check(parseDuration("10s", ns).empty() && ns == 10'000'000'000ull, "10s");
  check(parseDuration("250ms", ns).empty() && ns == 250'000'000ull, "250ms");
  check(parseDuration("2m", ns).empty() && ns == 120'000'000'000ull, "2m");
  check(parseDuration("1.5", ns).empty() && ns == 1'500'000'000ull, "1.5");
  check(!parseDuration("ten", ns).empty(), "bad duration");
  check(!parseDuration("5x", ns).empty(), "bad unit");
  check(formatUser("user%02d", 3) == "user03", "user%02d");
  check(formatUser("u%d@x", 17) == "u17@x", "u%d");
  check(formatUser("alice", 5) == "alice", "plain user");
  check(!checkUserPattern("u%s").empty(), "%s rejected");
  check(!checkUserPattern("u%d%d").empty(), "two conversions rejected");
  std::vector<MixEntry> mix;
  check(parseMix("NOOP:5,SELECT:1,FETCH:3,STATUS:1", {}, "INBOX", mix).empty() && mix.size() == 4,
        "default mix");
  check(mix[1].text == "SELECT \"INBOX\"", "SELECT text " + mix[1].text);
  auto schedule = buildSchedule(mix);
  check(schedule.size() == 10, "schedule length");
  int counts[4] = {0, 0, 0, 0};
  for (auto s : schedule) {
    ++counts[s];
  }
  check(counts[0] == 5 && counts[1] == 1 && counts[2] == 3 && counts[3] == 1, "schedule counts");
  check(parseMix("fetchbody:2,X", {"x=UID FETCH 1:* (UID)"}, "INBOX", mix).empty(), "define");
  check(mix.size() == 2 && mix[0].has_seq && mix[0].before == "FETCH " &&
            mix[0].after == " BODY.PEEK[]" && mix[1].text == "UID FETCH 1:* (UID)",
        "seq split and define");
  check(!parseMix("BOGUS:1", {}, "INBOX", mix).empty(), "unknown command rejected");
  check(!parseMix("NOOP:1,NOOP:2", {}, "INBOX", mix).empty(), "duplicate rejected");
  check(quoteImap("a\"b\\c") == "\"a\\\"b\\\\c\"", "quoting");
  for (std::uint32_t percent : {1u, 5u, 33u, 50u, 100u}) {
    std::uint32_t active = 0;
    std::uint32_t first_hundred = 0;
    for (std::uint32_t i = 0; i < 9000; ++i) {
      active += sessionIsActive(i, percent) ? 1 : 0;
      first_hundred += i < 100 && sessionIsActive(i, percent) ? 1 : 0;
    }
    check(active == 90 * percent && first_hundred == percent,
          "active sessions spread evenly at " + std::to_string(percent) + "%");
  }
}

}  // namespace
}  // namespace portico::load

int main() {
  portico::load::testScanner();
  portico::load::testHistogram();
  portico::load::testOptions();
  if (portico::load::failures == 0) {
    std::puts("portico_load_selftest: all passed");
    return 0;
  }
  std::fprintf(stderr, "portico_load_selftest: %d failures\n", portico::load::failures);
  return 1;
}
