// Fakes for the session seams (transport.h, session.h), so the session
// state machine runs in unit tests with no sockets, no libuv and no real
// time.
//
// FakeLoop stands in for the worker's event loop: a steady clock that moves
// only when the test calls advance(), timers that fire when the clock
// reaches their deadline, and a queue of deferred work that runPending()
// delivers (the "next loop iteration").
//
// FakeTransport honours the Transport contract: onClosed() is never called
// from inside close(), shutdown() or write(); it is queued and delivered by
// runPending(). After its onClosed() a transport counts as freed. It stays
// allocated (the FakeHost owns every transport until the test ends, so a
// buggy session cannot cause undefined behaviour), but any later call to it
// is recorded as a violation, which the test checks.
//
// FakeHost implements SessionHost over a FakeLoop. connectBackend() hands out
// FakeTransports the test then scripts (connectOk(), deliver(), ...);
// sessionEnded() deletes the session, as the worker does.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "net_types.h"
#include "session/session.h"

namespace portico::proxy {

// Printable states in test failures.
inline void PrintTo(SessionState state, std::ostream* os) {
  *os << sessionStateName(state);
}

namespace fakes {

class FakeTimer;

class FakeLoop {
 public:
  using Clock = std::chrono::steady_clock;

  FakeLoop() = default;
  FakeLoop(const FakeLoop&) = delete;
  FakeLoop& operator=(const FakeLoop&) = delete;

  Clock::time_point now() const { return now_; }

  // Deferred work, run by runPending() in the order it was posted.
  void post(std::function<void()> task) { pending_.push_back(std::move(task)); }
  bool hasPending() const { return !pending_.empty(); }
  // Runs up to `max` tasks, including those the tasks themselves post.
  // Returns how many ran.
  std::size_t runPending(std::size_t max = std::numeric_limits<std::size_t>::max()) {
    std::size_t ran = 0;
    while (ran < max && !pending_.empty()) {
      std::function<void()> task = std::move(pending_.front());
      pending_.pop_front();
      task();
      ++ran;
    }
    return ran;
  }

  // Moves the clock forward by `delay`. Each timer whose deadline is passed
  // fires at its own deadline (now() reads the deadline inside the
  // callback), earliest first, with pending work run after each.
  inline void advance(Clock::duration delay);

  // Timers currently armed.
  inline std::size_t armedTimers() const;

  void violation(std::string what) { violations_.push_back(std::move(what)); }
  const std::vector<std::string>& violations() const { return violations_; }

 private:
  friend class FakeTimer;
  inline FakeTimer* earliestDue(Clock::time_point limit) const;

  // Not zero, so a session that confuses "unset" with "now" shows up.
  Clock::time_point now_ = Clock::time_point(std::chrono::hours(100));
  std::deque<std::function<void()>> pending_;
  std::vector<FakeTimer*> timers_;
  std::vector<std::string> violations_;
};

class FakeTimer final : public Timer {
 public:
  FakeTimer(FakeLoop& loop, std::function<void()> callback)
      : loop_(loop), callback_(std::move(callback)) {
    loop_.timers_.push_back(this);
  }
  ~FakeTimer() override { std::erase(loop_.timers_, this); }

  void arm(std::chrono::milliseconds delay) override {
    deadline_ = loop_.now() + delay;
    ++arms_;
  }
  void cancel() override { deadline_.reset(); }

  const std::optional<FakeLoop::Clock::time_point>& deadline() const { return deadline_; }
  int arms() const { return arms_; }

  void fire() {
    deadline_.reset();
    // A copy: the callback may end the session, which destroys this timer.
    std::function<void()> callback = callback_;
    callback();
  }

