#include "worker.h"

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

namespace portico::proxy {

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

bool toSockaddr(const HostPort& hp, sockaddr_storage& out) {
  std::memset(&out, 0, sizeof(out));
  if (hp.ipv6) {
    return uv_ip6_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(&out)) == 0;
  }
  return uv_ip4_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in*>(&out)) == 0;
}

constexpr int kListenBacklog = 1024;
constexpr int kAcceptBatch = 64;
constexpr std::uint64_t kAcceptPauseMs = 100;
constexpr std::string_view kOutOfDescriptorsBye =
    "* BYE [UNAVAILABLE] Server is out of resources, try again later.\r\n";

// The descriptor given up at EMFILE to answer one connection.
int openReserve() {
  return ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

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

ListenSocket ListenSocket::open(const HostPort& host_port, std::string& error) {
  sockaddr_storage address;
  if (!toSockaddr(host_port, address)) {
    error = fmt::format("bad listen address {}", host_port.text());
    return {};
  }
  ListenSocket s;
  s.fd_ = ::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s.fd_ < 0) {
    int saved_errno = errno;
    error = fmt::format("cannot listen on {}: {}", host_port.text(), uv_strerror(-saved_errno));
    return {};
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
    error = fmt::format("cannot listen on {}: {}", host_port.text(), uv_strerror(-saved_errno));
    return {};
  }
  return s;
}

