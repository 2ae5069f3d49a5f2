// Worker, the accept path: listening sockets, the per-IP limit, running out
// of descriptors (answered with the reserve descriptor, then a pause), the
// inbound PROXY header and admission of a connection as a session.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "net_types.h"
#include "portico/logging.h"
#include "worker.h"
#include "worker_internal.h"

namespace portico::proxy {

using namespace worker_detail;  // NOLINT: the worker's own helpers

namespace {

// Ignores everything: owns a refused connection until it has closed.
class RejectHandler final : public TransportHandler {
 public:
  void onConnected(Transport*, bool, std::string_view) override {}
  void onData(Transport*, Chunk) override {}
  void onDrained(Transport*) override {}
  void onClosed(Transport*, std::string_view) override {}
};
RejectHandler g_reject_handler;

constexpr int kListenBacklog = 1024;
constexpr int kAcceptBatch = 64;
constexpr std::uint64_t kAcceptPauseMs = 100;
constexpr std::string_view kOutOfDescriptorsBye =
    "* BYE [UNAVAILABLE] Server is out of resources, try again later.\r\n";

std::string ipOf(const sockaddr_storage& address) {
  std::string text = formatAddress(address);
  auto colon = text.rfind(':');
  return colon == std::string::npos ? text : text.substr(0, colon);
}

}  // namespace

bool IpLimiter::acquire(const std::string& ip, std::uint32_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  std::uint32_t& n = counts_[ip];
  if (n >= limit) {
    if (n == 0) {
      counts_.erase(ip);
    }
    return false;
  }
  ++n;
  return true;
}

void IpLimiter::release(const std::string& ip) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = counts_.find(ip);
  if (it != counts_.end() && --it->second == 0) {
    counts_.erase(it);
  }
}

