#include "status_server.h"

#include "http_util.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <memory>
#include <unordered_set>

namespace portico::health {

using namespace http_detail;  // NOLINT: this library's own helpers

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

  Status start();
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
  if ((request.method == "GET" || request.method == "HEAD") &&
      (request.path == "/healthz" || request.path == "/")) {
    // Load balancers probe liveness without credentials; the status page is
    // static (no data in it) and a browser cannot send a bearer token when
    // it opens it: its script asks for the token and sends it on every fetch.
    return true;
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

Status StatusServer::Impl::start() {
  const std::string where =
      (listen.ipv6 ? "[" + listen.host + "]" : listen.host) + ":" + std::to_string(listen.port);
  if (listener != nullptr || stopping) {
    return Status::error("status endpoint " + where + ": already started");
  }
  sockaddr_storage addr{};
  const int parsed =
      listen.ipv6
          ? uv_ip6_addr(listen.host.c_str(), listen.port, reinterpret_cast<sockaddr_in6*>(&addr))
          : uv_ip4_addr(listen.host.c_str(), listen.port, reinterpret_cast<sockaddr_in*>(&addr));
  if (parsed != 0) {
    return Status::error("status endpoint " + where + ": not a literal IP address");
  }
  listener = new uv_tcp_t{};
  if (const int rc = uv_tcp_init(loop, listener); rc != 0) {
    delete listener;
    listener = nullptr;
    return Status::error("status endpoint " + where + ": " + uv_strerror(rc));
  }
  listener->data = this;
  // IPv6ONLY: "[::]" means IPv6 only; IPv4 needs its own listen address.
  int rc = uv_tcp_bind(listener, reinterpret_cast<const sockaddr*>(&addr),
                       listen.ipv6 ? UV_TCP_IPV6ONLY : 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener), kBacklog, onConnection);
  }
  if (rc != 0) {
    closeListener();
    return Status::error("status endpoint: cannot listen on " + where + ": " + uv_strerror(rc));
  }
  sockaddr_storage bound{};
  int length = sizeof bound;
  if (uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&bound), &length) == 0) {
    const std::uint16_t net_port = bound.ss_family == AF_INET6
                                       ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                       : reinterpret_cast<sockaddr_in*>(&bound)->sin_port;
    bound_port = ntohs(net_port);
  }
  return Status();
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

Status StatusServer::start() {
  return impl_->start();
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
