#include "status_server.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <memory>
#include <unordered_set>

namespace portico::health {

// ---------------------------------------------------------------------------
// Small helpers.

namespace {

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) {
      return false;
    }
  }
  return true;
}

std::string_view trimWhitespace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// The token is a secret: compare without an early exit on the first
// differing byte.
bool constantTimeEquals(std::string_view given, std::string_view secret) {
  if (secret.empty()) {
    return false;
  }
  unsigned diff = given.size() == secret.size() ? 0U : 1U;
  for (std::size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i]) ^
            static_cast<unsigned char>(secret[i % secret.size()]);
  }
  return diff == 0;
}

bool isTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
    return true;
  }
  return c != '\0' && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

bool isHeaderName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), isTokenChar);
}

bool isHeaderValue(std::string_view value) {
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

}  // namespace

const char* httpReasonPhrase(int status) {
  struct Phrase {
    int status;
    const char* text;
  };
  static constexpr Phrase kPhrases[] = {
      {100, "Continue"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {304, "Not Modified"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {413, "Content Too Large"},
      {414, "URI Too Long"},
      {415, "Unsupported Media Type"},
      {422, "Unprocessable Content"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"},
      {505, "HTTP Version Not Supported"},
  };
  for (const Phrase& phrase : kPhrases) {
    if (phrase.status == status) {
      return phrase.text;
    }
  }
  return "Unknown";
}

std::string jsonError(int status, std::string_view message) {
  std::string out = "{\"error\":{\"status\":" + std::to_string(status) + ",\"message\":\"";
  for (char ch : message) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;  // UTF-8 passes through; our messages are ASCII
        }
    }
  }
  out += "\"}}";
  return out;
}

const char* httpParseEventTypeName(HttpParseEventType type) {
  switch (type) {
    case HttpParseEventType::kNeedMore:
      return "need_more";
    case HttpParseEventType::kContinue:
      return "continue";
    case HttpParseEventType::kRequest:
      return "request";
    case HttpParseEventType::kError:
      return "error";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// HttpRequestParser.

std::size_t HttpRequestParser::Scanner::scan(std::string_view bytes,
                                             const StatusServerLimits& limits) {
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (phase == Phase::kRequestLine) {
      if (line_bytes >= limits.max_request_line) {
        return i;
      }
      ++line_bytes;
      if (c == '\n') {
        // llhttp skips empty lines before a request; they still count here so
        // that a stream of CRLFs meets a limit.
        if (current_line > 0) {
          phase = Phase::kHeaders;
          current_line = 0;
        }
      } else if (c != '\r') {
        ++current_line;
        if (c == ' ' && spaces < 0xff) {
          ++spaces;
        }
      }
    } else if (phase == Phase::kHeaders) {
      if (header_bytes >= limits.max_header_bytes) {
        return i;
      }
      ++header_bytes;
      if (c == '\n') {
        if (current_line == 0) {
          phase = Phase::kBody;
          return bytes.size();  // the body has its own limit, checked by count
        }
        current_line = 0;
      } else if (c != '\r') {
        ++current_line;
      }
    } else {
      return bytes.size();
    }
  }
  return bytes.size();
}

const llhttp_settings_t& HttpRequestParser::settings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = &HttpRequestParser::onMessageBegin;
    s.on_url = &HttpRequestParser::onUrl;
    s.on_header_field = &HttpRequestParser::onHeaderField;
    s.on_header_field_complete = &HttpRequestParser::onHeaderFieldComplete;
    s.on_header_value = &HttpRequestParser::onHeaderValue;
    s.on_header_value_complete = &HttpRequestParser::onHeaderValueComplete;
    s.on_headers_complete = &HttpRequestParser::onHeadersComplete;
    s.on_body = &HttpRequestParser::onBody;
    s.on_message_complete = &HttpRequestParser::onMessageComplete;
    return s;
  }();
  return kSettings;
}

