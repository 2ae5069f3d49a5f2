// A worker: one thread, one libuv loop, its own SO_REUSEPORT listeners and
// the sessions it accepted. Nothing on a worker's data path takes a lock;
// the control thread reaches it only through post() (a mutex-guarded queue
// drained on the worker's loop after a uv_async_send).
#pragma once

#include <uv.h>

#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "inbound_proxy.h"
#include "lookup/lookup_stage.h"
#include "net_types.h"
#include "runtime.h"
#include "session/backend_pool.h"
#include "session/session.h"

namespace portico::proxy {

// Connections per client IP across all workers. Taken once per accept.
class IpLimiter {
 public:
  bool acquire(const std::string& ip, std::uint32_t limit);
  void release(const std::string& ip);

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::uint32_t> counts_;
};

// A bound, listening TCP socket (SO_REUSEPORT, non-blocking) not yet
// handed to a worker; closes it unless handed over. Made on the control
// thread so that a reload which cannot bind a new address is refused before
// any worker changes anything.
class ListenSocket {
 public:
  ListenSocket() = default;
  // Binds and listens on `address`.
  static Result<ListenSocket> open(const HostPort& address);
  ListenSocket(ListenSocket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ListenSocket& operator=(ListenSocket&& other) noexcept;
  ListenSocket(const ListenSocket&) = delete;
  ListenSocket& operator=(const ListenSocket&) = delete;
  ~ListenSocket();
  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

// One worker's share of a reload: sockets for added addresses (address ->
// socket) and the addresses to close.
struct ListenerUpdate {
  std::vector<std::pair<std::string, ListenSocket>> added;
  std::vector<std::string> removed;
};

// Accepting: each worker accepts with accept4() on its own listening
// sockets (watched with uv_poll, not uv_listen: libuv's own EMFILE handling
// closes pending connections silently and never tells the caller). When
// the process is out of file descriptors, the worker frees its reserve
// descriptor, accepts, writes `* BYE [UNAVAILABLE]`, closes and takes the
// reserve back; with no reserve left it pauses accepting briefly (the
// connections wait in the backlog). Both are logged at most once a second
// with a count (ProcessState::accept_refused / accept_paused).
class Worker final : public SessionHost, private InboundProxyHost {
 public:
  Worker(std::size_t index, RuntimeConfigPtr config, ProcessState& shared, IpLimiter& limiter);
  ~Worker() override;

  // Binds this worker's listeners (on the calling thread, before start()).
  Status bindListeners();
  void start();
  void join();
  // Runs `fn` on the worker's loop. Thread-safe.
  void post(std::function<void(Worker&)> fn);

  // Control-side operations, each run on the worker's loop via post().
  // A reload: the new snapshot and this worker's listener changes, applied
  // together so that no connection is served with a mismatched entry.
  void reconfigure(RuntimeConfigPtr config, ListenerUpdate update);
  void beginShutdown(std::string reason);
  // Sends the sessions relayed to `backend` a BYE between commands.
  void moveSessions(const std::string& backend);
  // Fleet user holds: the sessions of these (normalised) users get a BYE
  // between commands; how many.
  std::size_t byeUsers(const std::vector<std::string>& users);
  // Admin queries, run on the worker's loop.
  std::vector<SessionInfo> listSessions(const SessionFilter& filter);
  std::size_t kick(const SessionFilter& filter);
  // porticoctl lookup flush [--user U]: cached directory answers dropped
  // (all, or the user's); how many.
  std::size_t flushLookupCache(const std::string& user);

  const WorkerStats& workerStats() const { return stats_; }

  // SessionHost
  std::chrono::steady_clock::time_point now() override;
  TimerPtr createTimer(std::function<void()> callback) override;
  // The idle sweep's work (see idle_sweep_).
  void releaseIdleBuffers();
  Transport* connectBackend(const BackendConfig& backend, TransportHandler* handler) override;
  Transport* connectBackendTls(const BackendConfig& backend,
                               std::shared_ptr<const ClientTlsContext> tls,
                               TransportHandler* handler, std::string preamble) override;
  Transport* startServerTls(Transport* plain, std::shared_ptr<const ServerTlsContext> tls) override;
  Transport* startCompression(Transport* plain) override;
  bool compressionAvailable() const override { return true; }
  Transport* startClientTls(Transport* plain, std::shared_ptr<const ClientTlsContext> tls,
                            TransportHandler* handler) override;
  std::optional<PooledBackend> takePooledBackend(const RuntimeConfig& config, std::size_t index,
                                                 TransportHandler* handler) override {
    return backend_pool_.take(config, index, handler);
  }
  void pooledLoginDone(const RuntimeConfig& config, std::size_t index) override {
    backend_pool_.loginDone(config, index);
  }
  WorkerStats& stats() override { return stats_; }
  ProcessState& shared() override { return shared_; }
  std::size_t index() const override { return index_; }
  void sessionEnded(Session* session) override;
  std::shared_ptr<LookupStage> lookupStage() override { return lookup_; }

 private:
  struct Listener {
    uv_poll_t poll;  // first: the handle's address is the Listener's
    Worker* worker;
    int fd;
    std::string address;  // key into RuntimeConfig::listener_index
  };
  static void onListenerReadable(uv_poll_t* handle, int status, int events);
  Status addListener(std::string address, ListenSocket socket);
  void closeListener(Listener* listener);
  void acceptPending(Listener& listener);
  void serve(Listener& listener, int fd);
  // After accept (and the PROXY header on a proxy_protocol listener): the
  // per-IP limit, TLS, the session. `rest`: bytes already read past the
  // header, handed to the session (or the TLS handshake).
  void admit(const std::string& listener, Transport* transport, Chunk rest);
  // InboundProxyHost
  void headerRead(InboundProxyReader* reader, Transport* transport, const sockaddr_storage& client,
                  const sockaddr_storage& local, Chunk rest) override;
  void closed(InboundProxyReader* reader) override;
  void armProxyRefusalFlush();
  bool refuseWithReserve(Listener& listener, int error);
  void pauseAccepting(Listener& listener, int error);
  void resumeAccepting();
  void noteRefused(std::uint64_t count, const std::string& where, int error, bool summary);
  void armThrottleFlush();
  TimerFactory timerFactory();
  void reject(Transport* transport, std::string_view bye);
  void maybeStop();
  // (Re)builds the directory lookup stage for config_ ([lookup]); a stage
  // replaced by a reload stays until its last session lets go of it.
  void buildLookup();
  void releaseRetiredLookups();

  std::size_t index_;
  RuntimeConfigPtr config_;
  ProcessState& shared_;
  IpLimiter& limiter_;
  uv_loop_t loop_;
  TaskQueue tasks_;  // functions other threads run on this loop
  std::vector<Listener*> listeners_;
  std::unordered_map<Session*, std::string> sessions_;  // session -> client IP
  // Connections on proxy_protocol listeners still reading their header;
  // each counts in ProcessState::connections.
  std::unordered_set<InboundProxyReader*> readers_;
  TimerPtr proxy_refused_flush_;  // reports refusals LogThrottle held back
  BufferPool pool_;
  WorkerStats stats_;
  std::mt19937_64 ids_;
  std::thread thread_;
  bool stopping_ = false;
  uv_timer_t* shutdown_timer_ = nullptr;
  int reserve_fd_ = -1;             // /dev/null, given up to answer one connection at EMFILE
  bool accept_paused_ = false;      // out of descriptors and reserve: listeners not polled
  int last_accept_error_ = 0;       // errno of the last EMFILE/ENFILE, for the summary line
  uv_timer_t accept_resume_timer_;  // ends a pause
  uv_timer_t throttle_timer_;       // reports what LogThrottle held back
  // Every kIdleSweep: sessions quiet that long give their framers' buffers
  // back (Session::releaseIdleBuffers), so an idle session costs less.
  uv_timer_t idle_sweep_;
  static constexpr std::chrono::milliseconds kIdleSweep{10'000};
  // Sessions that ended are deleted here, on the loop's next turn, never
  // inside the callback in which they ended.
  uv_idle_t reaper_;
  std::vector<Session*> ended_;
  void reapEnded();
  bool timers_closed_ = false;
  UvLookupLoop lookup_loop_{&loop_};
  std::shared_ptr<LookupStage> lookup_;  // null for kind = "none"
  std::vector<std::shared_ptr<LookupStage>> retired_lookups_;
  BackendPool backend_pool_{*this};  // [backend_pool]; its timer is made on the loop
};

}  // namespace portico::proxy
