// libFuzzer target for CommandFramer.
//
// Input layout: byte 0 picks which limits are made small (bytes 1-3 give
// their values) and whether to end AUTHENTICATE / IDLE from the "server"
// side after events; the top bits of bytes 1 and 2 make the "server" refuse
// every command / every synchronizing literal (returnToCommandMode()); bytes
// 4-7 seed the chunk sizes of two split runs, and bytes 6-7 also give ID
// lines an allowance over max_line; the rest is the client stream.
//
// Invariants checked (abort on violation): no crash or out-of-bounds read
// (every piece ends at a guard page); consumed <= input and progress on
// every call (need_more takes all of it; a fatal error is sticky and takes
// nothing); the same events, views' contents and offsets whole, byte by byte
// and under two input-chosen splits; events respect the limits (head,
// tag, name, literal sizes).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "parser/split_harness.h"
#include "portico/parser.h"

namespace {

using namespace portico::parser;
using testing::OwnedCommandEvent;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "command_framer_fuzz: %s\n%s\n", what, detail.c_str());
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

void checkLimits(const Limits& limits, const OwnedCommandEvent& e) {
  if (e.head.size() > limits.max_head || e.tag.size() > limits.max_tag || e.name.size() > 64) {
    fail("event over a limit", testing::describe(e));
  }
  if (e.type == CommandEventType::kLiteral &&
      (e.literal_size > limits.max_literal ||
       (!isSync(e.literal_kind) && e.literal_size > limits.max_nonsync_literal))) {
    fail("literal over the limit", testing::describe(e));
  }
  if (e.type == CommandEventType::kCommand && (e.tag.empty() || e.name.empty())) {
    fail("command without tag or name", testing::describe(e));
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
  if (flags & 32) {
    limits.max_nonsync_literal = data[1] % 24;
  }
  if (data[6] & 1) {
    limits.max_id_line = limits.max_line + 1 + data[7] % 48;
  }
  const bool end_auth = flags & 64;
  const bool end_idle = flags & 128;
  const bool refuse_commands = data[1] & 0x80;
  const bool refuse_literals = data[2] & 0x80;
  const std::string_view stream(reinterpret_cast<const char*>(data) + 8, size - 8);
  if (stream.size() > (1 << 20)) {
    return 0;
  }
  testing::EventHook<CommandFramer> hook = [&](CommandFramer& framer, const OwnedCommandEvent& e) {
    if (end_auth && e.type == CommandEventType::kAuthLine) {
      framer.endAuthentication();
    }
    if (end_idle && e.type == CommandEventType::kCommand && e.name == "IDLE") {
      framer.endIdle();
    }
    if ((refuse_commands && e.type == CommandEventType::kCommand) ||
        (refuse_literals && e.type == CommandEventType::kLiteral && isSync(e.literal_kind))) {
      framer.returnToCommandMode();
      if (framer.awaitingContinuation() || framer.idling() || framer.authenticating()) {
        fail("not in command mode after returnToCommandMode()", testing::describe(e));
      }
    }
  };

  const auto whole = testing::runPieces<CommandFramer>(limits, stream, {0}, guard, hook);
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
    const auto run = testing::runPieces<CommandFramer>(limits, stream, cuts, guard, hook);
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