ListenSocket& ListenSocket::operator=(ListenSocket&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

ListenSocket::~ListenSocket() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

Result<ListenSocket> ListenSocket::open(const HostPort& host_port) {
  sockaddr_storage address;
  if (!toSockaddr(host_port, address)) {
    return Status::error(fmt::format("bad listen address {}", host_port.text()));
  }
  ListenSocket s;
  s.fd_ = ::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s.fd_ < 0) {
    int saved_errno = errno;
    return Status::error(
        fmt::format("cannot listen on {}: {}", host_port.text(), uv_strerror(-saved_errno)));
  }
  int one = 1;
  setsockopt(s.fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // Each worker has its own listening socket on the same port; the kernel
  // spreads new connections over them.
  setsockopt(s.fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (host_port.ipv6) {
    setsockopt(s.fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  socklen_t length = host_port.ipv6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::bind(s.fd_, reinterpret_cast<const sockaddr*>(&address), length) != 0 ||
      ::listen(s.fd_, kListenBacklog) != 0) {
    int saved_errno = errno;
    return Status::error(
        fmt::format("cannot listen on {}: {}", host_port.text(), uv_strerror(-saved_errno)));
  }
  return s;
}

Status Worker::bindListeners() {
  for (const ListenConfig& listen : config_->config.listen) {
    Result<ListenSocket> socket = ListenSocket::open(listen.address);
    if (!socket.ok()) {
      return socket.status();
    }
    if (Status added = addListener(listen.address.text(), std::move(*socket)); !added.ok()) {
      return added;
    }
  }
  return Status();
}

Status Worker::addListener(std::string address, ListenSocket socket) {
  auto* listener = new Listener{};
  if (int rc = uv_poll_init(&loop_, &listener->poll, socket.fd()); rc != 0) {
    delete listener;
    // `socket` closes the descriptor
    return Status::error(fmt::format("cannot listen on {}: {}", address, uv_strerror(rc)));
  }
  listener->worker = this;
  listener->fd = socket.release();
  listener->address = std::move(address);
  listener->poll.data = listener;
  listeners_.push_back(listener);
  if (!accept_paused_) {
    uv_poll_start(&listener->poll, UV_READABLE, &Worker::onListenerReadable);
  }
  return Status();
}

void Worker::closeListener(Listener* listener) {
  uv_poll_stop(&listener->poll);
  // The socket is closed only after libuv has let go of it.
  uv_close(reinterpret_cast<uv_handle_t*>(&listener->poll), [](uv_handle_t* h) {
    auto* l = static_cast<Listener*>(h->data);
    ::close(l->fd);
    delete l;
  });
}

void Worker::onListenerReadable(uv_poll_t* handle, int status, int) {
  auto* listener = static_cast<Listener*>(handle->data);
  if (status != 0) {
    logging::log(logging::Level::kWarn, "worker", "listener {}: {}", listener->address,
                 uv_strerror(status));
    return;
  }
  listener->worker->acceptPending(*listener);
}

void Worker::acceptPending(Listener& listener) {
  // A bounded batch per wakeup so that one busy listener cannot starve the
  // sessions on this loop; the poll is level-triggered and comes back.
  for (int i = 0; i < kAcceptBatch && !stopping_ && !accept_paused_; ++i) {
    int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      serve(listener, fd);
      continue;
    }
    int error = errno;
    switch (error) {
      case EAGAIN:
        return;
      case EINTR:
      case ECONNABORTED:
      // Linux reports a pending connection's network error from accept().
      case ENETDOWN:
      case EPROTO:
      case ENOPROTOOPT:
      case EHOSTDOWN:
      case ENONET:
      case EHOSTUNREACH:
      case EOPNOTSUPP:
      case ENETUNREACH:
        continue;
      case EMFILE:
      case ENFILE:
        if (refuseWithReserve(listener, error)) {
          continue;
        }
        pauseAccepting(listener, error);
        return;
      default:  // ENOBUFS, ENOMEM, EPERM (a firewall): try again a little later
        pauseAccepting(listener, error);
        return;
    }
  }
}

bool Worker::refuseWithReserve(Listener& listener, int error) {
  if (reserve_fd_ < 0) {
    reserve_fd_ = openReserve();
    if (reserve_fd_ < 0) {
      return false;
    }
  }
  // The classic trick: give up the reserve so that accept() has a
  // descriptor, answer, close, take the reserve back. Another thread may
  // take the freed descriptor first; then accept() fails again and the
  // caller pauses.
  ::close(reserve_fd_);
  int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  int accept_error = errno;
  if (fd >= 0) {
    // A fresh connection's send buffer is empty: the line fits at once.
    ssize_t sent = ::send(fd, kOutOfDescriptorsBye.data(), kOutOfDescriptorsBye.size(),
                          MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)sent;
    ::close(fd);
  }
  reserve_fd_ = openReserve();
  if (fd < 0) {
    return accept_error == EAGAIN || accept_error == ECONNABORTED;
  }
  stats_.connections_rejected.add();
  last_accept_error_ = error;
  std::uint64_t count = shared_.accept_refused.event(std::chrono::steady_clock::now());
  if (count > 0) {
    noteRefused(count, "accept on " + listener.address, error, false);
  } else {
    armThrottleFlush();
  }
  return true;
}

void Worker::noteRefused(std::uint64_t count, const std::string& where, int error, bool summary) {
  struct rlimit limit {};
  getrlimit(RLIMIT_NOFILE, &limit);
  logging::log(logging::Level::kWarn, "worker",
               "{}: out of file descriptors ({}: {}, open-file limit {}): refused {} {}"
               "connection{} with * BYE [UNAVAILABLE]{}",
               where, uv_err_name(-error), std::strerror(error),
               static_cast<std::uint64_t>(limit.rlim_cur), count, summary ? "more " : "",
               count == 1 ? "" : "s", summary ? " since the last report" : "");
}

void Worker::pauseAccepting(Listener& listener, int error) {
  std::uint64_t count = shared_.accept_paused.event(std::chrono::steady_clock::now());
  if (count > 0) {
    logging::log(logging::Level::kWarn, "worker",
                 "accept on {}: {} ({}){}: new connections wait in the backlog; accepting again "
                 "in {} ms ({} time{} since the last report)",
                 listener.address, std::strerror(error), uv_err_name(-error),
                 error == EMFILE || error == ENFILE ? ", and no reserve descriptor left" : "",
                 kAcceptPauseMs, count, count == 1 ? "" : "s");
  }
  accept_paused_ = true;
  for (Listener* l : listeners_) {
    uv_poll_stop(&l->poll);
  }
  uv_timer_start(
      &accept_resume_timer_,
      [](uv_timer_t* t) { static_cast<Worker*>(t->data)->resumeAccepting(); }, kAcceptPauseMs, 0);
}

void Worker::resumeAccepting() {
  accept_paused_ = false;
  if (stopping_) {
    return;
  }
  if (reserve_fd_ < 0) {
    reserve_fd_ = openReserve();
  }
  for (Listener* l : listeners_) {
    uv_poll_start(&l->poll, UV_READABLE, &Worker::onListenerReadable);
  }
}

void Worker::armThrottleFlush() {
  if (uv_is_active(reinterpret_cast<uv_handle_t*>(&throttle_timer_)) || stopping_) {
    return;
  }
  auto interval =
      std::chrono::duration_cast<std::chrono::milliseconds>(shared_.accept_refused.interval());
  // Timers count from the loop's cached time, which may lag the clock the
  // throttle reads: refresh it, so the flush is not a hair early.
  uv_update_time(&loop_);
  uv_timer_start(
      &throttle_timer_,
      [](uv_timer_t* t) {
        auto* w = static_cast<Worker*>(t->data);
        std::uint64_t count = w->shared_.accept_refused.flush(std::chrono::steady_clock::now());
        if (count > 0) {
          w->noteRefused(count, "accept", w->last_accept_error_, true);
        } else if (w->shared_.accept_refused.pending() > 0) {
          w->armThrottleFlush();  // another worker reported more recently
        }
      },
      static_cast<std::uint64_t>(interval.count()) + 1, 0);
}

void Worker::serve(Listener& listener, int fd) {
  UvTcpTransport* tcp = UvTcpTransport::adopt(&loop_, fd, pool_);
  if (tcp == nullptr) {
    return;
  }
  const Config& cfg = config_->config;
  if (stopping_) {
    reject(tcp, "* BYE Server shutting down.\r\n");
    return;
  }
  // Settings by address: a reload may have reordered, added or removed
  // entries; a socket whose entry is gone is being closed.
  auto entry = config_->listener_index.find(listener.address);
  if (entry == config_->listener_index.end()) {
    reject(tcp, "* BYE [UNAVAILABLE] This address is no longer served.\r\n");
    return;
  }
  if (shared_.connections.fetch_add(1, std::memory_order_relaxed) >= cfg.limits.max_connections) {
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    logging::log(logging::Level::kWarn, "worker", "connection from {} refused: max_connections {}",
                 formatAddress(tcp->peerAddress()), cfg.limits.max_connections);
    reject(tcp, "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n");
    return;
  }
  const ListenConfig& lc = cfg.listen[entry->second];
  if (lc.proxy_protocol) {
    // Only a load balancer may speak here, and it speaks first: nothing is
    // written until its header has named the client.
    if (!networksContain(lc.trusted_networks, tcp->peerAddress())) {
      shared_.connections.fetch_sub(1, std::memory_order_relaxed);
      stats_.connections_rejected.add();
      logProxyRefusal(shared_.proxy_refused, tcp->peerAddress(), listener.address,
                      "peer not in trusted_networks");
      armProxyRefusalFlush();
      tcp->setHandler(&g_reject_handler);
      tcp->close();
      return;
    }
    readers_.insert(new InboundProxyReader(*this, tcp, listener.address, timerFactory(),
                                           cfg.timeouts.tls_handshake, shared_.proxy_refused));
    return;
  }
  admit(listener.address, tcp, Chunk());
}

void Worker::headerRead(InboundProxyReader* reader, Transport* transport,
                        const sockaddr_storage& client, const sockaddr_storage& local, Chunk rest) {
  readers_.erase(reader);
  // Every reader runs over an accepted UvTcpTransport (serve()).
  static_cast<UvTcpTransport*>(transport)->setProxiedAddresses(client, local);
  admit(reader->listener(), transport, std::move(rest));
}

void Worker::closed(InboundProxyReader* reader) {
  readers_.erase(reader);
  shared_.connections.fetch_sub(1, std::memory_order_relaxed);
  stats_.connections_rejected.add();
  armProxyRefusalFlush();
  maybeStop();
}

void Worker::armProxyRefusalFlush() {
  if (shared_.proxy_refused.pending() == 0 || stopping_) {
    return;
  }
  if (!proxy_refused_flush_) {
    proxy_refused_flush_ = createTimer([this] {
      std::uint64_t count = shared_.proxy_refused.flush(std::chrono::steady_clock::now());
      if (count > 0) {
        logging::log(logging::Level::kWarn, "worker",
                     "proxy_protocol: {} more connection{} closed without greeting (see the line "
                     "before)",
                     count, count == 1 ? "" : "s");
      } else if (shared_.proxy_refused.pending() > 0) {
        proxy_refused_flush_->arm(std::chrono::milliseconds(100));
      }
    });
  }
  uv_update_time(&loop_);
  proxy_refused_flush_->arm(
      std::chrono::duration_cast<std::chrono::milliseconds>(shared_.proxy_refused.interval()) +
      std::chrono::milliseconds(1));
}

void Worker::admit(const std::string& address, Transport* transport, Chunk rest) {
  const Config& cfg = config_->config;
  std::string ip = ipOf(transport->peerAddress());
  // A reload while a PROXY header was read may have removed the entry.
  auto entry = config_->listener_index.find(address);
  if (entry == config_->listener_index.end() || stopping_) {
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    reject(transport, stopping_ ? "* BYE Server shutting down.\r\n"
                                : "* BYE [UNAVAILABLE] This address is no longer served.\r\n");
    return;
  }
  if (!limiter_.acquire(ip, cfg.limits.max_connections_per_ip)) {
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    logging::log(logging::Level::kWarn, "worker",
                 "connection from {} refused: max_connections_per_ip {}",
                 formatAddress(transport->peerAddress()), cfg.limits.max_connections_per_ip);
    reject(transport, "* BYE [UNAVAILABLE] Too many connections from your address.\r\n");
    return;
  }
  stats_.connections_current.add();
  stats_.connections_total.add();
  const ListenConfig& lc = cfg.listen[entry->second];
  std::shared_ptr<const ServerTlsContext> tls = config_->listener_tls[entry->second];
  bool implicit = lc.tls == TlsMode::kImplicit && tls != nullptr;
  Transport* plain = transport;
  TlsTransport* tls_transport = nullptr;
  if (implicit) {
    stats_.connections_tls.add();
    tls_transport =
        TlsTransport::server(transport, tls, timerFactory(), cfg.timeouts.tls_handshake, pool_);
    transport = tls_transport;
  }
  auto* session = new Session(*this, config_, transport, ids_());
  session->setListener(lc.tls, lc.require_tls, tls, implicit);
  session->setCompressOffered(lc.compress);
  sessions_.emplace(session, std::move(ip));
  session->start();
  if (rest.size() > 0) {
    // Bytes that came with the PROXY header: the start of the ClientHello,
    // or a command sent before the greeting. Delivered as if just read.
    TransportHandler* next = tls_transport != nullptr
                                 ? static_cast<TransportHandler*>(tls_transport)
                                 : static_cast<TransportHandler*>(session);
    next->onData(plain, std::move(rest));
  }
}

void Worker::reject(Transport* transport, std::string_view bye) {
  stats_.connections_rejected.add();
  transport->setHandler(&g_reject_handler);
  transport->write(bye);
  transport->shutdown();
}

}  // namespace portico::proxy
