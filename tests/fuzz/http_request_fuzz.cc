// libFuzzer target for the status endpoint's request parser
// (HttpRequestParser over llhttp) with small limits.
//
// Input: the first byte picks how the rest is split (a cut offset and a
// chunk size); the rest is the byte stream a client sends.
//
// Invariants checked (abort on violation):
// - feed() never takes more than it was given; need-more takes everything;
//   a request or continue event makes progress; an error is sticky (the same
//   error again, nothing taken).
// - The events (type, request, keep-alive, status, message) and the stream
//   offsets of requests are the same whole, split at the chosen offset, and
//   in chunks of the chosen size.
// - Errors are 400, 413, 414, 431 or 505 with a short printable message.
// - Requests respect the limits: body, header count, lower-case names; the
//   request line and header section bound every string.
// - Every feed sees its bytes against a PROT_NONE guard page.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "status_server.h"

namespace {

using portico::health::HttpFeedResult;
using portico::health::HttpParseEvent;
using portico::health::HttpParseEventType;
using portico::health::HttpRequestParser;
using portico::health::StatusServerLimits;

void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// Memory whose end touches an inaccessible page; reused across inputs.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(std::size_t capacity) {
    page_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    size_ = (capacity + page_ - 1) / page_ * page_;
    void* map =
        mmap(nullptr, size_ + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    check(map != MAP_FAILED, "mmap");
    base_ = static_cast<char*>(map);
    mprotect(base_ + size_, page_, PROT_NONE);
  }

  std::string_view place(std::string_view bytes) {
    check(bytes.size() <= size_, "input fits the guarded buffer");
    char* start = base_ + size_ - bytes.size();
    if (!bytes.empty()) {
      std::memcpy(start, bytes.data(), bytes.size());
    }
    return {start, bytes.size()};
  }

 private:
  char* base_ = nullptr;
  std::size_t size_ = 0;
  std::size_t page_ = 0;
};

struct Recorded {
  HttpParseEvent event;
  std::size_t offset = 0;  // stream offset after a request or continue
  bool operator==(const Recorded&) const = default;
};

StatusServerLimits smallLimits() {
  StatusServerLimits limits;
  limits.max_request_line = 64;
  limits.max_header_bytes = 160;
  limits.max_headers = 6;
  limits.max_body = 48;
  return limits;
}

void checkEvent(const HttpParseEvent& e, const StatusServerLimits& limits) {
  if (e.type == HttpParseEventType::kError) {
    check(
        e.status == 400 || e.status == 413 || e.status == 414 || e.status == 431 || e.status == 505,
        "error status");
    check(!e.message.empty() && e.message.size() < 200, "error message length");
    for (char c : e.message) {
      check(c >= 0x20 && c < 0x7f, "error message printable");
    }
    return;
  }
  if (e.type != HttpParseEventType::kRequest) {
    check(e.request == portico::health::HttpRequest{}, "no request outside a request event");
    return;
  }
  const auto& r = e.request;
  check(!r.method.empty(), "method");
  check(r.body.size() <= limits.max_body, "body within max_body");
  check(r.headers.size() <= limits.max_headers, "header count");
  const std::size_t head = limits.max_request_line + limits.max_header_bytes;
  check(r.path.size() + r.query.size() <= limits.max_request_line, "target within request line");
  check(r.path.find('?') == std::string::npos, "path stops at '?'");
  for (const auto& [name, value] : r.headers) {
    check(!name.empty() && name.size() <= head && value.size() <= head, "header sizes");
    for (char c : name) {
      check(!(c >= 'A' && c <= 'Z'), "lower-case header name");
    }
  }
}

std::vector<Recorded> run(const StatusServerLimits& limits, std::string_view input,
                          const std::vector<std::size_t>& cuts, GuardedBuffer& guard) {
  std::vector<Recorded> events;
  HttpRequestParser parser(limits);
  std::string pending;
  std::size_t pending_at = 0;
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    const std::size_t end = c + 1 < cuts.size() ? cuts[c + 1] : input.size();
    pending.append(input.substr(cuts[c], end - cuts[c]));
    while (true) {
      const HttpFeedResult r = parser.feed(guard.place(pending));
      check(r.consumed <= pending.size(), "consumed within input");
      checkEvent(r.event, limits);
      pending.erase(0, r.consumed);
      pending_at += r.consumed;
      if (r.event.type == HttpParseEventType::kNeedMore) {
        check(pending.empty(), "need-more takes everything");
        break;
      }
      if (r.event.type == HttpParseEventType::kError) {
        check(parser.failed(), "failed after an error");
        const HttpFeedResult again = parser.feed(guard.place(pending));
        check(again.consumed == 0 && again.event == r.event, "error is sticky");
        events.push_back({r.event, 0});
        return events;
      }
      check(r.consumed > 0, "events make progress");
      events.push_back({r.event, pending_at});
    }
  }
  return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    return 0;
  }
  static GuardedBuffer guard(1 << 20);
  const std::uint8_t selector = data[0];
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  if (input.size() > (1 << 19)) {
    return 0;
  }
  const StatusServerLimits limits = smallLimits();

  const std::vector<Recorded> whole = run(limits, input, {0}, guard);

  const std::size_t at = input.empty() ? 0 : (selector * input.size()) / 256;
  std::vector<std::size_t> cuts{0};
  if (at > 0) {
    cuts.push_back(at);
  }
  check(run(limits, input, cuts, guard) == whole, "split at one offset changes the events");

  const std::size_t chunk = 1 + selector % 7;
  cuts.assign(1, 0);
  for (std::size_t i = chunk; i < input.size(); i += chunk) {
    cuts.push_back(i);
  }
  check(run(limits, input, cuts, guard) == whole, "chunked feeding changes the events");

  // The default limits accept at least what the small ones parse as
  // requests, up to the first event that differs.
  const std::vector<Recorded> roomy = run(StatusServerLimits{}, input, {0}, guard);
  for (std::size_t i = 0; i < whole.size() && i < roomy.size(); ++i) {
    if (whole[i].event.type == HttpParseEventType::kError) {
      break;
    }
    check(roomy[i] == whole[i], "larger limits change an accepted request");
  }
  return 0;
}
