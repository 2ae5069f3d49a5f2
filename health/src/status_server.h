// The status endpoint's HTTP/1.1 server, on the control loop.
//
// Two layers:
// - HttpRequestParser: a pure, resumable request parser over llhttp. No
//   sockets, no clocks. feed() takes bytes and returns how many it consumed
//   and the next event (need more, 100-continue, request complete, error).
//   Every limit in StatusServerLimits is enforced at a fixed stream offset,
//   so a byte stream gives the same events however it is split.
// - StatusServer: a libuv TCP server that reads requests with that parser,
//   hands them one at a time per connection to a Handler, and writes the
//   answers in order with Content-Length (keep-alive for HTTP/1.1, close for
//   HTTP/1.0 unless asked otherwise). Pipelined requests wait their turn.
//
// Threading: everything, the Responder included, runs on the loop given to
// the constructor. Nothing here blocks.
//
// Lifetimes: a Responder may be called later (after the handler returns) or
// never; a call after its connection closed, after stop() or after the
// server was destroyed is dropped safely, and only the first call counts.
// Every libuv handle is closed with uv_close and freed in its close
// callback; destroy the server after stop()'s `done` ran (destroying it
// earlier closes what is left, and the loop must then run once more to free
// it).
//
// Errors from peers never throw: malformed bytes get a 400 JSON error, an
// over-long URL 414, an over-long request line or header section (or too
// many header fields) 431, an over-long body 413, a stalled request 408;
// each is followed by closing the connection.
#pragma once

#include <llhttp.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "portico/health.h"

namespace portico::health {

struct HttpRequest {
  std::string method;                          // "GET", "POST", ... as llhttp names it
  std::string path;                            // the request target up to '?', not percent-decoded
  std::string query;                           // after the first '?', raw; empty when there is none
  std::map<std::string, std::string> headers;  // lower-cased names; repeats joined with ", "
  std::string body;
  bool operator==(const HttpRequest&) const = default;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  // Extra header lines. Content-Length and Connection are the server's;
  // fields holding CR or LF are dropped.
  std::vector<std::pair<std::string, std::string>> headers;
};

// Answers one request; only the first call counts. Loop thread only.
using Responder = std::function<void(HttpResponse)>;
// The request lives only during the call: an asynchronous handler copies
// what it needs and keeps the Responder.
using Handler = std::function<void(const HttpRequest&, Responder)>;

// {"error":{"status":404,"message":"..."}} with the message JSON-escaped.
std::string jsonError(int status, std::string_view message);

// Reason phrase for a status code ("Not Found"); "Unknown" if not listed.
const char* httpReasonPhrase(int status);

struct StatusServerLimits {
  std::size_t max_request_line = 8192;       // bytes, CRLF and leading empty lines included
  std::size_t max_header_bytes = 16384;      // header section after the request line
  std::size_t max_headers = 64;              // header fields (chunked trailers included)
  std::size_t max_body = 65536;              // decoded body bytes
  std::size_t max_connections = 256;         // open connections; more are refused with 503
  std::uint64_t idle_timeout_ms = 30000;     // keep-alive connection with no request
  std::uint64_t request_timeout_ms = 10000;  // from a request's first byte to its last
};

enum class HttpParseEventType : std::uint8_t { kNeedMore, kContinue, kRequest, kError };
const char* httpParseEventTypeName(HttpParseEventType type);

struct HttpParseEvent {
  HttpParseEventType type = HttpParseEventType::kNeedMore;
  // kRequest: the complete request. kContinue: nothing (the headers so far
  // asked for "Expect: 100-continue" and a body follows).
  HttpRequest request;
  bool keep_alive = false;  // kRequest: another request may follow on the connection
  int status = 0;           // kError: 400, 413, 414, 431 or 505
  std::string message;      // kError: short ASCII text, fit for a client
  bool operator==(const HttpParseEvent&) const = default;
};

struct HttpFeedResult {
  // Bytes taken from the input. A request event ends exactly at its last
  // byte; need-more takes everything; an error takes what was read before
  // the error was found (0 on every later call).
  std::size_t consumed = 0;
  HttpParseEvent event;
};

// Resumable request parser. Feed the bytes not yet consumed again (after
// appending new ones) until it says need-more. After an error it stays
// failed and repeats that error. After a request that does not keep the
// connection alive (HTTP/1.0, "Connection: close", an upgrade) it is closed:
// it swallows further bytes and reports nothing.
class HttpRequestParser {
 public:
  explicit HttpRequestParser(const StatusServerLimits& limits = {});
  HttpRequestParser(const HttpRequestParser&) = delete;
  HttpRequestParser& operator=(const HttpRequestParser&) = delete;

