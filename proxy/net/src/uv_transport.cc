#include "portico/net/uv_transport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace portico::net {

struct UvTcpTransport::WriteReq {
  uv_write_t req;
  UvTcpTransport* transport;
  Chunk chunk;
  std::size_t held;  // counted in queued_
};

std::size_t UvTcpTransport::writeOverhead() {
  return sizeof(WriteReq);
}

namespace {
// Write requests are recycled per thread: the relay path allocates none in
// the steady state. The holder frees them when the worker thread exits.
struct FreeWriteReqs {
  std::vector<UvTcpTransport::WriteReq*> reqs;
  ~FreeWriteReqs();
  bool empty() const { return reqs.empty(); }
  std::size_t size() const { return reqs.size(); }
  UvTcpTransport::WriteReq* back() const { return reqs.back(); }
  void pop_back() { reqs.pop_back(); }
  void push_back(UvTcpTransport::WriteReq* w) { reqs.push_back(w); }
};
thread_local FreeWriteReqs t_free_write_reqs;
}  // namespace

std::string formatAddress(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&address);
    uv_ip4_name(in, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (address.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address);
    uv_ip6_name(in6, host, sizeof(host));
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "unknown";
}

FreeWriteReqs::~FreeWriteReqs() {
  for (UvTcpTransport::WriteReq* w : reqs) {
    delete w;
  }
}

UvTcpTransport::UvTcpTransport(uv_loop_t* loop, BufferPool& pool) : pool_(pool) {
  uv_tcp_init(loop, &tcp_);
  tcp_.data = this;
  handles_open_ = 1;
}

UvTcpTransport* UvTcpTransport::adopt(uv_loop_t* loop, int fd, BufferPool& pool) {
  auto* t = new UvTcpTransport(loop, pool);
  if (uv_tcp_open(&t->tcp_, fd) != 0) {
    ::close(fd);  // not the handle's: libuv took no ownership
    t->closeWithReason("accept failed");
    return nullptr;
  }
  uv_tcp_nodelay(&t->tcp_, 1);
  t->connected_ = true;
  t->readAddresses();
  t->startReading();
  return t;
}

UvTcpTransport* UvTcpTransport::connect(uv_loop_t* loop, const sockaddr* address, BufferPool& pool,
                                        TransportHandler* handler) {
  auto* t = new UvTcpTransport(loop, pool);
  t->handler_ = handler;
  t->connect_req_ = std::make_unique<uv_connect_t>();
  t->connect_req_->data = t;
  int rc = uv_tcp_connect(t->connect_req_.get(), &t->tcp_, address, &UvTcpTransport::onConnect);
  if (rc != 0) {
    // Report asynchronously through the normal close path, never from here.
    t->closeWithReason(uv_strerror(rc));
  }
  return t;
}

void UvTcpTransport::readAddresses() {
  int len = sizeof(peer_);
  uv_tcp_getpeername(&tcp_, reinterpret_cast<sockaddr*>(&peer_), &len);
  len = sizeof(local_);
  uv_tcp_getsockname(&tcp_, reinterpret_cast<sockaddr*>(&local_), &len);
}

void UvTcpTransport::onConnect(uv_connect_t* req, int status) {
  auto* t = static_cast<UvTcpTransport*>(req->data);
  t->connect_req_.reset();  // libuv is done with it (closing the handle cancels it first)
  if (t->closed_) {
    return;  // closed while connecting: the close callback reports it
  }
  if (status != 0) {
    if (t->handler_ != nullptr) {
      t->handler_->onConnected(t, false, uv_strerror(status));
    }
    t->closeWithReason(uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&t->tcp_, 1);
  t->connected_ = true;
  t->readAddresses();
  t->startReading();
  if (t->handler_ != nullptr) {
    t->handler_->onConnected(t, true, "");
  }
}

void UvTcpTransport::startReading() {
  if (closed_ || !connected_ || reading_ || !want_read_) {
    return;
  }
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), &UvTcpTransport::onAlloc,
                    &UvTcpTransport::onRead) == 0) {
    reading_ = true;
  }
}