 private:
  FakeLoop& loop_;
  std::function<void()> callback_;
  std::optional<FakeLoop::Clock::time_point> deadline_;
  int arms_ = 0;
};

inline FakeTimer* FakeLoop::earliestDue(Clock::time_point limit) const {
  FakeTimer* best = nullptr;
  for (FakeTimer* timer : timers_) {
    const auto& deadline = timer->deadline();
    if (deadline && *deadline <= limit && (best == nullptr || *deadline < *best->deadline())) {
      best = timer;
    }
  }
  return best;
}

inline void FakeLoop::advance(Clock::duration delay) {
  const Clock::time_point target = now_ + delay;
  runPending();
  while (FakeTimer* timer = earliestDue(target)) {
    now_ = std::max(now_, *timer->deadline());
    timer->fire();
    runPending();
  }
  now_ = target;
}

inline std::size_t FakeLoop::armedTimers() const {
  return static_cast<std::size_t>(
      std::count_if(timers_.begin(), timers_.end(),
                    [](const FakeTimer* t) { return t->deadline().has_value(); }));
}

inline sockaddr_storage ipv4Address(const char* ip, std::uint16_t port) {
  sockaddr_storage out;
  std::memset(&out, 0, sizeof(out));
  auto* in = reinterpret_cast<sockaddr_in*>(&out);
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  inet_pton(AF_INET, ip, &in->sin_addr);
  return out;
}

class FakeTransport final : public Transport {
 public:
  FakeTransport(FakeLoop& loop, std::string name, sockaddr_storage peer, sockaddr_storage local)
      : loop_(loop), name_(std::move(name)), peer_(peer), local_(local) {}

  // ---- Transport, as the session sees it.
  void setHandler(TransportHandler* handler) override {
    check("setHandler");
    handler_ = handler;
  }
  void write(Chunk chunk) override {
    check("write");
    record(chunk.view());
  }
  void write(std::string_view bytes) override {
    check("write");
    record(bytes);
  }
  std::size_t queuedBytes() const override {
    check("queuedBytes");
    return queued_;
  }
  void setHighWatermark(std::size_t bytes) override {
    check("setHighWatermark");
    high_watermark_ = bytes;
  }
  void pauseReading() override {
    check("pauseReading");
    paused_ = true;
  }
  void resumeReading() override {
    check("resumeReading");
    paused_ = false;
    if (!held_.empty()) {
      // Bytes the kernel buffered while paused arrive on a later iteration.
      loop_.post([this] { releaseHeld(); });
    }
  }
  void shutdown() override {
    check("shutdown");
    shutdown_called_ = true;
    closeSoon("shutdown");
  }
  void close() override {
    check("close");
    close_called_ = true;
    closeSoon("closed");
  }
  void setCarriesSecrets(bool on) override {
    check("setCarriesSecrets");
    carries_secrets_ = on;
  }
  void acknowledgeNow() override {
    check("acknowledgeNow");
    ++acks_now_;
  }
  const sockaddr_storage& peerAddress() const override { return peer_; }
  const sockaddr_storage& localAddress() const override { return local_; }

  // ---- What the session did.
  const std::string& name() const { return name_; }
  // Everything written before close()/shutdown(), in order.
  const std::string& written() const { return written_; }
  // Returns what was written since the last call and forgets it.
  std::string takeWritten() {
    std::string out = written_.substr(taken_);
    taken_ = written_.size();
    return out;
  }
  // Writes after close() or shutdown(): dropped by a real transport.
  const std::string& writtenAfterClose() const { return written_late_; }
  // The part of those made after the session itself called close() or
  // shutdown() (writes between a peer's close and its onClosed() are
  // unavoidable and harmless).
  const std::string& writtenAfterOwnClose() const { return written_after_own_close_; }
  bool paused() const { return paused_; }
  bool carriesSecrets() const { return carries_secrets_; }
  int acksNow() const { return acks_now_; }  // acknowledgeNow() calls
  bool shutdownCalled() const { return shutdown_called_; }
  bool closeCalled() const { return close_called_; }
  bool closing() const { return close_queued_; }
  bool closed() const { return closed_; }  // onClosed() was delivered
  std::size_t highWatermark() const { return high_watermark_; }
  TransportHandler* handler() const { return handler_; }

