// StatusServer and HttpRequestParser tests.
//
// Parser: table cases run whole, byte by byte, split at every offset and in
// chunks; each piece sits against a PROT_NONE guard page, so a read past the
// input crashes. Server: a real libuv loop on its own thread with the server
// on 127.0.0.1 port 0, driven by blocking client sockets (every read bounded
// by SO_RCVTIMEO); each test ends with stop(), the server destroyed in its
// callback, and uv_loop_close() == 0, so no handle is left open.
#include "status_server.h"
#include "status_testing.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace portico::health {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Parser core.

class GuardedBuffer {
 public:
  explicit GuardedBuffer(std::size_t capacity) {
    page_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    size_ = std::max<std::size_t>(page_, (capacity + page_ - 1) / page_ * page_);
    void* map =
        mmap(nullptr, size_ + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
      std::abort();
    }
    base_ = static_cast<char*>(map);
    mprotect(base_ + size_, page_, PROT_NONE);
  }
  ~GuardedBuffer() { munmap(base_, size_ + page_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  std::string_view place(std::string_view bytes) {
    if (bytes.size() > size_) {
      std::abort();
    }
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
  std::size_t offset = 0;  // stream offset just past a request or continue; 0 for errors
  bool operator==(const Recorded&) const = default;
};

std::string describe(const std::vector<Recorded>& events) {
  std::string out;
  for (const Recorded& r : events) {
    out +=
        std::string("  ") + httpParseEventTypeName(r.event.type) + "@" + std::to_string(r.offset);
    if (r.event.type == HttpParseEventType::kRequest) {
      out += " " + r.event.request.method + " " + r.event.request.path + " ?" +
             r.event.request.query + " headers=" + std::to_string(r.event.request.headers.size()) +
             " body=" + std::to_string(r.event.request.body.size()) +
             (r.event.keep_alive ? " keep-alive" : " close");
    } else if (r.event.type == HttpParseEventType::kError) {
      out += " " + std::to_string(r.event.status) + " " + r.event.message;
    }
    out += "\n";
  }
  return out;
}

// Feeds `input` in pieces that start at each of `cuts` (ascending, first 0),
// the way the server does: unconsumed bytes are fed again with the next piece.
std::vector<Recorded> runPieces(const StatusServerLimits& limits, std::string_view input,
                                const std::vector<std::size_t>& cuts, GuardedBuffer& guard,
                                std::string* problem) {
  std::vector<Recorded> events;
  HttpRequestParser parser(limits);
  std::string pending;
  std::size_t pending_at = 0;  // stream offset of pending[0]
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    const std::size_t end = c + 1 < cuts.size() ? cuts[c + 1] : input.size();
    pending.append(input.substr(cuts[c], end - cuts[c]));
    while (true) {
      const std::string_view placed = guard.place(pending);
      const HttpFeedResult result = parser.feed(placed);
      if (result.consumed > pending.size()) {
        *problem = "consumed more than given";
        return events;
      }
      pending.erase(0, result.consumed);
      pending_at += result.consumed;
      if (result.event.type == HttpParseEventType::kNeedMore) {
        if (!pending.empty()) {
          *problem = "need-more left bytes unconsumed";
        }
        break;
      }
      if (result.event.type == HttpParseEventType::kError) {
        const HttpFeedResult again = parser.feed(guard.place(pending));
        if (again.consumed != 0 || !(again.event == result.event) || !parser.failed()) {
          *problem = "error not sticky";
        }
        events.push_back({result.event, 0});
        return events;
      }
      if (result.consumed == 0) {
        *problem = "event without progress";
        return events;
      }
      events.push_back({result.event, pending_at});
    }
  }
  return events;
}

// Runs whole, byte by byte, split at every offset and in a few chunk sizes;
// returns the whole run and sets `mismatch` on the first run that differs.
std::vector<Recorded> runAllSplits(const StatusServerLimits& limits, std::string_view input,
                                   std::string* mismatch) {
  GuardedBuffer guard(input.size() + 1);
  std::string problem;
  const std::vector<Recorded> whole = runPieces(limits, input, {0}, guard, &problem);
  if (!problem.empty()) {
    *mismatch = "whole: " + problem;
    return whole;
  }
  auto check = [&](const std::vector<std::size_t>& cuts, const std::string& what) {
    if (!mismatch->empty()) {
      return;
    }
    const std::vector<Recorded> run = runPieces(limits, input, cuts, guard, &problem);
    if (!problem.empty()) {
      *mismatch = what + ": " + problem;
    } else if (run != whole) {
      *mismatch = what + " gave\n" + describe(run) + "whole gave\n" + describe(whole);
    }
  };
  auto every = [&](std::size_t chunk) {
    std::vector<std::size_t> cuts{0};
    for (std::size_t at = chunk; at < input.size(); at += chunk) {
      cuts.push_back(at);
    }
    return cuts;
  };
  check(every(1), "byte by byte");
  for (std::size_t at = 1; at < input.size(); ++at) {
    check({0, at}, "split at " + std::to_string(at));
  }
  for (std::size_t chunk : {2, 3, 7, 64}) {
    check(every(chunk), "chunks of " + std::to_string(chunk));
  }
  return whole;
}

HttpParseEvent request(std::string method, std::string path, std::string query,
                       std::map<std::string, std::string> headers, std::string body,
                       bool keep_alive = true) {
  HttpParseEvent e;
  e.type = HttpParseEventType::kRequest;
  e.request = HttpRequest{std::move(method), std::move(path), std::move(query), std::move(headers),
                          std::move(body)};
  e.keep_alive = keep_alive;
  return e;
}

HttpParseEvent continueEvent() {
  HttpParseEvent e;
  e.type = HttpParseEventType::kContinue;
  return e;
}

HttpParseEvent error(int status) {
  HttpParseEvent e;
  e.type = HttpParseEventType::kError;
  e.status = status;
  return e;
}

struct ParserCase {
  const char* name;
  std::string input;
  std::vector<HttpParseEvent> expected;  // errors: status only
  StatusServerLimits limits;
};

StatusServerLimits smallLimits() {
  StatusServerLimits l;
  l.max_request_line = 40;
  l.max_header_bytes = 80;
  l.max_headers = 3;
  l.max_body = 16;
  return l;
}

std::vector<ParserCase> parserCases() {
  const std::string get = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
  return {
      {"simple get", get, {request("GET", "/healthz", "", {{"host", "a"}}, "")}, {}},
      {"query kept raw",
       "GET /health?set=IMAP%2A&x=1 HTTP/1.1\r\n\r\n",
       {request("GET", "/health", "set=IMAP%2A&x=1", {}, "")},
       {}},
      {"headers lower-cased, trimmed, repeats joined",
       "GET / HTTP/1.1\r\nX-Thing:  a  \r\nx-thing: b\r\nAccept:\r\n\r\n",
       {request("GET", "/", "", {{"x-thing", "a, b"}, {"accept", ""}}, "")},
       {}},
      {"post with content-length",
       "POST /probes/invoke HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
       {request("POST", "/probes/invoke", "", {{"content-length", "5"}}, "hello")},
       {}},
      {"chunked body, trailers dropped",
       "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nT: "
       "1\r\n\r\n",
       {request("POST", "/", "", {{"transfer-encoding", "chunked"}}, "abcde")},
       {}},
      {"pipelined",
       get + get + "DELETE /x HTTP/1.1\r\n\r\n",
       {request("GET", "/healthz", "", {{"host", "a"}}, ""),
        request("GET", "/healthz", "", {{"host", "a"}}, ""), request("DELETE", "/x", "", {}, "")},
       {}},
      {"empty lines before a request",
       "\r\n\r\n" + get,
       {request("GET", "/healthz", "", {{"host", "a"}}, "")},
       {}},
      {"http/1.0 closes, bytes after it ignored",
       "GET / HTTP/1.0\r\n\r\n" + get,
       {request("GET", "/", "", {}, "", false)},
       {}},
      {"http/1.0 keep-alive",
       "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + get,
       {request("GET", "/", "", {{"connection", "keep-alive"}}, ""),
        request("GET", "/healthz", "", {{"host", "a"}}, "")},
       {}},
      {"connection close",
       "GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + get,
       {request("GET", "/", "", {{"connection", "close"}}, "", false)},
       {}},
      {"upgrade ends the connection",
       "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x16\x03\x01",
       {request("GET", "/", "", {{"connection", "upgrade"}, {"upgrade", "websocket"}}, "", false)},
       {}},
      {"expect 100-continue",
       "PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
       {continueEvent(),
        request("PUT", "/x", "", {{"expect", "100-continue"}, {"content-length", "2"}}, "ok")},
       {}},
      {"unknown method token is garbage", "FROB / HTTP/1.1\r\n\r\n", {error(400)}, {}},
      {"binary garbage",
       std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),
       {error(400)},
       {}},
      {"bare LF", "GET / HTTP/1.1\nHost: a\n\n", {error(400)}, {}},
      {"request after garbage is never seen",
       "GET / HTTP/1.1\r\nBad Header\r\n\r\n" + get,
       {error(400)},
       {}},
      {"cl and te together",
       "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
       {error(400)},
       {}},
      {"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {error(505)}, {}},
      {"http/0.9", "GET /\r\n\r\n", {error(505)}, {}},
      {"uri too long",
       "GET /" + std::string(100, 'a') + " HTTP/1.1\r\n\r\n",
       {error(414)},
       smallLimits()},
      {"request line too long after the uri",
       "GET /" + std::string(28, 'a') + " HTTP/1.1\r\n\r\n",
       {error(431)},
       smallLimits()},
      {"empty-line flood", std::string(200, '\n'), {error(431)}, smallLimits()},
      {"header section too large",
       "GET / HTTP/1.1\r\nX: " + std::string(100, 'a') + "\r\n\r\n",
       {error(431)},
       smallLimits()},
      {"garbage before the header limit wins",
       "GET / HTTP/1.1\r\nX: a\x01" + std::string(100, 'a') + "\r\n\r\n",
       {error(400)},
       smallLimits()},
      {"too many headers",
       "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
       {error(431)},
       smallLimits()},
      {"headers at the limit",
       "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
       {request("GET", "/", "", {{"a", "1"}, {"b", "2"}, {"c", "3"}}, "")},
       smallLimits()},
      {"content-length over the limit",
       "POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n",
       {error(413)},
       smallLimits()},
      {"content-length at the limit",
       "POST / HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef",
       {request("POST", "/", "", {{"content-length", "16"}}, "0123456789abcdef")},
       smallLimits()},
      {"chunked over the limit",
       "POST / HTTP/1.1\r\nTransfer-Encoding: "
       "chunked\r\n\r\n9\r\n012345678\r\n9\r\n012345678\r\n0\r\n\r\n",
       {error(413)},
       smallLimits()},
      {"expect with a body too large gets 413, not 100",
       "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99\r\n\r\n",
       {error(413)},
       smallLimits()},
      {"need more", "GET / HTTP/1.1\r\nHost:", {}, {}},
  };
}

TEST(HttpRequestParserTest, TableWholeByteByByteAndEverySplit) {
  for (const ParserCase& c : parserCases()) {
    SCOPED_TRACE(c.name);
    std::string mismatch;
    const std::vector<Recorded> got = runAllSplits(c.limits, c.input, &mismatch);
    EXPECT_TRUE(mismatch.empty()) << mismatch;
    ASSERT_EQ(got.size(), c.expected.size()) << describe(got);
    for (std::size_t i = 0; i < got.size(); ++i) {
      const HttpParseEvent& e = got[i].event;
      EXPECT_EQ(e.type, c.expected[i].type) << describe(got);
      if (e.type == HttpParseEventType::kError) {
        EXPECT_EQ(e.status, c.expected[i].status) << e.message;
        EXPECT_FALSE(e.message.empty());
      } else {
        EXPECT_EQ(e, c.expected[i]) << describe(got);
      }
    }
  }
}

TEST(HttpRequestParserTest, RequestEndsExactlyAtItsLastByte) {
  HttpRequestParser parser;
  const std::string first = "POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
  const std::string input = first + "GET /b HTTP/1.1\r\n";
  HttpFeedResult r = parser.feed(input);
  EXPECT_EQ(r.event.type, HttpParseEventType::kRequest);
  EXPECT_EQ(r.consumed, first.size());
  EXPECT_FALSE(parser.midRequest());
  r = parser.feed(std::string_view(input).substr(first.size()));
  EXPECT_EQ(r.event.type, HttpParseEventType::kNeedMore);
  EXPECT_EQ(r.consumed, input.size() - first.size());
  EXPECT_TRUE(parser.midRequest());
}

TEST(HttpRequestParserTest, ClosedAfterConnectionCloseSwallowsBytes) {
  HttpRequestParser parser;
  HttpFeedResult r = parser.feed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(r.event.type, HttpParseEventType::kRequest);
  EXPECT_FALSE(r.event.keep_alive);
  EXPECT_TRUE(parser.closed());
  r = parser.feed("garbage");
  EXPECT_EQ(r.event.type, HttpParseEventType::kNeedMore);
  EXPECT_EQ(r.consumed, 7u);
}

TEST(HttpRequestParserTest, JsonErrorEscapes) {
  EXPECT_EQ(jsonError(404, "no such \"set\"\n"),
            R"({"error":{"status":404,"message":"no such \"set\"\n"}})");
  EXPECT_EQ(jsonError(400, std::string_view("a\x01", 2)),
            R"({"error":{"status":400,"message":"a\u0001"}})");
}