HttpRequestParser::HttpRequestParser(const StatusServerLimits& limits) : limits_(limits) {
  llhttp_init(&parser_, HTTP_REQUEST, &settings());
  parser_.data = this;
}

namespace {
HttpRequestParser* owner(llhttp_t* parser) {
  return static_cast<HttpRequestParser*>(parser->data);
}
}  // namespace

int HttpRequestParser::fail(int status, std::string message) {
  error_status_ = status;
  error_message_ = std::move(message);
  return HPE_USER;  // any non-zero value stops llhttp; feed() reads error_status_
}

void HttpRequestParser::startMessage() {
  in_headers_ = true;
  in_message_ = true;
  header_count_ = 0;
  url_.clear();
  field_.clear();
  value_.clear();
  request_ = HttpRequest{};
}

int HttpRequestParser::onMessageBegin(llhttp_t* parser) {
  owner(parser)->startMessage();
  return 0;
}

// The data callbacks below only append: the scanner has already bounded the
// request line and the header section, so nothing here can grow unbounded,
// and no error depends on where llhttp happened to cut a span. The hard
// bound is a second line of defence that only a scanner bug could reach
// (the fuzz target would see it as a split-dependent result).
bool HttpRequestParser::beyondHardBound(const std::string& so_far, std::size_t more) const {
  return so_far.size() + more > limits_.max_request_line + limits_.max_header_bytes;
}

int HttpRequestParser::onUrl(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  if (self->beyondHardBound(self->url_, length)) {
    return self->fail(431, "request head too large");
  }
  self->url_.append(at, length);
  return 0;
}

int HttpRequestParser::onHeaderField(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  if (self->in_headers_) {
    if (self->beyondHardBound(self->field_, length)) {
      return self->fail(431, "request head too large");
    }
    self->field_.append(at, length);
  }
  return 0;
}

int HttpRequestParser::onHeaderFieldComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  if (++self->header_count_ > self->limits_.max_headers) {
    return self->fail(431, "too many header fields");
  }
  return 0;
}

int HttpRequestParser::onHeaderValue(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  if (self->in_headers_) {
    if (self->beyondHardBound(self->value_, length)) {
      return self->fail(431, "request head too large");
    }
    self->value_.append(at, length);
  }
  return 0;
}

int HttpRequestParser::onHeaderValueComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  if (!self->in_headers_) {
    return 0;  // chunked trailers count against max_headers but are not kept
  }
  std::string name = std::move(self->field_);
  std::transform(name.begin(), name.end(), name.begin(), lower);
  const std::string_view value = trimWhitespace(self->value_);
  auto [it, inserted] = self->request_.headers.try_emplace(std::move(name), value);
  if (!inserted) {
    it->second.append(", ").append(value);
  }
  self->field_.clear();
  self->value_.clear();
  return 0;
}

int HttpRequestParser::onHeadersComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  self->in_headers_ = false;
  if (parser->http_major != 1) {
    return self->fail(505, "HTTP version not supported");
  }
  HttpRequest& request = self->request_;
  request.method = llhttp_method_name(static_cast<llhttp_method_t>(parser->method));
  const std::size_t question = self->url_.find('?');
  if (question == std::string::npos) {
    request.path = std::move(self->url_);
  } else {
    request.path = self->url_.substr(0, question);
    request.query = self->url_.substr(question + 1);
  }
  self->url_.clear();
  const bool chunked = (parser->flags & F_CHUNKED) != 0;
  const bool has_length = (parser->flags & F_CONTENT_LENGTH) != 0;
  if (has_length && parser->content_length > self->limits_.max_body) {
    return self->fail(413, "request body too large");
  }
  // Tell the client to send the body only when the request is well formed
  // and within limits, and only once it is this request's turn (the server
  // feeds a connection's bytes one request at a time).
  const auto expect = request.headers.find("expect");
  if (expect != request.headers.end() && equalsIgnoreCase(expect->second, "100-continue") &&
      parser->http_minor >= 1 && (chunked || (has_length && parser->content_length > 0))) {
    self->paused_for_ = HttpParseEventType::kContinue;
    return HPE_PAUSED;
  }
  return 0;
}

