// Split harness for the framers: runs one input whole, byte by byte, split
// at every offset (or at sampled offsets and chunk sizes for big inputs) and
// checks that every run gives the same events at the same stream offsets.
//
// Each piece is copied against a PROT_NONE guard page, so a framer reading
// one byte past the input it was given crashes the test. Events are copied
// into owned structs (views included) as soon as feed() returns, since the
// views die at the next feed(). Free of GoogleTest so that the fuzz targets
// use it too.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "portico/parser.h"

namespace portico::parser::testing {

struct OwnedCommandEvent {
  CommandEventType type = CommandEventType::kNeedMore;
  std::string tag;
  std::string name;
  bool uid = false;
  std::uint64_t literal_size = 0;
  LiteralKind literal_kind = LiteralKind::kSync;
  std::uint64_t bytes = 0;
  std::uint32_t literals = 0;
  std::string head;
  bool head_truncated = false;
  ErrorCode code = ErrorCode::kNone;
  bool fatal = false;
  std::string message;
  std::uint64_t offset = 0;  // stream offset just past the event's last byte
  bool operator==(const OwnedCommandEvent&) const = default;
};

struct OwnedResponseEvent {
  ResponseEventType type = ResponseEventType::kNeedMore;
  std::string tag;
  Status status = Status::kNone;
  std::string code_text;  // the response code
  std::string text;
  std::string head;
  bool head_truncated = false;
  std::uint64_t bytes = 0;
  std::uint32_t literals = 0;
  ErrorCode code = ErrorCode::kNone;
  bool fatal = false;
  std::string message;
  std::uint64_t offset = 0;
  bool operator==(const OwnedResponseEvent&) const = default;
};

inline OwnedCommandEvent own(const CommandEvent& e, std::uint64_t offset) {
  return OwnedCommandEvent{e.type,
                           std::string(e.tag),
                           std::string(e.name),
                           e.uid,
                           e.literal_size,
                           e.literal_kind,
                           e.bytes,
                           e.literals,
                           std::string(e.head),
                           e.head_truncated,
                           e.error.code,
                           e.error.fatal,
                           e.error.message,
                           offset};
}

inline OwnedResponseEvent own(const ResponseEvent& e, std::uint64_t offset) {
  return OwnedResponseEvent{e.type,
                            std::string(e.tag),
                            e.status,
                            std::string(e.code),
                            std::string(e.text),
                            std::string(e.head),
                            e.head_truncated,
                            e.bytes,
                            e.literals,
                            e.error.code,
                            e.error.fatal,
                            e.error.message,
                            offset};
}

inline std::string printable(std::string_view s, std::size_t max = 80) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c >= 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max) {
    out += "...(" + std::to_string(s.size()) + " bytes)";
  }
  return out;
}

inline std::string describe(const OwnedCommandEvent& e) {
  std::string out = std::string(commandEventTypeName(e.type)) + "@" + std::to_string(e.offset);
  out += " tag='" + printable(e.tag) + "' name='" + e.name + "'" + (e.uid ? " uid" : "");
  if (e.type == CommandEventType::kLiteral) {
    out += " literal=" + std::to_string(e.literal_size) + "/" +
           std::to_string(static_cast<int>(e.literal_kind));
  }
  out += " bytes=" + std::to_string(e.bytes) + " literals=" + std::to_string(e.literals);
  out += " head='" + printable(e.head) + "'" + (e.head_truncated ? "+" : "");
  if (e.type == CommandEventType::kError) {
    out += std::string(" error=") + errorCodeName(e.code) + (e.fatal ? " fatal" : "");
  }
  return out;
}

inline std::string describe(const OwnedResponseEvent& e) {
  std::string out = std::string(responseEventTypeName(e.type)) + "@" + std::to_string(e.offset);
  out += " tag='" + printable(e.tag) + "' status=" + statusName(e.status);
  out += " code='" + printable(e.code_text) + "' text='" + printable(e.text) + "'";
  out += " bytes=" + std::to_string(e.bytes) + " literals=" + std::to_string(e.literals);
  out += " head='" + printable(e.head) + "'" + (e.head_truncated ? "+" : "");
  if (e.type == ResponseEventType::kError) {
    out += std::string(" error=") + errorCodeName(e.code) + (e.fatal ? " fatal" : "");
  }
  return out;
}

template <typename Events>
std::string describeAll(const Events& events) {
  std::string out;
  for (const auto& e : events) {
    out += "  " + describe(e) + "\n";
  }
  return out;
}

template <typename Framer>
struct FramerTraits;

template <>
struct FramerTraits<CommandFramer> {
  using Owned = OwnedCommandEvent;
  static bool needMore(const CommandEvent& e) { return e.type == CommandEventType::kNeedMore; }
  static bool fatal(const CommandEvent& e) {
    return e.type == CommandEventType::kError && e.error.fatal;
  }
};

template <>
struct FramerTraits<ResponseFramer> {
  using Owned = OwnedResponseEvent;
  static bool needMore(const ResponseEvent& e) { return e.type == ResponseEventType::kNeedMore; }
  static bool fatal(const ResponseEvent& e) {
    return e.type == ResponseEventType::kError && e.error.fatal;
  }
};