// ---------------------------------------------------------------------------
// Server harness.

// A libuv loop on its own thread; post() runs work on it.
class LoopThread {
 public:
  LoopThread() {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &async_, onAsync);
    async_.data = this;
  }
  ~LoopThread() {
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  uv_loop_t* loop() { return &loop_; }

  void start() {
    thread_ = std::thread([this] {
      uv_run(&loop_, UV_RUN_DEFAULT);
      finished_.set_value();
    });
  }

  void post(std::function<void()> work) {
    {
      std::lock_guard lock(mutex_);
      work_.push_back(std::move(work));
    }
    uv_async_send(&async_);
  }

  // Runs `work` on the loop and waits for it (bounded).
  template <typename F>
  auto call(F work) -> decltype(work()) {
    using R = decltype(work());
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> future = promise->get_future();
    post([promise, work]() mutable {
      if constexpr (std::is_void_v<R>) {
        work();
        promise->set_value();
      } else {
        promise->set_value(work());
      }
    });
    if (future.wait_for(5s) != std::future_status::ready) {
      ADD_FAILURE() << "loop did not run posted work";
      std::abort();
    }
    return future.get();
  }

  // Runs `shutdown` on the loop (it must close everything it owns and then
  // call the given `closed`); closes the async handle; waits for uv_run to
  // return and checks that the loop holds no handles.
  void finish(std::function<void(std::function<void()>)> shutdown) {
    post([this, shutdown = std::move(shutdown)] {
      shutdown([this] { uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr); });
    });
    if (finished_.get_future().wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "loop did not finish: a handle was left open";
      std::abort();
    }
    thread_.join();
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "live handles left on the loop";
  }

 private:
  static void onAsync(uv_async_t* async) {
    auto* self = static_cast<LoopThread*>(async->data);
    std::deque<std::function<void()>> work;
    {
      std::lock_guard lock(self->mutex_);
      work.swap(self->work_);
    }
    for (auto& w : work) {
      w();
    }
  }

  uv_loop_t loop_{};
  uv_async_t async_{};
  std::thread thread_;
  std::mutex mutex_;
  std::deque<std::function<void()>> work_;
  std::promise<void> finished_;
};