int HttpRequestParser::onBody(llhttp_t* parser, const char* at, std::size_t length) {
  HttpRequestParser* self = owner(parser);
  // Only chunked bodies can get here over the limit (Content-Length is
  // checked up front). The offset where this trips may depend on the split,
  // but the outcome does not: the bytes up to the end of this chunk's data
  // cannot hold a syntax error.
  if (length > self->limits_.max_body - self->request_.body.size()) {
    return self->fail(413, "request body too large");
  }
  self->request_.body.append(at, length);
  return 0;
}

int HttpRequestParser::onMessageComplete(llhttp_t* parser) {
  HttpRequestParser* self = owner(parser);
  // An upgrade (or CONNECT) is answered like any request, then the
  // connection ends: the bytes after it are not HTTP/1.1 requests.
  self->keep_alive_ = llhttp_should_keep_alive(parser) != 0 && parser->upgrade == 0;
  self->paused_for_ = HttpParseEventType::kRequest;
  return HPE_PAUSED;
}

HttpFeedResult HttpRequestParser::failWith(std::size_t consumed, int status, std::string message) {
  failed_ = true;
  error_event_ = HttpParseEvent{};
  error_event_.type = HttpParseEventType::kError;
  error_event_.status = status;
  error_event_.message = std::move(message);
  return HttpFeedResult{consumed, error_event_};
}

HttpFeedResult HttpRequestParser::feed(std::string_view bytes) {
  if (failed_) {
    return HttpFeedResult{0, error_event_};
  }
  if (closed_) {
    return HttpFeedResult{bytes.size(), {}};
  }
  // llhttp gets only the bytes before the first one over a limit, so a
  // limit and a syntax error are told apart by stream offset alone.
  Scanner probe = scanner_;
  const std::size_t limit_at = probe.scan(bytes, limits_);
  const std::string_view allowed = bytes.substr(0, limit_at);
  paused_for_ = HttpParseEventType::kNeedMore;
  llhttp_errno_t err = HPE_OK;
  std::size_t consumed = allowed.size();
  if (!allowed.empty()) {
    err = llhttp_execute(&parser_, allowed.data(), allowed.size());
    if (err != HPE_OK) {
      const char* pos = llhttp_get_error_pos(&parser_);
      consumed = pos != nullptr && pos >= allowed.data()
                     ? std::min<std::size_t>(static_cast<std::size_t>(pos - allowed.data()),
                                             allowed.size())
                     : 0;
    }
  }
  scanner_.scan(bytes.substr(0, consumed), limits_);
  if (error_status_ != 0) {
    return failWith(consumed, error_status_, std::move(error_message_));
  }
  switch (err) {
    case HPE_OK:
      if (limit_at < bytes.size()) {
        if (probe.phase == Phase::kRequestLine) {
          return probe.spaces == 1 ? failWith(consumed, 414, "request URI too long")
                                   : failWith(consumed, 431, "request line too long");
        }
        return failWith(consumed, 431, "request header section too large");
      }
      return HttpFeedResult{consumed, {}};
    case HPE_PAUSED: {
      llhttp_resume(&parser_);
      HttpFeedResult result;
      result.consumed = consumed;
      if (paused_for_ == HttpParseEventType::kContinue) {
        result.event.type = HttpParseEventType::kContinue;
        return result;
      }
      result.event.type = HttpParseEventType::kRequest;
      result.event.request = std::move(request_);
      result.event.keep_alive = keep_alive_;
      request_ = HttpRequest{};
      scanner_ = Scanner{};
      in_message_ = false;
      closed_ = !keep_alive_;
      return result;
    }
    case HPE_PAUSED_H2_UPGRADE:
      return failWith(consumed, 505, "HTTP/2 is not supported");
    default: {
      const char* reason = llhttp_get_error_reason(&parser_);
      return failWith(consumed, 400,
                      std::string("malformed request: ") + (reason != nullptr ? reason : "?"));
    }
  }
}