void UvTcpTransport::pauseReading() {
  want_read_ = false;
  if (reading_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    reading_ = false;
  }
}

void UvTcpTransport::resumeReading() {
  want_read_ = true;
  startReading();
}

void UvTcpTransport::onAlloc(uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
  auto* t = static_cast<UvTcpTransport*>(handle->data);
  if (t->read_block_ == nullptr) {
    t->read_block_ = t->pool_.acquire();
  }
  buf->base = t->read_block_->data();
  buf->len = t->read_block_->capacity;
}

void UvTcpTransport::onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* t = static_cast<UvTcpTransport*>(stream->data);
  if (nread > 0) {
    Chunk chunk(t->read_block_, buf->base, static_cast<std::size_t>(nread));
    t->read_block_ = nullptr;
    if (t->secrets_) {
      chunk.markSecret();
    }
    if (t->handler_ != nullptr && !t->closed_) {
      t->handler_->onData(t, std::move(chunk));
    }
    return;
  }
  // Nothing read: the block stays with the transport only until the next
  // read, so an idle connection holds none.
  if (t->read_block_ != nullptr) {
    t->pool_.release(t->read_block_);
    t->read_block_ = nullptr;
  }
  if (nread == 0) {
    return;
  }
  t->closeWithReason(nread == UV_EOF ? "closed by peer" : uv_strerror(static_cast<int>(nread)));
}

void UvTcpTransport::acknowledgeNow() {
  uv_os_fd_t fd;
  if (closed_ || !connected_ || uv_fileno(reinterpret_cast<uv_handle_t*>(&tcp_), &fd) != 0) {
    return;
  }
  // Linux sends the pending delayed ACK at once when TCP_QUICKACK is set
  // (and leaves "pingpong" mode until data goes out again). Best effort: a
  // failure only means the ACK comes with the timer, as before.
  int on = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &on, sizeof(on));
}

void UvTcpTransport::write(Chunk chunk) {
  if (closed_ || chunk.empty()) {
    return;
  }
  if (queued_ == 0) {
    uv_buf_t buf =
        uv_buf_init(const_cast<char*>(chunk.data()), static_cast<unsigned>(chunk.size()));
    int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &buf, 1);
    if (n == static_cast<int>(chunk.size())) {
      return;
    }
    if (n > 0) {
      chunk = chunk.slice(static_cast<std::size_t>(n), chunk.size() - static_cast<std::size_t>(n));
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      closeWithReason(uv_strerror(n));
      return;
    }
  }
  queueWrite(std::move(chunk));
}

void UvTcpTransport::write(std::string_view bytes) {
  if (closed_ || bytes.empty()) {
    return;
  }
  if (queued_ == 0) {
    uv_buf_t buf =
        uv_buf_init(const_cast<char*>(bytes.data()), static_cast<unsigned>(bytes.size()));
    int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &buf, 1);
    if (n == static_cast<int>(bytes.size())) {
      return;
    }
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      closeWithReason(uv_strerror(n));
      return;
    }
  }
  queueWrite(Chunk::copyOf(bytes, secrets_));
}

void UvTcpTransport::queueWrite(Chunk chunk) {
  if (chunk.sparse(kSparseFraction)) {
    // A few bytes of a pooled read (one small answer, say) would pin the
    // whole block while they wait for a slow peer: keep a copy instead.
    chunk = Chunk::copyOf(chunk.view(), chunk.secret());
  }
  WriteReq* w;
  if (!t_free_write_reqs.empty()) {
    w = t_free_write_reqs.back();
    t_free_write_reqs.pop_back();
  } else {
    w = new WriteReq();
  }
  w->transport = this;
  w->chunk = std::move(chunk);
  w->req.data = w;
  uv_buf_t buf =
      uv_buf_init(const_cast<char*>(w->chunk.data()), static_cast<unsigned>(w->chunk.size()));
  w->held = w->chunk.footprint() + sizeof(WriteReq);
  queued_ += w->held;
  int rc =
      uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&tcp_), &buf, 1, &UvTcpTransport::onWrite);
  if (rc != 0) {
    queued_ -= w->held;
    w->chunk.reset();
    t_free_write_reqs.push_back(w);
    closeWithReason(uv_strerror(rc));
    return;
  }
  if (queued_ > high_) {
    above_high_ = true;
  }
}