  // ---- The peer and the network, scripted by the test. Each call is one
  // loop event; none runs pending work itself unless it says so.
  void connectOk() {
    if (usable("connectOk")) {
      handler_->onConnected(this, true, "");
    }
  }
  // A failed connect: onConnected(false), then onClosed() on the next iteration.
  void connectFail(std::string error = "connection refused") {
    if (usable("connectFail")) {
      handler_->onConnected(this, false, error);
      closeSoon(error);
    }
  }
  // Bytes from the peer as one read. Held while reading is paused, as the
  // kernel would, and delivered after resumeReading().
  void deliver(std::string_view bytes) {
    if (!usable("deliver")) {
      return;
    }
    if (paused_ || !held_.empty()) {
      held_.append(bytes);
      return;
    }
    handler_->onData(this, Chunk::copyOf(bytes));
  }
  // One read per byte.
  void deliverBytewise(std::string_view bytes) {
    for (char c : bytes) {
      deliver(std::string_view(&c, 1));
    }
  }
  const std::string& held() const { return held_; }
  // The peer closed or the connection failed: onClosed() on the next iteration.
  void peerClose(std::string reason = "end of stream") {
    if (usable("peerClose")) {
      closeSoon(std::move(reason));
    }
  }
  // What queuedBytes() reports from now on.
  void setQueuedBytes(std::size_t bytes) { queued_ = bytes; }
  // The write queue fell below the low watermark.
  void drain() {
    queued_ = 0;
    if (usable("drain")) {
      handler_->onDrained(this);
    }
  }

 private:
  void record(std::string_view bytes) {
    if (close_called_ || shutdown_called_) {
      written_after_own_close_.append(bytes);
    }
    if (close_queued_) {
      written_late_.append(bytes);
    } else {
      written_.append(bytes);
    }
  }
  void check(const char* what) const {
    if (closed_) {
      loop_.violation(name_ + ": " + what + "() after onClosed()");
    }
  }
  bool usable(const char* what) {
    if (closed_ || close_queued_) {
      loop_.violation(name_ + ": test scripted " + what + "() on a closing transport");
      return false;
    }
    if (handler_ == nullptr) {
      loop_.violation(name_ + ": " + what + "() with no handler");
      return false;
    }
    return true;
  }
  void releaseHeld() {
    if (paused_ || closed_ || close_queued_ || held_.empty()) {
      return;
    }
    std::string bytes = std::move(held_);
    held_.clear();
    handler_->onData(this, Chunk::copyOf(bytes));
  }
  void closeSoon(std::string reason) {
    if (close_queued_) {
      return;  // idempotent: one onClosed()
    }
    close_queued_ = true;
    loop_.post([this, reason = std::move(reason)] {
      closed_ = true;
      if (handler_ != nullptr) {
        handler_->onClosed(this, reason);
      }
    });
  }

  FakeLoop& loop_;
  std::string name_;
  sockaddr_storage peer_;
  sockaddr_storage local_;
  TransportHandler* handler_ = nullptr;
  std::string written_;
  std::size_t taken_ = 0;
  std::string written_late_;
  std::string written_after_own_close_;
  std::string held_;
  std::size_t queued_ = 0;
  std::size_t high_watermark_ = 0;
  int acks_now_ = 0;
  bool paused_ = false;
  bool carries_secrets_ = true;  // the Transport default
  bool shutdown_called_ = false;
  bool close_called_ = false;
  bool close_queued_ = false;
  bool closed_ = false;
};

class FakeHost final : public SessionHost {
 public:
  struct Connect {
    std::string backend;  // BackendConfig::name
    FakeTransport* transport;
    bool tls = false;      // connectBackendTls(): connectOk() means "handshake done"
    std::string preamble;  // cleartext asked for before the ClientHello
  };

  FakeHost() = default;
  FakeHost(const FakeHost&) = delete;
  FakeHost& operator=(const FakeHost&) = delete;