struct ClientResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-cased names
  std::string body;
};

// A blocking client socket; every call is bounded by the socket timeouts.
class Client {
 public:
  explicit Client(std::uint16_t port, int timeout_ms = 5000) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Client() { close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  // Sends everything; false if the server closed or reset first.
  bool send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        return false;
      }
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // One response (Content-Length framed); nullopt on close or timeout.
  std::optional<ClientResponse> read() {
    std::size_t head_end;
    while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) {
        return std::nullopt;
      }
    }
    ClientResponse response;
    const std::string head = buffer_.substr(0, head_end);
    if (head.compare(0, 9, "HTTP/1.1 ") != 0) {
      return std::nullopt;
    }
    response.status = std::atoi(head.c_str() + 9);
    std::size_t line = head.find("\r\n");
    while (line != std::string::npos) {
      const std::size_t next = head.find("\r\n", line + 2);
      const std::string field =
          head.substr(line + 2, next == std::string::npos ? std::string::npos : next - line - 2);
      const std::size_t colon = field.find(':');
      if (colon != std::string::npos) {
        std::string name = field.substr(0, colon);
        for (char& ch : name) {
          ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        }
        response.headers[name] = field.substr(colon + 2);
      }
      line = next;
    }
    buffer_.erase(0, head_end + 4);
    const auto length = response.headers.find("content-length");
    const std::size_t size = length == response.headers.end() || head_only_
                                 ? 0
                                 : std::strtoul(length->second.c_str(), nullptr, 10);
    while (buffer_.size() < size) {
      if (!fill()) {
        return std::nullopt;
      }
    }
    response.body = buffer_.substr(0, size);
    buffer_.erase(0, size);
    return response;
  }

  // Reads (dropping data) until EOF or a reset; false on timeout.
  bool awaitClose() {
    buffer_.clear();
    char chunk[4096];
    while (true) {
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) {
        return true;
      }
      if (n < 0) {
        return false;
      }
    }
  }

  void expectHeadOnly(bool head_only) { head_only_ = head_only; }

  // True if a read would not block (data, EOF or an error is waiting).
  bool readable() {
    char byte;
    const ssize_t n = ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
  }

 private:
  bool fill() {
    char chunk[16384];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) {
      return false;
    }
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  bool head_only_ = false;
  std::string buffer_;
};