// Memory whose end touches an inaccessible page.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(std::size_t capacity) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    size_ = (capacity + page - 1) / page * page;
    if (size_ == 0) {
      size_ = page;
    }
    void* map =
        mmap(nullptr, size_ + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
      std::abort();
    }
    base_ = static_cast<char*>(map);
    mprotect(base_ + size_, page, PROT_NONE);
    page_ = page;
  }
  ~GuardedBuffer() { munmap(base_, size_ + page_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  // A copy of `bytes` that ends right at the guard page.
  std::string_view place(std::string_view bytes) {
    if (bytes.size() > size_) {
      std::abort();
    }
    char* start = base_ + size_ - bytes.size();
    if (!bytes.empty()) {
      std::memcpy(start, bytes.data(), bytes.size());
    }
    return std::string_view(start, bytes.size());
  }

 private:
  char* base_ = nullptr;
  std::size_t size_ = 0;
  std::size_t page_ = 0;
};

// Called after every event; may act on the framer (endAuthentication()).
// It must depend only on the events so far, so that all runs agree.
template <typename Framer>
using EventHook = std::function<void(Framer&, const typename FramerTraits<Framer>::Owned&)>;

template <typename Framer>
struct Run {
  std::vector<typename FramerTraits<Framer>::Owned> events;
  std::string problem;  // empty: every feed() kept the contract
};

// Feeds `input` in pieces starting at each offset of `cuts` (ascending, the
// first being 0). Stops after a fatal error.
template <typename Framer>
Run<Framer> runPieces(const Limits& limits, std::string_view input,
                      const std::vector<std::size_t>& cuts, GuardedBuffer& guard,
                      const EventHook<Framer>& hook = {}) {
  using Traits = FramerTraits<Framer>;
  Run<Framer> run;
  Framer framer(limits);
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    const std::size_t begin = cuts[c];
    const std::size_t end = c + 1 < cuts.size() ? cuts[c + 1] : input.size();
    std::string_view piece = guard.place(input.substr(begin, end - begin));
    const auto empty = framer.feed(std::string_view(piece.data() + piece.size(), 0));
    if (empty.consumed != 0 || (Traits::needMore(empty.event) == framer.failed())) {
      run.problem = "feed(empty) did not return need_more/0 at offset " + std::to_string(begin);
      return run;
    }
    std::size_t done = 0;
    while (done < piece.size()) {
      const std::size_t left = piece.size() - done;
      const auto result = framer.feed(piece.substr(done));
      if (result.consumed > left) {
        run.problem = "consumed more than given at offset " + std::to_string(begin + done);
        return run;
      }
      done += result.consumed;
      if (Traits::needMore(result.event)) {
        if (result.consumed != left) {
          run.problem = "need_more without taking all input at " + std::to_string(begin + done);
          return run;
        }
        continue;
      }
      run.events.push_back(own(result.event, begin + done));
      if (Traits::fatal(result.event)) {
        // Sticky: asking again gives the same error and takes nothing.
        const auto again = framer.feed(piece.substr(done));
        if (again.consumed != 0 || !Traits::fatal(again.event) || !framer.failed() ||
            again.event.error.code != result.event.error.code) {
          run.problem = "fatal error not sticky at " + std::to_string(begin + done);
        }
        return run;
      }
      if (result.consumed == 0) {
        run.problem = "event without progress at " + std::to_string(begin + done);
        return run;
      }
      if (hook) {
        hook(framer, run.events.back());
      }
    }
  }
  return run;
}

inline std::vector<std::size_t> cutsEvery(std::size_t size, std::size_t chunk) {
  std::vector<std::size_t> cuts{0};
  for (std::size_t at = chunk; at < size; at += chunk) {
    cuts.push_back(at);
  }
  return cuts;
}

// Runs `input` whole and then split many ways; returns the whole run's
// events and, in `mismatch`, a description of the first split that
// disagreed (empty when all agreed). Exhaustive below `exhaustive_limit`
// bytes: byte by byte and every single split point; above it: chunk sizes
// and `samples` evenly spread split points.
template <typename Framer>
Run<Framer> runAllSplits(const Limits& limits, std::string_view input, std::string* mismatch,
                         const EventHook<Framer>& hook = {}, std::size_t exhaustive_limit = 4096,
                         std::size_t samples = 64) {
  GuardedBuffer guard(input.size());
  Run<Framer> whole = runPieces<Framer>(limits, input, {0}, guard, hook);
  mismatch->clear();
  if (!whole.problem.empty()) {
    *mismatch = "whole: " + whole.problem;
    return whole;
  }
  auto check = [&](const std::vector<std::size_t>& cuts, const std::string& what) {
    if (!mismatch->empty()) {
      return;
    }
    Run<Framer> run = runPieces<Framer>(limits, input, cuts, guard, hook);
    if (!run.problem.empty()) {
      *mismatch = what + ": " + run.problem;
    } else if (run.events != whole.events) {
      *mismatch =
          what + " gave\n" + describeAll(run.events) + "whole gave\n" + describeAll(whole.events);
    }
  };
  if (input.size() <= exhaustive_limit) {
    check(cutsEvery(input.size(), 1), "byte by byte");
    for (std::size_t at = 1; at < input.size(); ++at) {
      check({0, at}, "split at " + std::to_string(at));
    }
    for (std::size_t chunk : {2, 3, 5, 7, 16}) {
      check(cutsEvery(input.size(), chunk), "chunks of " + std::to_string(chunk));
    }
    return whole;
  }
  for (std::size_t chunk : {997, 4096, 65536}) {
    check(cutsEvery(input.size(), chunk), "chunks of " + std::to_string(chunk));
  }
  for (std::size_t i = 1; i <= samples; ++i) {
    const std::size_t at = input.size() * i / (samples + 1);
    check({0, at}, "split at " + std::to_string(at));
  }
  return whole;
}

}  // namespace portico::parser::testing