  // ---- SessionHost
  std::chrono::steady_clock::time_point now() override { return loop_.now(); }
  TimerPtr createTimer(std::function<void()> callback) override {
    ++timers_created_;
    return std::make_unique<FakeTimer>(loop_, std::move(callback));
  }
  Transport* connectBackend(const BackendConfig& backend, TransportHandler* handler) override {
    FakeTransport* transport = newTransport("backend " + backend.name, ipv4Address("10.1.0.1", 143),
                                            ipv4Address("10.0.0.5", 40000));
    transport->setHandler(handler);
    connects_.push_back(Connect{backend.name, transport, false, {}});
    return transport;
  }
  // Implicit TLS as the session sees it: one transport whose connectOk()
  // stands for "connected, preamble sent, handshake done".
  Transport* connectBackendTls(const BackendConfig& backend,
                               std::shared_ptr<const ClientTlsContext> /*tls*/,
                               TransportHandler* handler, std::string preamble) override {
    Transport* transport = connectBackend(backend, handler);
    connects_.back().tls = true;
    connects_.back().preamble = std::move(preamble);
    return transport;
  }
  // COMPRESS: a real DeflateTransport over the fake client, when enabled.
  Transport* startCompression(Transport* plain) override {
    if (!compression_) {
      return nullptr;
    }
    return DeflateTransport::create(
        plain, [this](std::function<void()> callback) { return createTimer(std::move(callback)); },
        pool_);
  }
  bool compressionAvailable() const override { return compression_; }
  std::optional<PooledBackend> takePooledBackend(const RuntimeConfig& config, std::size_t index,
                                                 TransportHandler* handler) override {
    return backend_pool_ != nullptr ? backend_pool_->take(config, index, handler) : std::nullopt;
  }
  void pooledLoginDone(const RuntimeConfig& config, std::size_t index) override {
    if (backend_pool_ != nullptr) {
      backend_pool_->loginDone(config, index);
    }
  }
  WorkerStats& stats() override { return *stats_; }
  ProcessState& shared() override { return *shared_; }
  void sessionEnded(Session* session) override {
    ++ended_;
    delete session;
  }
  std::shared_ptr<LookupStage> lookupStage() override { return lookup_stage_; }

  // ---- For the test.
  FakeLoop& loop() { return loop_; }
  void runPending() { loop_.runPending(); }
  void advance(std::chrono::steady_clock::duration delay) { loop_.advance(delay); }
  // A client connection from 192.0.2.7:50123 to 192.0.2.1:143.
  FakeTransport* newClient() {
    return newTransport("client", ipv4Address("192.0.2.7", 50123), ipv4Address("192.0.2.1", 143));
  }
  const std::vector<Connect>& connects() const { return connects_; }
  FakeTransport* lastBackend() const {
    return connects_.empty() ? nullptr : connects_.back().transport;
  }
  int endedCount() const { return ended_; }
  int timersCreated() const { return timers_created_; }
  // Offer and run COMPRESS=DEFLATE (off by default, as for a host without it).
  void enableCompression() { compression_ = true; }
  BufferPool& pool() { return pool_; }
  // The directory lookup stage sessions get (none by default).
  void setLookupStage(std::shared_ptr<LookupStage> stage) { lookup_stage_ = std::move(stage); }
  const std::vector<std::string>& violations() const { return loop_.violations(); }
  // Sessions take pooled connections from `pool` (none by default).
  void setBackendPool(BackendPool* pool) { backend_pool_ = pool; }

 private:
  FakeTransport* newTransport(std::string name, sockaddr_storage peer, sockaddr_storage local) {
    transports_.push_back(std::make_unique<FakeTransport>(loop_, std::move(name), peer, local));
    return transports_.back().get();
  }

  FakeLoop loop_;
  BufferPool pool_{16 * 1024, 8};  // before transports_: blocks outlive them
  bool compression_ = false;
  std::unique_ptr<WorkerStats> stats_ = std::make_unique<WorkerStats>();
  std::unique_ptr<ProcessState> shared_ = std::make_unique<ProcessState>();
  std::vector<std::unique_ptr<FakeTransport>> transports_;
  std::vector<Connect> connects_;
  int ended_ = 0;
  int timers_created_ = 0;
  BackendPool* backend_pool_ = nullptr;
  // After loop_: its timers go before the loop does.
  std::shared_ptr<LookupStage> lookup_stage_;
};

}  // namespace fakes
}  // namespace portico::proxy