std::string get(std::string_view target, std::string_view extra = "") {
  return "GET " + std::string(target) + " HTTP/1.1\r\nHost: t\r\n" + std::string(extra) + "\r\n";
}

// Echoes the request as a small JSON-ish text; /async/* answers are held
// until the test releases them.
class StatusServerTest : public ::testing::Test {
 protected:
  void start(StatusServerLimits limits = {}, std::string token = "") {
    server_ = std::make_unique<StatusServer>(
        loop_.loop(), Endpoint{"127.0.0.1", 0, false}, std::move(token),
        [this](const HttpRequest& request, Responder respond) { handle(request, respond); },
        limits);
    ASSERT_TRUE(IsOk(server_->start()));
    port_ = server_->port();
    ASSERT_NE(port_, 0);
    loop_.start();
  }

  void TearDown() override {
    if (!server_) {
      return;
    }
    loop_.finish([this](std::function<void()> closed) {
      server_->stop([this, closed] {
        server_.reset();  // destroyed inside its own stop callback
        for (Responder& r : held_) {
          r(HttpResponse{200, "text/plain", "too late", {}});  // after the server is gone
        }
        held_.clear();
        closed();
      });
    });
  }

  void handle(const HttpRequest& request, const Responder& respond) {
    {
      std::lock_guard lock(mutex_);
      seen_.push_back(request.method + " " + request.path);
    }
    if (request.path.rfind("/async/", 0) == 0) {
      held_.push_back(respond);
      cv_.notify_all();
      return;
    }
    if (request.path == "/twice") {
      respond(HttpResponse{200, "text/plain", "first", {}});
      respond(HttpResponse{200, "text/plain", "second", {}});
      return;
    }
    if (request.path == "/throw") {
      throw std::runtime_error("boom");
    }
    HttpResponse response;
    response.body = "{\"method\":\"" + request.method + "\",\"path\":\"" + request.path +
                    "\",\"query\":\"" + request.query + "\",\"body\":\"" + request.body + "\"}";
    response.headers.emplace_back("X-Portico", "yes");
    response.headers.emplace_back("X-Bad", "a\r\nInjected: 1");
    respond(response);
  }