// ---------------------------------------------------------------------------
// StatusServer.

namespace {

class Connection;

// nginx's default; a burst of connects beyond the accept queue costs a
// one-second SYN-ACK retransmit each.
constexpr int kBacklog = 511;
// Stop taking pipelined requests while this much response data waits for a
// client that does not read; resume once the kernel took it.
constexpr std::size_t kWriteHighWater = 1 << 20;
// A connection that is being closed after a final response keeps reading
// (and dropping) what the client still sends for at most this long, so that
// the response is not lost to a reset.
constexpr std::uint64_t kMaxLingerMs = 5000;

std::string serializeResponse(const HttpResponse& response, bool keep_alive, bool head) {
  int status = response.status;
  if (status < 200 || status > 599) {
    status = 500;
  }
  const bool no_body = status == 204 || status == 304;
  std::string out;
  out.reserve(192 + response.body.size());
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out += ' ';
  out += httpReasonPhrase(status);
  out += "\r\n";
  if (!no_body) {
    if (!response.content_type.empty() && isHeaderValue(response.content_type)) {
      out += "Content-Type: ";
      out += response.content_type;
      out += "\r\n";
    }
    out += "Content-Length: ";
    out += std::to_string(response.body.size());
    out += "\r\n";
  }
  for (const auto& [name, value] : response.headers) {
    if (!isHeaderName(name) || !isHeaderValue(value) || equalsIgnoreCase(name, "content-length") ||
        equalsIgnoreCase(name, "connection") || equalsIgnoreCase(name, "transfer-encoding")) {
      continue;
    }
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  out += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
  if (!no_body && !head) {
    out += response.body;
  }
  return out;
}

HttpResponse errorResponse(int status, std::string_view message) {
  HttpResponse response;
  response.status = status;
  response.body = jsonError(status, message);
  return response;
}

}  // namespace

struct StatusServer::Impl {
  Impl(uv_loop_t* loop_in, Endpoint listen_in, std::string token_in, Handler handler_in,
       StatusServerLimits limits_in)
      : loop(loop_in),
        listen(std::move(listen_in)),
        token(std::move(token_in)),
        handler(std::move(handler_in)),
        limits(limits_in) {}

  bool start(std::string& error);
  void stop(std::function<void()> done);
  void closeListener();
  // Called whenever a handle finished closing. May delete `this` (orphaned)
  // or run stop callbacks that destroy the owner: callers touch nothing
  // afterwards.
  void finishIfIdle();
  bool authorized(const HttpRequest& request) const;
  std::size_t inputCap() const {
    return limits.max_request_line + limits.max_header_bytes + limits.max_body + 4096;
  }

  static void onConnection(uv_stream_t* listener, int status);
  static void onListenerClosed(uv_handle_t* handle);

  uv_loop_t* loop;
  Endpoint listen;
  std::string token;
  Handler handler;
  StatusServerLimits limits;
  uv_tcp_t* listener = nullptr;  // freed in onListenerClosed
  bool listener_closing = false;
  std::uint16_t bound_port = 0;
  std::unordered_set<Connection*> connections;  // open or closing
  bool stopping = false;
  bool orphaned = false;  // the StatusServer is gone; delete when idle
  std::vector<std::function<void()>> stop_done;
  std::array<char, 64 * 1024> read_buffer{};  // every read is handled before the next
};

namespace {

// One accepted socket. Owned by `self` from accept until the last close
// callback; Responders hold weak references, so a late answer finds either
// a closing connection (and is dropped) or nothing.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  explicit Connection(StatusServer::Impl* impl) : impl_(impl), parser_(impl->limits) {}

