#include "worker.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include "portico/logging.h"
#include "tls.h"
#include "uv_transport.h"

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

Worker::Worker(std::size_t index, RuntimeConfigPtr config, SharedState& shared, IpLimiter& limiter)
    : index_(index),
      config_(std::move(config)),
      shared_(shared),
      limiter_(limiter),
      mailbox_((uv_loop_init(&loop_), &loop_)),
      ids_(std::random_device{}() ^ (static_cast<std::uint64_t>(index) << 32)) {
  loop_.data = this;
}

Worker::~Worker() {
  if (thread_.joinable()) {
    thread_.join();
  }
  uv_loop_close(&loop_);
}

bool Worker::bindListeners(std::string& error) {
  for (const ListenConfig& listen : config_->config.listen) {
    sockaddr_storage address;
    if (!toSockaddr(listen.address, address)) {
      error = fmt::format("bad listen address {}", listen.address.text());
      return false;
    }
    auto* listener = new Listener{};
    listener->worker = this;
    listener->index = listeners_.size();
    uv_tcp_t* tcp = &listener->tcp;
    uv_tcp_init_ex(&loop_, tcp, address.ss_family);
    tcp->data = listener;
    listeners_.push_back(listener);
    uv_os_fd_t fd;
    uv_fileno(reinterpret_cast<uv_handle_t*>(tcp), &fd);
    int one = 1;
    // Each worker has its own listening socket on the same port; the
    // kernel spreads new connections over them.
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    int rc = uv_tcp_bind(tcp, reinterpret_cast<const sockaddr*>(&address),
                         listen.address.ipv6 ? UV_TCP_IPV6ONLY : 0);
    if (rc == 0) {
      rc = uv_listen(reinterpret_cast<uv_stream_t*>(tcp), 1024, &Worker::onConnection);
    }
    if (rc != 0) {
      error = fmt::format("cannot listen on {}: {}", listen.address.text(), uv_strerror(rc));
      return false;
    }
  }
  return true;
}

void Worker::start() {
  thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
}

void Worker::join() {
  if (thread_.joinable()) {
    thread_.join();
  }
}

void Worker::post(std::function<void(Worker&)> fn) {
  mailbox_.post([this, fn = std::move(fn)] { fn(*this); });
}

void Worker::onConnection(uv_stream_t* server, int status) {
  auto* listener = static_cast<Listener*>(server->data);
  if (status != 0) {
    logging::log(logging::Level::kWarn, "worker", "accept error: {}", uv_strerror(status));
    return;
  }
  listener->worker->accept(*listener);
}

TimerFactory Worker::timerFactory() {
  return [this](std::function<void()> callback) { return createTimer(std::move(callback)); };
}

void Worker::accept(Listener& listener) {
  Transport* transport =
      UvTcpTransport::accept(&loop_, reinterpret_cast<uv_stream_t*>(&listener.tcp), pool_);
  if (transport == nullptr) {
    return;
  }
  const Config& cfg = config_->config;
  std::string ip = ipOf(transport->peerAddress());
  if (stopping_) {
    reject(transport, "* BYE Server shutting down.\r\n");
    return;
  }
  if (shared_.connections.fetch_add(1, std::memory_order_relaxed) >= cfg.limits.max_connections) {
    shared_.connections.fetch_sub(1, std::memory_order_relaxed);
    logging::log(logging::Level::kWarn, "worker", "connection from {} refused: max_connections {}",
                 formatAddress(transport->peerAddress()), cfg.limits.max_connections);
    reject(transport, "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n");
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
  // Listeners are bound once; a reload may have changed their TLS settings
  // (certificates) but not their number.
  const ListenConfig& lc = cfg.listen[std::min(listener.index, cfg.listen.size() - 1)];
  std::shared_ptr<const ServerTlsContext> tls = listener.index < config_->listener_tls.size()
                                                    ? config_->listener_tls[listener.index]
                                                    : nullptr;
  bool implicit = lc.tls == TlsMode::kImplicit && tls != nullptr;
  if (implicit) {
    stats_.connections_tls.add();
    transport =
        TlsTransport::server(transport, tls, timerFactory(), cfg.timeouts.tls_handshake, pool_);
  }
  auto* session = new Session(*this, config_, transport, ids_());
  session->setListener(lc.tls, lc.require_tls, tls, implicit);
  sessions_.emplace(session, std::move(ip));
  session->start();
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
  delete session;
  maybeStop();
}

void Worker::beginShutdown(std::string reason) {
  if (stopping_) {
    return;
  }
  stopping_ = true;
  for (Listener* listener : listeners_) {
    uv_close(reinterpret_cast<uv_handle_t*>(&listener->tcp),
             [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
  }
  listeners_.clear();
  // Copy: requestBye() never ends a session synchronously, but be safe.
  std::vector<Session*> sessions;
  for (auto& [session, ip] : sessions_) {
    sessions.push_back(session);
  }
  for (Session* session : sessions) {
    session->requestBye(reason, "shutdown");
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
          session->abort("shutdown timeout");
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
                        "moved off drained backend");
  }
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
  if (!stopping_ || !sessions_.empty()) {
    return;
  }
  if (shutdown_timer_ != nullptr) {
    uv_timer_stop(shutdown_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(shutdown_timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    shutdown_timer_ = nullptr;
  }
  mailbox_.close();
}

}  // namespace portico::proxy