  std::size_t heldCount() {
    return loop_.call([this] { return held_.size(); });
  }

  // Waits (bounded) until the handler holds `n` async responders.
  bool awaitHeld(std::size_t n) {
    const auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline) {
      if (heldCount() >= n) {
        return true;
      }
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, 10ms);
    }
    return false;
  }

  std::size_t connections() {
    return loop_.call([this] { return server_->connections(); });
  }

  bool awaitConnections(std::size_t n) {
    const auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline) {
      if (connections() == n) {
        return true;
      }
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

  LoopThread loop_;
  std::unique_ptr<StatusServer> server_;
  std::uint16_t port_ = 0;
  std::vector<Responder> held_;  // loop thread only
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> seen_;  // under mutex_
};

TEST_F(StatusServerTest, GetReturns200WithBody) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(get("/health?set=IMAP*")));
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"method":"GET","path":"/health","query":"set=IMAP*","body":""})");
  EXPECT_EQ(r->headers.at("content-type"), "application/json");
  EXPECT_EQ(r->headers.at("content-length"), std::to_string(r->body.size()));
  EXPECT_EQ(r->headers.at("connection"), "keep-alive");
  EXPECT_EQ(r->headers.at("x-portico"), "yes");
  EXPECT_EQ(r->headers.count("x-bad"), 0u);
  EXPECT_EQ(r->headers.count("injected"), 0u);
}