  // Registers with the server and initialises both handles.
  static void accept(StatusServer::Impl* impl, uv_stream_t* listener);

  void closeNow();

 private:
  enum class TimerKind : std::uint8_t { kNone, kIdle, kRequest, kLinger };
  struct WriteRequest {
    uv_write_t req;
    std::string data;
  };

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
  void start();
  void refuse();
  void processInput();
  void dispatch(HttpRequest request, bool keep_alive);
  void respond(std::uint64_t seq, HttpResponse response);
  void sendError(int status, std::string_view message);
  void queueWrite(std::string data);
  void finish();
  void updateTimer();
  void updateReading();
  void armTimer(TimerKind kind, std::uint64_t ms);

  static void onAlloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buf);
  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void onWrite(uv_write_t* req, int status);
  static void onShutdown(uv_shutdown_t* req, int status);
  static void onTimer(uv_timer_t* timer);
  static void onClose(uv_handle_t* handle);

  StatusServer::Impl* impl_;
  std::shared_ptr<Connection> self_;
  uv_tcp_t tcp_{};
  uv_timer_t timer_{};
  uv_shutdown_t shutdown_{};
  int open_handles_ = 0;
  HttpRequestParser parser_;
  std::string input_;  // received, not yet parsed
  TimerKind timer_kind_ = TimerKind::kNone;
  bool reading_ = false;
  bool handling_ = false;     // a request is with the handler
  bool dispatching_ = false;  // inside dispatch(): respond() must not re-enter processInput()
  bool finishing_ = false;    // the last response is queued; shutdown follows
  bool lingering_ = false;    // reading and dropping until EOF or the linger timer
  bool closing_ = false;      // uv_close called
  bool keep_alive_ = false;   // of the request being handled
  bool head_ = false;         // the request being handled is HEAD
  std::uint64_t seq_ = 0;     // numbers requests, so a stale Responder is ignored
};

void Connection::accept(StatusServer::Impl* impl, uv_stream_t* listener) {
  auto conn = std::make_shared<Connection>(impl);
  if (uv_tcp_init(impl->loop, &conn->tcp_) != 0) {
    return;
  }
  conn->tcp_.data = conn.get();
  ++conn->open_handles_;
  uv_timer_init(impl->loop, &conn->timer_);
  conn->timer_.data = conn.get();
  ++conn->open_handles_;
  conn->self_ = conn;
  impl->connections.insert(conn.get());
  if (uv_accept(listener, conn->stream()) != 0) {
    conn->closeNow();
    return;
  }
  if (impl->stopping || impl->connections.size() > impl->limits.max_connections) {
    conn->refuse();
    return;
  }
  conn->start();
}

void Connection::start() {
  uv_tcp_nodelay(&tcp_, 1);
  updateReading();
  updateTimer();
}

void Connection::refuse() {
  // Best effort, never queued: a refused client gets a 503 if the socket
  // takes it at once, else just the close.
  static const std::string kBusy =
      serializeResponse(errorResponse(503, "too many connections"), false, false);
  uv_buf_t buf = uv_buf_init(const_cast<char*>(kBusy.data()), static_cast<unsigned>(kBusy.size()));
  uv_try_write(stream(), &buf, 1);
  closeNow();
}

void Connection::closeNow() {
  if (closing_) {
    return;
  }
  closing_ = true;
  handling_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), onClose);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), onClose);
}

void Connection::onClose(uv_handle_t* handle) {
  auto* conn = static_cast<Connection*>(handle->data);
  if (--conn->open_handles_ > 0) {
    return;
  }
  // Keep the memory until this function returns; the server may go first.
  const std::shared_ptr<Connection> keep = std::move(conn->self_);
  StatusServer::Impl* impl = conn->impl_;
  impl->connections.erase(conn);
  impl->finishIfIdle();
}

