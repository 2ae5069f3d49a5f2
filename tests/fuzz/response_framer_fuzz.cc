// libFuzzer target for ResponseFramer.
//
// Input layout: byte 0 picks which limits are made small (bytes 1-3 give
// their values); bytes 4-7 seed the chunk sizes of two split runs; the rest
// is the server stream.
//
// Invariants checked (abort on violation): no crash or out-of-bounds read
// (every piece ends at a guard page); consumed <= input and progress on
// every call (need_more takes all of it; a fatal error is sticky and takes
// nothing); the same events, views' contents and offsets whole, byte by byte
// and under two input-chosen splits; events are consistent (head, tag and
// code/text inside the limits, tagged responses carry a tag and OK/NO/BAD).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "parser/split_harness.h"
#include "portico/parser.h"

namespace {

using namespace portico::parser;
using testing::OwnedResponseEvent;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "response_framer_fuzz: %s\n%s\n", what, detail.c_str());
  std::abort();
}

std::vector<std::size_t> seededCuts(std::size_t size, std::uint8_t seed_a, std::uint8_t seed_b) {
  std::vector<std::size_t> cuts{0};
  std::size_t at = 0;
  std::uint32_t state = (static_cast<std::uint32_t>(seed_a) << 8) | seed_b | 1u;
  while (true) {
    state = state * 1103515245u + 12345u;
    at += 1 + (state >> 16) % (1 + seed_a % 64);
    if (at >= size) {
      return cuts;
    }
    cuts.push_back(at);
  }
}

void checkLimits(const Limits& limits, const OwnedResponseEvent& e) {
  if (e.head.size() > limits.max_head || e.tag.size() > limits.max_tag ||
      e.code_text.size() + e.text.size() > e.head.size()) {
    fail("event over a limit", testing::describe(e));
  }
  if (e.type == ResponseEventType::kTagged &&
      (e.tag.empty() || e.status == Status::kNone || e.status == Status::kBye ||
       e.status == Status::kPreauth)) {
    fail("tagged response without tag or status", testing::describe(e));
  }
  if (e.type != ResponseEventType::kTagged && !e.tag.empty()) {
    fail("tag on an untagged event", testing::describe(e));
  }
  if (e.bytes > e.offset) {
    fail("more bytes than the stream", testing::describe(e));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 8) {
    return 0;
  }
  static testing::GuardedBuffer guard(1 << 20);
  const std::uint8_t flags = data[0];
  Limits limits;
  if (flags & 1) {
    limits.max_line = data[1] % 48;
  }
  if (flags & 2) {
    limits.max_tag = 1 + data[2] % 8;
  }
  if (flags & 4) {
    limits.max_literal = data[3] % 40;
  }
  if (flags & 8) {
    limits.max_number_digits = 1 + data[3] % 5;
  }
  if (flags & 16) {
    limits.max_head = data[2] % 24;
  }
  const std::string_view stream(reinterpret_cast<const char*>(data) + 8, size - 8);
  if (stream.size() > (1 << 20)) {
    return 0;
  }
  const auto whole = testing::runPieces<ResponseFramer>(limits, stream, {0}, guard);
  if (!whole.problem.empty()) {
    fail("contract broken (whole)", whole.problem);
  }
  for (const auto& e : whole.events) {
    checkLimits(limits, e);
  }
  const std::vector<std::vector<std::size_t>> splits = {
      testing::cutsEvery(stream.size(), 1),
      seededCuts(stream.size(), data[4], data[5]),
      seededCuts(stream.size(), data[6], data[7]),
  };
  for (const auto& cuts : splits) {
    const auto run = testing::runPieces<ResponseFramer>(limits, stream, cuts, guard);
    if (!run.problem.empty()) {
      fail("contract broken (split)", run.problem);
    }
    if (run.events != whole.events) {
      fail("split changed the events", "split:\n" + testing::describeAll(run.events) + "whole:\n" +
                                           testing::describeAll(whole.events));
    }
  }
  return 0;
}
