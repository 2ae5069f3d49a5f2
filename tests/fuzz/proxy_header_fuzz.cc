// libFuzzer target for ProxyHeaderParser (inbound PROXY protocol v1/v2).
//
// Input layout: byte 0 picks the size bound (0: the default, else
// 16 + 4 * byte), bytes 1-2 seed a split run; the rest is the stream.
//
// Invariants checked (abort on violation): no crash or out-of-bounds read
// (every piece ends at a guard page); consumed <= input; need_more takes
// all of it; kDone and kError are sticky and take nothing; the same result
// at the same offset whole, byte by byte and under an input-chosen split; a
// parsed v2 header is never longer than the bound and a v1 line never longer
// than 107 bytes, its size is the offset where the parser stopped, and it
// has a version of 1 or 2.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "parser/split_harness.h"
#include "portico/proxy_header.h"

namespace {

using namespace portico::parser;

[[noreturn]] void fail(const char* what, std::size_t offset) {
  std::fprintf(stderr, "proxy_header_fuzz: %s (offset %zu)\n", what, offset);
  std::abort();
}

struct Outcome {
  ProxyParseStatus status = ProxyParseStatus::kNeedMore;
  ProxyHeaderError error = ProxyHeaderError::kNone;
  std::size_t offset = 0;
  ProxyHeader header;
};

Outcome run(std::string_view input, const std::vector<std::size_t>& cuts,
            testing::GuardedBuffer& guard, std::size_t max_size) {
  Outcome out;
  ProxyHeaderParser parser(max_size);
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    const std::size_t begin = cuts[c];
    const std::size_t end = c + 1 < cuts.size() ? cuts[c + 1] : input.size();
    std::string_view piece = guard.place(input.substr(begin, end - begin));
    auto r = parser.feed(piece);
    if (r.consumed > piece.size()) {
      fail("consumed more than given", begin);
    }
    out.offset = begin + r.consumed;
    if (r.status == ProxyParseStatus::kNeedMore) {
      if (r.consumed != piece.size()) {
        fail("need_more without taking all input", begin);
      }
      continue;
    }
    out.status = r.status;
    out.error = parser.error();
    out.header = parser.header();
    auto again = parser.feed(piece.substr(r.consumed));
    if (again.consumed != 0 || again.status != r.status) {
      fail("final state not sticky", out.offset);
    }
    return out;
  }
  return out;
}

bool same(const Outcome& a, const Outcome& b) {
  return a.status == b.status && a.error == b.error && a.offset == b.offset &&
         a.header.version == b.header.version && a.header.local == b.header.local &&
         a.header.family == b.header.family && a.header.source == b.header.source &&
         a.header.destination == b.header.destination &&
         a.header.source_port == b.header.source_port &&
         a.header.destination_port == b.header.destination_port && a.header.size == b.header.size;
}

std::vector<std::size_t> seededCuts(std::size_t size, std::uint8_t seed_a, std::uint8_t seed_b) {
  std::vector<std::size_t> cuts{0};
  std::size_t at = 0;
  std::uint32_t state = (static_cast<std::uint32_t>(seed_a) << 8) | seed_b | 1u;
  while (true) {
    state = state * 1103515245u + 12345u;
    at += 1 + (state >> 16) % (1 + seed_a % 32);
    if (at >= size) {
      return cuts;
    }
    cuts.push_back(at);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3 || size > (1 << 16)) {
    return 0;
  }
  static testing::GuardedBuffer guard(1 << 17);
  const std::size_t max_size = data[0] == 0 ? kProxyHeaderDefaultMax : 16 + 4 * data[0];
  const std::string_view stream(reinterpret_cast<const char*>(data) + 3, size - 3);
  const Outcome whole = run(stream, {0}, guard, max_size);
  if (whole.status == ProxyParseStatus::kDone) {
    const ProxyHeader& h = whole.header;
    if (h.size != whole.offset || (h.version == 2 && h.size > max_size) ||
        (h.version == 1 && h.size > kProxyV1MaxLine) || (h.version != 1 && h.version != 2)) {
      fail("inconsistent header", whole.offset);
    }
  } else if (whole.status == ProxyParseStatus::kError) {
    if (whole.error == ProxyHeaderError::kNone || whole.offset == 0) {
      fail("error without a reason or before any byte", whole.offset);
    }
  } else if (whole.offset != stream.size()) {
    fail("need_more before the end of the input", whole.offset);
  }
  for (const auto& cuts :
       {testing::cutsEvery(stream.size(), 1), seededCuts(stream.size(), data[1], data[2])}) {
    if (!same(run(stream, cuts, guard, max_size), whole)) {
      fail("a split changed the result", whole.offset);
    }
  }
  return 0;
}