void Connection::onAlloc(uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
  auto* conn = static_cast<Connection*>(handle->data);
  *buf = uv_buf_init(conn->impl_->read_buffer.data(),
                     static_cast<unsigned>(conn->impl_->read_buffer.size()));
}

void Connection::onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* conn = static_cast<Connection*>(stream->data);
  if (nread < 0) {
    // EOF or an error. A client that goes away mid-request gets no answer,
    // like nginx without proxy_ignore_client_abort; a pending Responder is
    // dropped.
    conn->closeNow();
    return;
  }
  if (nread == 0 || conn->lingering_) {
    return;
  }
  conn->input_.append(buf->base, static_cast<std::size_t>(nread));
  conn->processInput();
}

void Connection::processInput() {
  while (!closing_ && !finishing_ && !handling_ && !input_.empty()) {
    if (uv_stream_get_write_queue_size(stream()) > kWriteHighWater) {
      break;  // onWrite() resumes
    }
    HttpFeedResult result = parser_.feed(input_);
    input_.erase(0, result.consumed);
    switch (result.event.type) {
      case HttpParseEventType::kNeedMore:
        break;
      case HttpParseEventType::kContinue:
        queueWrite("HTTP/1.1 100 Continue\r\n\r\n");
        break;
      case HttpParseEventType::kError:
        sendError(result.event.status, result.event.message);
        break;
      case HttpParseEventType::kRequest:
        dispatch(std::move(result.event.request), result.event.keep_alive);
        break;
    }
  }
  if (closing_) {
    return;
  }
  updateTimer();
  updateReading();
}

void Connection::dispatch(HttpRequest request, bool keep_alive) {
  handling_ = true;
  keep_alive_ = keep_alive;
  head_ = request.method == "HEAD";
  const std::uint64_t seq = ++seq_;
  updateTimer();
  dispatching_ = true;
  if (!impl_->authorized(request)) {
    HttpResponse response = errorResponse(401, "missing or invalid bearer token");
    response.headers.emplace_back("WWW-Authenticate", "Bearer");
    respond(seq, std::move(response));
  } else if (!impl_->handler) {
    respond(seq, errorResponse(500, "no handler"));
  } else {
    Responder responder = [weak = weak_from_this(), seq](HttpResponse response) {
      if (const std::shared_ptr<Connection> conn = weak.lock()) {
        conn->respond(seq, std::move(response));
      }
    };
    // The handler is ours, but an exception must not unwind through libuv.
    try {
      impl_->handler(request, std::move(responder));
    } catch (const std::exception&) {
      respond(seq, errorResponse(500, "internal error"));
    } catch (...) {
      respond(seq, errorResponse(500, "internal error"));
    }
  }
  dispatching_ = false;
}

void Connection::respond(std::uint64_t seq, HttpResponse response) {
  if (closing_ || finishing_ || !handling_ || seq != seq_) {
    return;  // the connection closed, or this request was already answered
  }
  handling_ = false;
  queueWrite(serializeResponse(response, keep_alive_, head_));
  if (!keep_alive_) {
    finish();
  }
  if (!dispatching_) {
    processInput();
  }
}

void Connection::sendError(int status, std::string_view message) {
  queueWrite(serializeResponse(errorResponse(status, message), false, false));
  finish();
}

void Connection::queueWrite(std::string data) {
  if (closing_) {
    return;
  }
  auto* write = new WriteRequest{};
  write->data = std::move(data);
  write->req.data = write;
  uv_buf_t buf = uv_buf_init(write->data.data(), static_cast<unsigned>(write->data.size()));
  if (uv_write(&write->req, stream(), &buf, 1, onWrite) != 0) {
    delete write;
    closeNow();
  }
}