  HttpFeedResult feed(std::string_view bytes);

  bool failed() const { return failed_; }
  bool closed() const { return closed_; }
  // True between the first byte of a request (empty lines before it aside)
  // and its end.
  bool midRequest() const { return in_message_; }

 private:
  enum class Phase : std::uint8_t { kRequestLine, kHeaders, kBody };
  // Counts request-line and header bytes on its own, independent of how
  // llhttp splits its callbacks, so that limits trip at a fixed offset.
  struct Scanner {
    Phase phase = Phase::kRequestLine;
    std::size_t line_bytes = 0;    // request line, leading empty lines included
    std::size_t header_bytes = 0;  // header section
    std::size_t current_line = 0;  // non-CR bytes on the current line
    std::uint8_t spaces = 0;       // spaces seen on the request line (saturating)
    // Advances over `bytes`; returns the offset of the first byte over a
    // limit (leaving the state just before it), or bytes.size().
    std::size_t scan(std::string_view bytes, const StatusServerLimits& limits);
  };

  static int onMessageBegin(llhttp_t* parser);
  static int onUrl(llhttp_t* parser, const char* at, std::size_t length);
  static int onHeaderField(llhttp_t* parser, const char* at, std::size_t length);
  static int onHeaderFieldComplete(llhttp_t* parser);
  static int onHeaderValue(llhttp_t* parser, const char* at, std::size_t length);
  static int onHeaderValueComplete(llhttp_t* parser);
  static int onHeadersComplete(llhttp_t* parser);
  static int onBody(llhttp_t* parser, const char* at, std::size_t length);
  static int onMessageComplete(llhttp_t* parser);
  static const llhttp_settings_t& settings();

  int fail(int status, std::string message);  // from a callback: records, returns HPE_USER
  HttpFeedResult failWith(std::size_t consumed, int status, std::string message);
  void startMessage();
  bool beyondHardBound(const std::string& so_far, std::size_t more) const;

  StatusServerLimits limits_;
  llhttp_t parser_{};
  Scanner scanner_;
  bool in_message_ = false;
  bool failed_ = false;
  bool closed_ = false;
  bool in_headers_ = true;  // false after on_headers_complete: trailers are not kept
  std::size_t header_count_ = 0;
  std::string url_;
  std::string field_;
  std::string value_;
  HttpRequest request_;
  HttpParseEventType paused_for_ = HttpParseEventType::kNeedMore;
  bool keep_alive_ = false;
  int error_status_ = 0;
  std::string error_message_;
  HttpParseEvent error_event_;
};

class StatusServer {
 public:
  // `listen.host` is a literal IP (IPv6 without brackets when listen.ipv6);
  // port 0 picks a free port. An empty token turns authentication off;
  // otherwise every request but GET/HEAD /healthz and / (the static status
  // page) needs "Authorization: Bearer <token>" and gets 401 without it.
  StatusServer(uv_loop_t* loop, Endpoint listen, std::string token, Handler handler,
               StatusServerLimits limits = {});
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Binds and listens; on failure returns false with a reason in `error`.
  Status start();
  // Closes the listener and every connection (pending responses are
  // dropped). `done` runs after the last close callback, or at once when
  // nothing is open.
  void stop(std::function<void()> done);
  // The bound port (the chosen one when Endpoint::port was 0); 0 before start.
  std::uint16_t port() const;
  // Open connections, including ones being refused or closed.
  std::size_t connections() const;

  struct Impl;

 private:
  Impl* impl_;  // outlives *this while handles are still closing
};

}  // namespace portico::health
