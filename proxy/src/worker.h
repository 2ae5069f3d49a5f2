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
#include <vector>

#include "mailbox.h"
#include "runtime.h"
#include "session.h"

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

class Worker final : public SessionHost {
 public:
  Worker(std::size_t index, RuntimeConfigPtr config, SharedState& shared, IpLimiter& limiter);
  ~Worker() override;

  // Binds this worker's listeners (on the calling thread, before start()).
  bool bindListeners(std::string& error);
  void start();
  void join();
  // Runs `fn` on the worker's loop. Thread-safe.
  void post(std::function<void(Worker&)> fn);

  // Control-side operations, each run on the worker's loop via post().
  void setConfig(RuntimeConfigPtr config) { config_ = std::move(config); }
  void beginShutdown(std::string reason);
  // Sends the sessions relayed to `backend` a BYE between commands.
  void moveSessions(const std::string& backend);
  // Admin queries, run on the worker's loop.
  std::vector<SessionInfo> listSessions(const SessionFilter& filter);
  std::size_t kick(const SessionFilter& filter);

  const WorkerStats& workerStats() const { return stats_; }

  // SessionHost
  std::chrono::steady_clock::time_point now() override;
  TimerPtr createTimer(std::function<void()> callback) override;
  Transport* connectBackend(const BackendConfig& backend, TransportHandler* handler) override;
  Transport* connectBackendTls(const BackendConfig& backend,
                               std::shared_ptr<const ClientTlsContext> tls,
                               TransportHandler* handler, std::string preamble) override;
  Transport* startServerTls(Transport* plain, std::shared_ptr<const ServerTlsContext> tls) override;
  Transport* startClientTls(Transport* plain, std::shared_ptr<const ClientTlsContext> tls,
                            TransportHandler* handler) override;
  WorkerStats& stats() override { return stats_; }
  SharedState& shared() override { return shared_; }
  std::size_t index() const override { return index_; }
  void sessionEnded(Session* session) override;

 private:
  static void onConnection(uv_stream_t* server, int status);
  struct Listener {
    uv_tcp_t tcp;  // first: the handle's address is the Listener's
    Worker* worker;
    std::size_t index;
  };
  void accept(Listener& listener);
  TimerFactory timerFactory();
  void reject(Transport* transport, std::string_view bye);
  void maybeStop();

  std::size_t index_;
  RuntimeConfigPtr config_;
  SharedState& shared_;
  IpLimiter& limiter_;
  uv_loop_t loop_;
  Mailbox mailbox_;
  std::vector<Listener*> listeners_;
  std::unordered_map<Session*, std::string> sessions_;  // session -> client IP
  BufferPool pool_;
  WorkerStats stats_;
  std::mt19937_64 ids_;
  std::thread thread_;
  bool stopping_ = false;
  uv_timer_t* shutdown_timer_ = nullptr;
};

}  // namespace portico::proxy