TEST_F(StatusServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.send(get("/one")));
  auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("/one"), std::string::npos);
  ASSERT_TRUE(c.send("POST /two HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, R"({"method":"POST","path":"/two","query":"","body":"abc"})");
  EXPECT_EQ(connections(), 1u);
}

TEST_F(StatusServerTest, PipelinedRequestsAnswerInOrderOneAtATime) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.send(get("/async/first") + get("/second")));
  ASSERT_TRUE(awaitHeld(1));
  {
    std::lock_guard lock(mutex_);
    EXPECT_EQ(seen_, std::vector<std::string>{"GET /async/first"}) << "second ran too early";
  }
  loop_.call([this] { held_[0](HttpResponse{200, "text/plain", "first", {}}); });
  auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "first");
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("/second"), std::string::npos);
  std::lock_guard lock(mutex_);
  EXPECT_EQ(seen_, (std::vector<std::string>{"GET /async/first", "GET /second"}));
}

TEST_F(StatusServerTest, Http10ClosesAfterTheResponse) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.send("GET /old HTTP/1.0\r\n\r\n"));
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->headers.at("connection"), "close");
  EXPECT_TRUE(c.awaitClose());
}

TEST_F(StatusServerTest, GarbageGets400JsonAndClose) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.send(std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11)));
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(r->headers.at("content-type"), "application/json");
  EXPECT_EQ(r->headers.at("connection"), "close");
  EXPECT_EQ(r->body.rfind(R"({"error":{"status":400,"message":")", 0), 0u) << r->body;
  EXPECT_TRUE(c.awaitClose());
}

TEST_F(StatusServerTest, OneMebibyteHeaderGets431AndClose) {
  start();
  Client c(port_);
  // The server answers after 16 KiB; the rest may be refused mid-send.
  c.send("GET / HTTP/1.1\r\nX-Big: " + std::string(1 << 20, 'a') + "\r\n\r\n");
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  EXPECT_EQ(r->headers.at("connection"), "close");
  EXPECT_TRUE(c.awaitClose());
}

TEST_F(StatusServerTest, LongUrlGets414) {
  start();
  Client c(port_);
  c.send("GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n");
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 414);
  EXPECT_TRUE(c.awaitClose());
}