void Connection::onWrite(uv_write_t* req, int status) {
  auto* conn = static_cast<Connection*>(req->handle->data);
  delete static_cast<WriteRequest*>(req->data);
  if (status < 0) {
    conn->closeNow();
    return;
  }
  if (!conn->closing_ && !conn->finishing_ && !conn->handling_) {
    conn->processInput();  // may have paused on kWriteHighWater
  }
}

void Connection::finish() {
  if (finishing_ || closing_) {
    return;
  }
  finishing_ = true;
  // The shutdown waits for the queued writes, then sends FIN.
  if (uv_shutdown(&shutdown_, stream(), onShutdown) != 0) {
    closeNow();
    return;
  }
  lingering_ = true;
  input_.clear();
  input_.shrink_to_fit();
  armTimer(TimerKind::kLinger, std::min(impl_->limits.request_timeout_ms, kMaxLingerMs));
  updateReading();
}

void Connection::onShutdown(uv_shutdown_t* req, int status) {
  auto* conn = static_cast<Connection*>(req->handle->data);
  if (status < 0) {
    conn->closeNow();
  }
}

void Connection::armTimer(TimerKind kind, std::uint64_t ms) {
  timer_kind_ = kind;
  uv_timer_start(&timer_, onTimer, ms, 0);
}

void Connection::updateTimer() {
  if (closing_ || lingering_) {
    return;
  }
  if (handling_) {
    // The handler owns the wait (a probe run has its own timeout).
    if (timer_kind_ != TimerKind::kNone) {
      uv_timer_stop(&timer_);
      timer_kind_ = TimerKind::kNone;
    }
    return;
  }
  if (parser_.midRequest() || !input_.empty()) {
    // Started when the request's first byte came (or when its turn came),
    // never restarted by more bytes: a trickle cannot keep it open.
    if (timer_kind_ != TimerKind::kRequest) {
      armTimer(TimerKind::kRequest, impl_->limits.request_timeout_ms);
    }
    return;
  }
  if (timer_kind_ != TimerKind::kIdle) {
    armTimer(TimerKind::kIdle, impl_->limits.idle_timeout_ms);
  }
}

void Connection::onTimer(uv_timer_t* timer) {
  auto* conn = static_cast<Connection*>(timer->data);
  const TimerKind kind = conn->timer_kind_;
  conn->timer_kind_ = TimerKind::kNone;
  switch (kind) {
    case TimerKind::kRequest:
      conn->sendError(408, "request timed out");
      break;
    case TimerKind::kIdle:
    case TimerKind::kLinger:
    case TimerKind::kNone:
      conn->closeNow();
      break;
  }
}

void Connection::updateReading() {
  if (closing_) {
    return;
  }
  // While a request is with the handler, keep reading (to see the client
  // leave, and to queue pipelined requests) up to a bound.
  const bool want = lingering_ || input_.size() < impl_->inputCap();
  if (want && !reading_) {
    if (uv_read_start(stream(), onAlloc, onRead) != 0) {
      closeNow();
      return;
    }
    reading_ = true;
  } else if (!want && reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
}

}  // namespace

bool StatusServer::Impl::authorized(const HttpRequest& request) const {
  if (token.empty()) {
    return true;
  }
  if ((request.method == "GET" || request.method == "HEAD") && request.path == "/healthz") {
    return true;  // load balancers probe liveness without credentials
  }
  const auto it = request.headers.find("authorization");
  if (it == request.headers.end()) {
    return false;
  }
  std::string_view value = it->second;
  constexpr std::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !equalsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  return constantTimeEquals(trimWhitespace(value.substr(kScheme.size())), token);
}