void UvTcpTransport::onWrite(uv_write_t* req, int status) {
  auto* w = static_cast<WriteReq*>(req->data);
  UvTcpTransport* t = w->transport;
  std::size_t held = w->held;
  w->chunk.reset();
  if (t_free_write_reqs.size() < 1024) {
    t_free_write_reqs.push_back(w);
  } else {
    delete w;
  }
  t->afterWrite(held, status);
}

void UvTcpTransport::afterWrite(std::size_t held, int status) {
  queued_ -= held;
  if (status != 0) {
    if (status != UV_ECANCELED) {
      closeWithReason(uv_strerror(status));
    }
    return;
  }
  if (above_high_ && queued_ <= high_ / 2) {
    above_high_ = false;
    if (handler_ != nullptr && !closed_) {
      handler_->onDrained(this);
    }
  }
}

void UvTcpTransport::shutdown() {
  if (closed_ || shutting_down_) {
    return;
  }
  shutting_down_ = true;
  pauseReading();
  if (!connected_) {
    closeWithReason("closed");
    return;
  }
  shutdown_ = std::make_unique<Shutdown>();
  shutdown_->req.data = this;
  uv_timer_init(tcp_.loop, &shutdown_->flush_timer);
  shutdown_->flush_timer.data = this;
  ++handles_open_;
  if (uv_shutdown(&shutdown_->req, reinterpret_cast<uv_stream_t*>(&tcp_),
                  &UvTcpTransport::onShutdown) != 0) {
    closeWithReason("closed");
    return;
  }
  uv_timer_start(&shutdown_->flush_timer, &UvTcpTransport::onFlushTimeout, kShutdownFlushMs, 0);
}

void UvTcpTransport::onShutdown(uv_shutdown_t* req, int) {
  auto* t = static_cast<UvTcpTransport*>(req->data);
  t->closeWithReason("closed");
}

void UvTcpTransport::onFlushTimeout(uv_timer_t* timer) {
  auto* t = static_cast<UvTcpTransport*>(timer->data);
  t->closeWithReason("flush timeout");
}

void UvTcpTransport::close() {
  closeWithReason("closed");
}

void UvTcpTransport::closeWithReason(std::string_view reason) {
  if (closed_) {
    return;
  }
  closed_ = true;
  close_reason_.assign(reason);
  if (reading_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    reading_ = false;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), &UvTcpTransport::onHandleClosed);
  if (shutdown_ != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(&shutdown_->flush_timer),
             &UvTcpTransport::onHandleClosed);
  }
}

void UvTcpTransport::onHandleClosed(uv_handle_t* handle) {
  auto* t = static_cast<UvTcpTransport*>(handle->data);
  if (--t->handles_open_ > 0) {
    return;
  }
  if (t->read_block_ != nullptr) {
    t->pool_.release(t->read_block_);
  }
  if (t->handler_ != nullptr) {
    t->handler_->onClosed(t, t->close_reason_);
  }
  delete t;
}

UvTimer::UvTimer(uv_loop_t* loop, std::function<void()> callback)
    : handle_(new uv_timer_t), callback_(std::move(callback)) {
  uv_timer_init(loop, handle_);
  handle_->data = this;
}

UvTimer::~UvTimer() {
  uv_timer_stop(handle_);
  handle_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(handle_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
}

void UvTimer::arm(std::chrono::milliseconds delay) {
  uv_timer_start(handle_, &UvTimer::onTimer, static_cast<std::uint64_t>(delay.count()), 0);
}

void UvTimer::cancel() {
  uv_timer_stop(handle_);
}

void UvTimer::onTimer(uv_timer_t* timer) {
  auto* self = static_cast<UvTimer*>(timer->data);
  if (self != nullptr) {
    self->callback_();
  }
}

}  // namespace portico::net
