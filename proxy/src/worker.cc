// Worker: one thread and libuv loop, its sessions and their lookup stage.
// The accept path is in worker_accept.cc, what other threads ask of a
// worker and its shutdown in worker_control.cc.
#include "worker.h"

#include <netinet/in.h>

#include "net_types.h"
#include "portico/logging.h"
#include "worker_internal.h"

namespace portico::proxy {

using namespace worker_detail;  // NOLINT: the worker's own helpers

Worker::Worker(std::size_t index, RuntimeConfigPtr config, ProcessState& shared, IpLimiter& limiter)
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

void Worker::reconfigure(RuntimeConfigPtr config, ListenerUpdate update) {
  if (stopping_) {
    return;  // listeners are closed for good; `update` closes its sockets
  }
  for (auto& [address, socket] : update.added) {
    if (Status added = addListener(address, std::move(socket)); !added.ok()) {
      // Bound and listening on the control thread, so this is not expected;
      // the other workers' sockets on the address still serve it.
      logging::log(logging::Level::kError, "worker", "worker {}: {}", index_, added.message());
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

TimerFactory Worker::timerFactory() {
  return [this](std::function<void()> callback) { return createTimer(std::move(callback)); };
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

}  // namespace portico::proxy
