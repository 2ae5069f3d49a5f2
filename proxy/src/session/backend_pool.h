// BackendPool: per worker and backend, a few backend connections opened
// and greeted ahead of logins ([backend_pool]), so that a client's LOGIN
// costs the backend one round trip instead of connect + greeting + login.
//
// A pooled connection has run BackendLoginClient up to kReady: greeting,
// STARTTLS and CAPABILITY when the backend asks for them, nothing the
// client could be told apart by (the forwarded ID and the login follow
// once a session takes it). A backend that needs a PROXY header gets no
// pool: the header names the client, unknown ahead of the login.
//
// Bounded: at most `size` ready or opening per backend and worker;
// after a failed open the next waits (PoolPlan's backoff). A drained
// backend gets no refills and its connections are closed; so does one
// whose connection closes, speaks or outlives idle_timeout while ready.
// A session that finds a taken connection dead connects afresh
// (Session::retryWithoutPool): the client does not notice.
//
// Runs on the worker's loop; IO through the SessionHost's seams.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_set>
#include <vector>

#include "net_types.h"
#include "portico/backend_login.h"
#include "runtime.h"

namespace portico::proxy {

using parser::BackendLoginClient;
using parser::BackendLoginEvent;
using parser::BackendLoginEventType;
using parser::BackendLoginParams;

class SessionHost;

// One backend's pool, as numbers (sans-IO): how many connections to open
// now, and when to try again after failures.
class PoolPlan {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kFirstBackoff{250};
  static constexpr std::chrono::milliseconds kMaxBackoff{30'000};

  // Connections to start opening now to reach `target` ready ones, those
  // already opening included (so never more than `target` connects in
  // flight: a refill is no connect storm); none while backing off after a
  // failure. A login-only burst drains the pool as fast as logins come, so
  // the whole shortfall is opened at once rather than a few at a time.
  std::size_t toOpen(std::size_t target, Clock::time_point now) const;
  void opening() { ++connecting_; }
  // An opening connection is ready: failures are forgotten.
  void opened();
  // An opening connection failed: the next waits kFirstBackoff, doubled per
  // failure in a row up to kMaxBackoff.
  void failed(Clock::time_point now);
  // A ready connection the backend closed or spoke on: counts as a failure
  // too, so a backend that closes every connection is not refilled in a loop.
  void readyLost(Clock::time_point now);
  // An opening connection was closed by the pool (drain, reload).
  void abandoned();
  // A ready connection was taken, expired or lost.
  void readyGone();

  std::size_t ready() const { return ready_; }
  std::size_t connecting() const { return connecting_; }
  std::uint32_t failures() const { return failures_; }
  Clock::time_point retryAt() const { return retry_at_; }

 private:
  void backoff(Clock::time_point now);

  std::size_t ready_ = 0;
  std::size_t connecting_ = 0;
  std::uint32_t failures_ = 0;
  Clock::time_point retry_at_{};
};

// A taken connection: the session becomes its handler and resumes `login`.
struct PooledBackend {
  Transport* transport = nullptr;
  std::unique_ptr<BackendLoginClient> login;  // in kReady
};

class BackendPool {
 public:
  using Clock = std::chrono::steady_clock;

  explicit BackendPool(SessionHost& host);
  ~BackendPool();
  BackendPool(const BackendPool&) = delete;
  BackendPool& operator=(const BackendPool&) = delete;

  // (Re)starts the pools under `config`, at the worker's start and on every
  // reload: connections made under the previous snapshot are closed.
  void configure(RuntimeConfigPtr config);
  // A ready connection to backend `index` of `config` (the session's
  // snapshot), now reporting to `handler`; nullopt when there is none.
  // Counts a hit or a miss. A miss starts the refill at once; a hit leaves
  // it to loginDone(), so the replacement's connect, greeting and
  // CAPABILITY do not compete with the login on the backend (and on this
  // worker) while the client waits for it.
  std::optional<PooledBackend> take(const RuntimeConfig& config, std::size_t index,
                                    TransportHandler* handler);
  // The connection a session took from backend `index` (under `config`)
  // has answered the login or failed: opens its replacement. A session
  // that ends before that leaves the refill to the next tick.
  void loginDone(const RuntimeConfig& config, std::size_t index);
  // Closes every pooled connection and opens none again.
  void shutdown();

  // Whether backend `index` of the current snapshot may have a pool.
  bool eligible(std::size_t index) const;

 private:
  struct Entry;
  struct Slot {
    PoolPlan plan;
    std::vector<Entry*> ready;  // oldest first
  };

  void tick();
  void armTick();
  void refill(std::size_t index);
  void open(std::size_t index);
  // The pool closes `entry`; `failure`: it is given up on (backoff), not
  // merely no longer wanted.
  void close(Entry* entry, bool failure = false);
  void becameReady(Entry* entry);
  // Takes `entry` out of its slot's numbers (and ready list).
  void forget(Entry* entry, bool failure);
  void entryClosed(Entry* entry);
  BackendStats& stats(std::size_t index);

  SessionHost& host_;
  RuntimeConfigPtr config_;
  std::vector<Slot> slots_;  // per backend index of config_
  std::unordered_set<Entry*> entries_;
  std::uint64_t generation_ = 0;  // bumped by configure(): older entries are closing
  TimerPtr timer_;
  bool stopped_ = false;
};

}  // namespace portico::proxy