bool StatusServer::Impl::start(std::string& error) {
  const std::string where =
      (listen.ipv6 ? "[" + listen.host + "]" : listen.host) + ":" + std::to_string(listen.port);
  if (listener != nullptr || stopping) {
    error = "status endpoint " + where + ": already started";
    return false;
  }
  sockaddr_storage addr{};
  const int parsed =
      listen.ipv6
          ? uv_ip6_addr(listen.host.c_str(), listen.port, reinterpret_cast<sockaddr_in6*>(&addr))
          : uv_ip4_addr(listen.host.c_str(), listen.port, reinterpret_cast<sockaddr_in*>(&addr));
  if (parsed != 0) {
    error = "status endpoint " + where + ": not a literal IP address";
    return false;
  }
  listener = new uv_tcp_t{};
  if (const int rc = uv_tcp_init(loop, listener); rc != 0) {
    delete listener;
    listener = nullptr;
    error = "status endpoint " + where + ": " + uv_strerror(rc);
    return false;
  }
  listener->data = this;
  // IPv6ONLY: "[::]" means IPv6 only; IPv4 needs its own listen address.
  int rc = uv_tcp_bind(listener, reinterpret_cast<const sockaddr*>(&addr),
                       listen.ipv6 ? UV_TCP_IPV6ONLY : 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), kBacklog, onConnection);
  }
  if (rc != 0) {
    error = "status endpoint: cannot listen on " + where + ": " + uv_strerror(rc);
    closeListener();
    return false;
  }
  sockaddr_storage bound{};
  int length = sizeof bound;
  if (uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &length) == 0) {
    const std::uint16_t net_port = bound.ss_family == AF_INET6
                                       ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                       : reinterpret_cast<sockaddr_in*>(&bound)->sin_port;
    bound_port = ntohs(net_port);
  }
  return true;
}

void StatusServer::Impl::onConnection(uv_stream_t* listener, int status) {
  auto* impl = static_cast<Impl*>(listener->data);
  if (status < 0) {
    return;  // e.g. EMFILE; libuv retries on the next readiness
  }
  Connection::accept(impl, listener);
}

void StatusServer::Impl::closeListener() {
  if (listener == nullptr || listener_closing) {
    return;
  }
  listener_closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(listener), onListenerClosed);
}

void StatusServer::Impl::onListenerClosed(uv_handle_t* handle) {
  auto* impl = static_cast<Impl*>(handle->data);
  delete reinterpret_cast<uv_tcp_t*>(handle);
  impl->listener = nullptr;
  impl->listener_closing = false;
  impl->finishIfIdle();
}

void StatusServer::Impl::stop(std::function<void()> done) {
  stopping = true;
  if (done) {
    stop_done.push_back(std::move(done));
  }
  closeListener();
  // closeNow() only starts closing; the set changes in close callbacks.
  for (Connection* conn : connections) {
    conn->closeNow();
  }
  finishIfIdle();
}

void StatusServer::Impl::finishIfIdle() {
  if (listener != nullptr || !connections.empty()) {
    return;
  }
  if (orphaned) {
    delete this;
    return;
  }
  if (!stopping || stop_done.empty()) {
    return;
  }
  // A callback may destroy the StatusServer (and so this): work on a copy.
  std::vector<std::function<void()>> callbacks = std::move(stop_done);
  stop_done.clear();
  for (auto& callback : callbacks) {
    callback();
  }
}

StatusServer::StatusServer(uv_loop_t* loop, Endpoint listen, std::string token, Handler handler,
                           StatusServerLimits limits)
    : impl_(new Impl(loop, std::move(listen), std::move(token), std::move(handler), limits)) {}

StatusServer::~StatusServer() {
  Impl* impl = impl_;
  impl_ = nullptr;
  impl->stop_done.clear();
  impl->orphaned = true;
  impl->stop(nullptr);  // deletes impl now if nothing is open, else after the last close
}

bool StatusServer::start(std::string& error) {
  return impl_->start(error);
}

void StatusServer::stop(std::function<void()> done) {
  impl_->stop(std::move(done));
}

std::uint16_t StatusServer::port() const {
  return impl_->bound_port;
}

std::size_t StatusServer::connections() const {
  return impl_->connections.size();
}

}  // namespace portico::health