Worker::Worker(std::size_t index, RuntimeConfigPtr config, SharedState& shared, IpLimiter& limiter)
    : index_(index),
      config_(std::move(config)),
      shared_(shared),
      limiter_(limiter),
      tasks_((uv_loop_init(&loop_), &loop_)),
      ids_(std::random_device{}() ^ (static_cast<std::uint64_t>(index) << 32)) {
  loop_.data = this;
  uv_timer_init(&loop_, &accept_resume_timer_);
  uv_timer_init(&loop_, &throttle_timer_);
  uv_idle_init(&loop_, &reaper_);
  reaper_.data = this;
  accept_resume_timer_.data = this;
  throttle_timer_.data = this;
  uv_timer_init(&loop_, &idle_sweep_);
  idle_sweep_.data = this;
  uv_timer_start(
      &idle_sweep_, [](uv_timer_t* t) { static_cast<Worker*>(t->data)->releaseIdleBuffers(); },
      static_cast<std::uint64_t>(kIdleSweep.count()),
      static_cast<std::uint64_t>(kIdleSweep.count()));
  uv_unref(reinterpret_cast<uv_handle_t*>(&idle_sweep_));  // never keeps the loop alive
  reserve_fd_ = openReserve();
  // libuv opens a reserve descriptor of its own per loop the first time a
  // stream is made on it (for uv_listen's EMFILE handling, unused here).
  // Make that happen now rather than at some first session, so that the
  // process's descriptor count is steady from start-up on.
  auto* primer = new uv_tcp_t;
  uv_tcp_init(&loop_, primer);
  uv_close(reinterpret_cast<uv_handle_t*>(primer),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
  buildLookup();
}

void Worker::buildLookup() {
  const LookupConfig& lookup = config_->config.lookup;
  if (lookup_ != nullptr) {
    retired_lookups_.push_back(std::move(lookup_));
  }
  lookup_.reset();
  if (lookup.kind != LookupKind::kNone) {
    lookup_ = std::make_shared<LookupStage>(lookup_loop_, makeDirectoryLookup(lookup, lookup_loop_),
                                            lookup, shared_.lookup.stats);
  }
  releaseRetiredLookups();
}

void Worker::releaseRetiredLookups() {
  // Only the worker destroys a stage, never from inside a lookup callback:
  // here (reconfigure, a session's end) once no session holds it.
  std::erase_if(retired_lookups_,
                [](const std::shared_ptr<LookupStage>& stage) { return stage.use_count() == 1; });
}

std::size_t Worker::flushLookupCache(const std::string& user) {
  if (lookup_ == nullptr) {
    return 0;
  }
  return user.empty() ? lookup_->cache().flushAll() : lookup_->cache().flushUser(user);
}

Worker::~Worker() {
  if (thread_.joinable()) {
    thread_.join();
  }
  uv_loop_close(&loop_);
  if (reserve_fd_ >= 0) {
    ::close(reserve_fd_);
  }
}

bool Worker::bindListeners(std::string& error) {
  for (const ListenConfig& listen : config_->config.listen) {
    ListenSocket socket = ListenSocket::open(listen.address, error);
    if (!socket.valid()) {
      return false;
    }
    if (!addListener(listen.address.text(), std::move(socket), error)) {
      return false;
    }
  }
  return true;
}

bool Worker::addListener(std::string address, ListenSocket socket, std::string& error) {
  auto* listener = new Listener{};
  if (int rc = uv_poll_init(&loop_, &listener->poll, socket.fd()); rc != 0) {
    error = fmt::format("cannot listen on {}: {}", address, uv_strerror(rc));
    delete listener;
    return false;  // `socket` closes the descriptor
  }
  listener->worker = this;
  listener->fd = socket.release();
  listener->address = std::move(address);
  listener->poll.data = listener;
  listeners_.push_back(listener);
  if (!accept_paused_) {
    uv_poll_start(&listener->poll, UV_READABLE, &Worker::onListenerReadable);
  }
  return true;
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

void Worker::reconfigure(RuntimeConfigPtr config, ListenerUpdate update) {
  if (stopping_) {
    return;  // listeners are closed for good; `update` closes its sockets
  }
  for (auto& [address, socket] : update.added) {
    std::string error;
    if (!addListener(address, std::move(socket), error)) {
      // Bound and listening on the control thread, so this is not expected;
      // the other workers' sockets on the address still serve it.
      logging::log(logging::Level::kError, "worker", "worker {}: {}", index_, error);
    }
  }
  for (const std::string& address : update.removed) {
    for (auto it = listeners_.begin(); it != listeners_.end();) {
      if ((*it)->address == address) {
        closeListener(*it);
        it = listeners_.erase(it);
      } else {
        ++it;
      }
    }
  }
  const bool lookup_changed = !(config->config.lookup == config_->config.lookup);
  config_ = std::move(config);
  if (lookup_changed) {
    buildLookup();
  }
  backend_pool_.configure(config_);
}

void Worker::start() {
  post([](Worker& w) { w.backend_pool_.configure(w.config_); });
  thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
}

void Worker::join() {
  if (thread_.joinable()) {
    thread_.join();
  }
}

void Worker::post(std::function<void(Worker&)> fn) {
  tasks_.post([this, fn = std::move(fn)] { fn(*this); });
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

TimerFactory Worker::timerFactory() {
  return [this](std::function<void()> callback) { return createTimer(std::move(callback)); };
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

std::chrono::steady_clock::time_point Worker::now() {
  return std::chrono::steady_clock::now();
}

void Worker::releaseIdleBuffers() {
  const auto now = this->now();
  for (auto& [session, ip] : sessions_) {
    session->releaseIdleBuffers(now, kIdleSweep);
  }
}

TimerPtr Worker::createTimer(std::function<void()> callback) {
  return std::make_unique<UvTimer>(&loop_, std::move(callback));
}

Transport* Worker::connectBackend(const BackendConfig& backend, TransportHandler* handler) {
  sockaddr_storage address;
  toSockaddr(backend.address, address);
  return UvTcpTransport::connect(&loop_, reinterpret_cast<const sockaddr*>(&address), pool_,
                                 handler);
}

Transport* Worker::connectBackendTls(const BackendConfig& backend,
                                     std::shared_ptr<const ClientTlsContext> tls,
                                     TransportHandler* handler, std::string preamble) {
  if (!tls) {
    return nullptr;
  }
  sockaddr_storage address;
  toSockaddr(backend.address, address);
  Transport* plain =
      UvTcpTransport::connect(&loop_, reinterpret_cast<const sockaddr*>(&address), pool_, nullptr);
  return TlsTransport::client(plain, std::move(tls), timerFactory(),
                              config_->config.timeouts.tls_handshake, pool_, false, handler,
                              std::move(preamble));
}

Transport* Worker::startServerTls(Transport* plain, std::shared_ptr<const ServerTlsContext> tls) {
  if (!tls) {
    return nullptr;
  }
  stats_.connections_tls.add();
  return TlsTransport::server(plain, std::move(tls), timerFactory(),
                              config_->config.timeouts.tls_handshake, pool_);
}

Transport* Worker::startCompression(Transport* plain) {
  return DeflateTransport::create(plain, timerFactory(), pool_);
}

Transport* Worker::startClientTls(Transport* plain, std::shared_ptr<const ClientTlsContext> tls,
                                  TransportHandler* handler) {
  if (!tls) {
    return nullptr;
  }
  return TlsTransport::client(plain, std::move(tls), timerFactory(),
                              config_->config.timeouts.tls_handshake, pool_, true, handler);
}

void Worker::sessionEnded(Session* session) {
  auto it = sessions_.find(session);
  if (it != sessions_.end()) {
    limiter_.release(it->second);
    sessions_.erase(it);
  }
  shared_.connections.fetch_sub(1, std::memory_order_relaxed);
  stats_.connections_current.sub();
  // Called from the session's own close callback: it is deleted on the
  // loop's next turn (uv_idle), once that callback has returned.
  ended_.push_back(session);
  if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&reaper_)) == 0) {
    uv_idle_start(&reaper_, [](uv_idle_t* idle) { static_cast<Worker*>(idle->data)->reapEnded(); });
  }
  maybeStop();
}

void Worker::reapEnded() {
  uv_idle_stop(&reaper_);
  std::vector<Session*> ended;
  ended.swap(ended_);
  for (Session* session : ended) {
    delete session;
  }
  if (!retired_lookups_.empty()) {
    releaseRetiredLookups();  // the sessions that held a retired stage are gone
  }
}

void Worker::beginShutdown(std::string reason) {
  if (stopping_) {
    return;
  }
  stopping_ = true;
  backend_pool_.shutdown();
  for (Listener* listener : listeners_) {
    closeListener(listener);
  }
  listeners_.clear();
  uv_timer_stop(&accept_resume_timer_);
  // Connections still reading a PROXY header have no session to say BYE.
  std::vector<InboundProxyReader*> readers(readers_.begin(), readers_.end());
  for (InboundProxyReader* reader : readers) {
    reader->abort();
  }
  // Copy: requestBye() never ends a session synchronously, but be safe.
  std::vector<Session*> sessions;
  for (auto& [session, ip] : sessions_) {
    sessions.push_back(session);
  }
  for (Session* session : sessions) {
    session->requestBye(reason, EndReason::kShutdown);
  }
  shutdown_timer_ = new uv_timer_t;
  uv_timer_init(&loop_, shutdown_timer_);
  shutdown_timer_->data = this;
  uv_timer_start(
      shutdown_timer_,
      [](uv_timer_t* t) {
        auto* w = static_cast<Worker*>(t->data);
        std::vector<Session*> left;
        for (auto& [session, ip] : w->sessions_) {
          left.push_back(session);
        }
        if (!left.empty()) {
          logging::log(logging::Level::kWarn, "worker",
                       "worker {}: {} sessions still busy at the shutdown bound; closing them",
                       w->index_, left.size());
        }
        for (Session* session : left) {
          session->abort(EndReason::kShutdownTimeout);
        }
      },
      static_cast<std::uint64_t>(config_->config.timeouts.shutdown.count()), 0);
  maybeStop();
}

void Worker::moveSessions(const std::string& backend) {
  std::vector<Session*> moving;
  for (auto& [session, ip] : sessions_) {
    if (session->state() == SessionState::kRelay && session->backendName() == backend) {
      moving.push_back(session);
    }
  }
  for (Session* session : moving) {
    session->requestBye("[UNAVAILABLE] Mailbox server is being drained, please reconnect.",
                        EndReason::kMovedOffDrained);
  }
}

std::size_t Worker::byeUsers(const std::vector<std::string>& users) {
  std::vector<Session*> held;
  for (auto& [session, ip] : sessions_) {
    if (std::find(users.begin(), users.end(), normaliseUser(session->user())) != users.end()) {
      held.push_back(session);
    }
  }
  for (Session* session : held) {
    session->requestBye("[UNAVAILABLE] Your mailbox is being moved, please reconnect later.",
                        EndReason::kUserHeld);
  }
  return held.size();
}

std::vector<SessionInfo> Worker::listSessions(const SessionFilter& filter) {
  std::vector<SessionInfo> out;
  auto t = now();
  for (auto& [session, ip] : sessions_) {
    SessionInfo info = session->info(t);
    if (filter.matches(info)) {
      out.push_back(std::move(info));
    }
  }
  return out;
}

std::size_t Worker::kick(const SessionFilter& filter) {
  std::vector<Session*> kicked;
  auto t = now();
  for (auto& [session, ip] : sessions_) {
    if (filter.matches(session->info(t))) {
      kicked.push_back(session);
    }
  }
  for (Session* session : kicked) {
    session->kick();
  }
  return kicked.size();
}

void Worker::maybeStop() {
  if (!stopping_ || !sessions_.empty() || !readers_.empty()) {
    return;
  }
  if (proxy_refused_flush_) {
    proxy_refused_flush_.reset();
    std::uint64_t count = shared_.proxy_refused.drain();
    if (count > 0) {
      logging::log(logging::Level::kWarn, "worker",
                   "proxy_protocol: {} more connection{} closed without greeting", count,
                   count == 1 ? "" : "s");
    }
  }
  if (shutdown_timer_ != nullptr) {
    uv_timer_stop(shutdown_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(shutdown_timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    shutdown_timer_ = nullptr;
  }
  if (!timers_closed_) {
    timers_closed_ = true;
    // No session is left to wait for an answer; the stage's connections
    // (a Redis connection stays open) must close for the loop to end.
    lookup_.reset();
    retired_lookups_.clear();
    // A held-back count is reported now rather than lost.
    std::uint64_t count = shared_.accept_refused.drain();
    if (count > 0) {
      noteRefused(count, "accept", last_accept_error_, true);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&accept_resume_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&throttle_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&idle_sweep_), nullptr);
    // Close callbacks run after this turn's callbacks: the last sessions
    // are deleted there, outside their own.
    uv_close(reinterpret_cast<uv_handle_t*>(&reaper_),
             [](uv_handle_t* h) { static_cast<Worker*>(h->data)->reapEnded(); });
  }
  tasks_.close();
}

}  // namespace portico::proxy