TEST_F(StatusServerTest, BodyTooBigGets413) {
  StatusServerLimits limits;
  limits.max_body = 1024;
  start(limits);
  {
    Client c(port_);
    ASSERT_TRUE(c.send("POST /x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n"));
    const auto r = c.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
    EXPECT_TRUE(c.awaitClose());
  }
  Client c(port_);
  c.send("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + std::string(2048, 'b') +
         "\r\n0\r\n\r\n");
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(c.awaitClose());
}

TEST_F(StatusServerTest, ExpectContinueThenBody) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.send("PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"));
  auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 100);
  ASSERT_TRUE(c.send("ok"));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("\"body\":\"ok\""), std::string::npos);
}

TEST_F(StatusServerTest, HeadHasLengthButNoBody) {
  start();
  Client c(port_);
  c.expectHeadOnly(true);
  ASSERT_TRUE(c.send("HEAD /x HTTP/1.1\r\n\r\n"));
  auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->headers.at("content-length"), "0");
  c.expectHeadOnly(false);
  ASSERT_TRUE(c.send(get("/after")));  // the next response starts right after the head
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("/after"), std::string::npos);
}

TEST_F(StatusServerTest, ExcessConnectionsRefusedWhileTheFirstOnesWork) {
  StatusServerLimits limits;
  limits.max_connections = 256;
  start(limits);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 256; ++i) {
    clients.push_back(std::make_unique<Client>(port_));
    ASSERT_TRUE(clients.back()->connected());
  }
  ASSERT_TRUE(awaitConnections(256));
  for (int i = 256; i < 300; ++i) {
    clients.push_back(std::make_unique<Client>(port_));
  }
  for (int i = 256; i < 300; ++i) {
    // Either the 503 arrives before the close, or just the close.
    const auto r = clients[i]->read();
    if (r) {
      EXPECT_EQ(r->status, 503);
    }
    EXPECT_TRUE(clients[i]->awaitClose()) << "connection " << i;
  }
  ASSERT_TRUE(awaitConnections(256));
  for (int i = 0; i < 256; ++i) {
    ASSERT_TRUE(clients[i]->send(get("/still-here")));
    const auto r = clients[i]->read();
    ASSERT_TRUE(r) << "connection " << i;
    EXPECT_EQ(r->status, 200);
  }
}

TEST_F(StatusServerTest, HalfSentRequestClosedAfterRequestTimeout) {
  StatusServerLimits limits;
  limits.request_timeout_ms = 200;
  start(limits);
  Client c(port_);
  const auto begin = Clock::now();
  ASSERT_TRUE(c.send("GET /slow HTTP/1.1\r\nHost: t\r\n"));
  const auto r = c.read();  // blocks until the server gives up
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_TRUE(c.awaitClose());
  const auto elapsed = Clock::now() - begin;
  EXPECT_GE(elapsed, 150ms);
  EXPECT_LT(elapsed, 3s);
}

TEST_F(StatusServerTest, TricklingBytesDoNotExtendTheRequestTimeout) {
  StatusServerLimits limits;
  limits.request_timeout_ms = 300;
  start(limits);
  Client c(port_);
  const auto begin = Clock::now();
  const std::string request = get("/trickle");
  // One byte every 40 ms would finish after ~1.3 s; the server must give up
  // 300 ms after the first byte however often bytes come.
  for (std::size_t i = 0; i + 2 < request.size() && !c.readable(); ++i) {
    if (!c.send(request.substr(i, 1))) {
      break;
    }
    std::this_thread::sleep_for(40ms);  // the client's pace, not a wait for the server
  }
  const auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_TRUE(c.awaitClose());
  const auto elapsed = Clock::now() - begin;
  EXPECT_GE(elapsed, 250ms);
  EXPECT_LT(elapsed, 1s);
}

TEST_F(StatusServerTest, IdleKeepAliveConnectionClosed) {
  StatusServerLimits limits;
  limits.idle_timeout_ms = 200;
  start(limits);
  Client c(port_);
  ASSERT_TRUE(c.send(get("/x")));
  ASSERT_TRUE(c.read());
  const auto begin = Clock::now();
  EXPECT_TRUE(c.awaitClose());
  EXPECT_GE(Clock::now() - begin, 150ms);
  Client silent(port_);
  EXPECT_TRUE(silent.awaitClose());
  EXPECT_TRUE(awaitConnections(0));
}

TEST_F(StatusServerTest, BearerToken) {
  start({}, "s3cret");
  Client c(port_);
  ASSERT_TRUE(c.send(get("/health")));
  auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->headers.at("www-authenticate"), "Bearer");
  EXPECT_EQ(r->body, jsonError(401, "missing or invalid bearer token"));
  ASSERT_TRUE(c.send(get("/health", "Authorization: Bearer wrong\r\n")));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  ASSERT_TRUE(c.send(get("/health", "Authorization: Bearer s3cret\r\n")));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_TRUE(c.send(get("/health", "authorization: bearer s3cret\r\n")));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_TRUE(c.send(get("/healthz")));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_TRUE(c.send("POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  // The status page is static and a browser opening it sends no token: GET
  // and HEAD / pass; its script sends the token on every fetch.
  ASSERT_TRUE(c.send(get("/")));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  ASSERT_TRUE(c.send("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  for (const char* path : {"//", "/index.html", "/./"}) {
    ASSERT_TRUE(c.send(get(path)));
    r = c.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << path;
  }
  std::lock_guard lock(mutex_);
  EXPECT_EQ(seen_.size(), 4u) << "unauthorised requests must not reach the handler";
}

TEST_F(StatusServerTest, AsyncResponderAfterClientLeftIsDropped) {
  start();
  {
    Client c(port_);
    ASSERT_TRUE(c.send(get("/async/a")));
    ASSERT_TRUE(awaitHeld(1));
  }
  ASSERT_TRUE(awaitConnections(0));
  loop_.call([this] {
    held_[0](HttpResponse{200, "text/plain", "nobody listens", {}});
    held_[0](HttpResponse{200, "text/plain", "twice", {}});
  });
  // A responder held while the server stops and is destroyed: TearDown
  // answers it after the StatusServer is gone.
  Client c(port_);
  ASSERT_TRUE(c.send(get("/async/b")));
  ASSERT_TRUE(awaitHeld(2));
}

TEST_F(StatusServerTest, SecondAnswerAndExceptionsAreContained) {
  start();
  Client c(port_);
  ASSERT_TRUE(c.send(get("/twice") + get("/throw") + get("/after")));
  auto r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "first");
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  r = c.read();
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("/after"), std::string::npos);
}

TEST_F(StatusServerTest, StopClosesBusyAndIdleConnections) {
  start();
  Client busy(port_);
  Client idle(port_);
  ASSERT_TRUE(busy.send(get("/async/x")));
  ASSERT_TRUE(awaitHeld(1));
  ASSERT_TRUE(awaitConnections(2));
  std::promise<void> stopped;
  loop_.post([this, &stopped] { server_->stop([&stopped] { stopped.set_value(); }); });
  ASSERT_EQ(stopped.get_future().wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(busy.awaitClose());
  EXPECT_TRUE(idle.awaitClose());
  EXPECT_EQ(Client(port_).connected(), false);
}

TEST(StatusServerStartTest, ReportsBindErrors) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    StatusServer first(&loop, Endpoint{"127.0.0.1", 0, false}, "", nullptr);
    ASSERT_TRUE(IsOk(first.start()));
    StatusServer second(&loop, Endpoint{"127.0.0.1", first.port(), false}, "", nullptr);
    Status started = second.start();
    EXPECT_FALSE(started.ok());
    EXPECT_NE(started.message().find("address already in use"), std::string::npos)
        << started.message();
    StatusServer bad(&loop, Endpoint{"localhost", 8080, false}, "", nullptr);
    started = bad.start();
    EXPECT_FALSE(started.ok());
    EXPECT_NE(started.message().find("literal IP"), std::string::npos) << started.message();
    bool done = false;
    first.stop([&done] { done = true; });
    uv_run(&loop, UV_RUN_DEFAULT);
    EXPECT_TRUE(done);
  }  // second's listener closes in its destructor
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace portico::health
