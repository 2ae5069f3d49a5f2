// BackendPool: pre-connected, greeted backend connections (backend_pool.h).
#include "backend_pool.h"

#include <algorithm>

#include "portico/logging.h"
#include "session.h"

namespace portico::proxy {

using std::chrono::milliseconds;

// ---------------------------------------------------------------------------
// PoolPlan

std::size_t PoolPlan::toOpen(std::size_t target, Clock::time_point now) const {
  if (now < retry_at_ || ready_ + connecting_ >= target) {
    return 0;
  }
  return target - ready_ - connecting_;
}

void PoolPlan::opened() {
  if (connecting_ > 0) {
    --connecting_;
  }
  ++ready_;
  failures_ = 0;
  retry_at_ = {};
}

void PoolPlan::failed(Clock::time_point now) {
  abandoned();
  backoff(now);
}

void PoolPlan::readyLost(Clock::time_point now) {
  readyGone();
  backoff(now);
}

void PoolPlan::backoff(Clock::time_point now) {
  ++failures_;
  milliseconds backoff = kFirstBackoff;
  for (std::uint32_t i = 1; i < failures_ && backoff < kMaxBackoff; ++i) {
    backoff *= 2;
  }
  retry_at_ = now + std::min(backoff, kMaxBackoff);
}

void PoolPlan::abandoned() {
  if (connecting_ > 0) {
    --connecting_;
  }
}

void PoolPlan::readyGone() {
  if (ready_ > 0) {
    --ready_;
  }
}

// ---------------------------------------------------------------------------
// Entry: one pooled connection, from connect to taken or closed.

struct BackendPool::Entry final : TransportHandler {
  enum class Phase : std::uint8_t { kOpening, kReady, kClosing };

  BackendPool& pool;
  std::size_t index;
  std::uint64_t generation;
  Transport* transport = nullptr;
  std::unique_ptr<BackendLoginClient> login;
  Phase phase = Phase::kOpening;
  Clock::time_point since;  // opening started, or ready since

  Entry(BackendPool& p, std::size_t i, std::uint64_t g, Clock::time_point now)
      : pool(p), index(i), generation(g), since(now) {}

  void flush() {
    if (transport != nullptr && !login->output().empty()) {
      transport->write(std::string_view(login->output()));
    }
    login->clearOutput();
  }

  void onConnected(Transport* t, bool ok, std::string_view error) override {
    if (t != transport || !ok || phase == Phase::kClosing) {
      if (!ok) {
        logging::log(logging::Level::kDebug, "pool", "backend connect failed: {}", error);
      }
      return;  // onClosed follows a failure
    }
    if (login && login->state() == BackendLoginClient::State::kTlsHandshake) {
      login->tlsEstablished();
      flush();
      return;
    }
    const BackendConfig& backend = pool.config_->config.backends[index];
    BackendLoginParams params;
    params.starttls = backend.tls == TlsMode::kStarttls;
    params.hold_before_login = true;
    login = std::make_unique<BackendLoginClient>(std::move(params));
  }

  void onData(Transport* t, Chunk chunk) override {
    if (t != transport || phase == Phase::kClosing || !login) {
      return;
    }
    login->feed(chunk.view());
    BackendLoginEvent ev = login->next();
    flush();
    switch (ev.type) {
      case BackendLoginEventType::kNeedMore:
        if (phase == Phase::kOpening && login->state() == BackendLoginClient::State::kReady) {
          pool.becameReady(this);
        }
        return;
      case BackendLoginEventType::kStartTls: {
        std::size_t i = index;
        Transport* plain = transport;
        transport = i < pool.config_->backend_tls.size()
                        ? pool.host_.startClientTls(plain, pool.config_->backend_tls[i], this)
                        : nullptr;
        if (transport == nullptr) {
          transport = plain;
          lost("backend TLS unavailable");
        }
        return;
      }
      default:
        // A ready connection the backend speaks on (a BYE, say) or a
        // greeting it cannot use: never handed to a client.
        lost(ev.type == BackendLoginEventType::kFailed ? ev.why : "unexpected backend line");
        return;
    }
  }

  void lost(std::string_view why) {
    logging::log(logging::Level::kDebug, "pool", "pooled connection to {} closed: {}",
                 pool.config_->config.backends[index].name, why);
    if (generation == pool.generation_) {
      pool.stats(index).pool_lost.add();
    }
    pool.close(this, true);
  }

  void onDrained(Transport*) override {}

  void onClosed(Transport* t, std::string_view reason) override {
    (void)t;
    if (phase != Phase::kClosing && generation == pool.generation_) {
      logging::log(logging::Level::kDebug, "pool", "pooled connection to {} ended: {}",
                   pool.config_->config.backends[index].name, reason);
      pool.stats(index).pool_lost.add();
    }
    pool.entryClosed(this);  // deletes this
  }
};

// ---------------------------------------------------------------------------
// BackendPool

BackendPool::BackendPool(SessionHost& host) : host_(host) {}

BackendPool::~BackendPool() {
  // The loop has closed every transport by now; nothing is left to report.
  for (Entry* entry : entries_) {
    delete entry;
  }
}

BackendStats& BackendPool::stats(std::size_t index) {
  return host_.stats().backend(config_->stats_slot[index]);
}

bool BackendPool::eligible(std::size_t index) const {
  if (stopped_ || !config_ || index >= config_->config.backends.size()) {
    return false;
  }
  const BackendConfig& backend = config_->config.backends[index];
  if (config_->config.backend_pool.size == 0 || backend.proxy_protocol) {
    return false;  // the PROXY header names the client: never pooled
  }
  if (backend.tls != TlsMode::kNone &&
      (index >= config_->backend_tls.size() || !config_->backend_tls[index])) {
    return false;
  }
  return !host_.shared().drained(config_->stats_slot[index]);
}

void BackendPool::configure(RuntimeConfigPtr config) {
  if (stopped_) {
    return;
  }
  // Connections made under the old snapshot may name an old address or
  // TLS setting: closed, and the new pools fill from scratch.
  std::vector<Entry*> old(entries_.begin(), entries_.end());
  for (Entry* entry : old) {
    close(entry);
  }
  ++generation_;
  config_ = std::move(config);
  slots_.assign(config_->config.backends.size(), Slot{});
  if (config_->config.backend_pool.size == 0) {
    timer_.reset();
    return;
  }
  if (!timer_) {
    timer_ = host_.createTimer([this] { tick(); });
  }
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    refill(i);
  }
  armTick();
}

void BackendPool::armTick() {
  if (!timer_) {
    return;
  }
  // Often enough to honour idle_timeout within a quarter of it, and to
  // notice a drain within a second.
  milliseconds idle = config_->config.backend_pool.idle_timeout;
  timer_->arm(std::clamp(idle / 4, milliseconds(100), milliseconds(1'000)));
}

void BackendPool::tick() {
  if (stopped_ || !config_) {
    return;
  }
  const auto now = host_.now();
  const Config& cfg = config_->config;
  const auto opening_bound = cfg.timeouts.backend_connect + cfg.timeouts.backend_login;
  std::vector<Entry*> entries(entries_.begin(), entries_.end());
  for (Entry* entry : entries) {
    if (entry->generation != generation_ || entry->phase == Entry::Phase::kClosing) {
      continue;
    }
    if (!eligible(entry->index)) {
      close(entry);  // drained, or a reload turned the pool off
    } else if (entry->phase == Entry::Phase::kReady &&
               now - entry->since >= cfg.backend_pool.idle_timeout) {
      stats(entry->index).pool_expired.add();
      close(entry);
    } else if (entry->phase == Entry::Phase::kOpening && now - entry->since >= opening_bound) {
      entry->lost("no greeting in time");
    }
  }
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    refill(i);
  }
  armTick();
}

void BackendPool::refill(std::size_t index) {
  if (!eligible(index)) {
    return;
  }
  std::size_t n = slots_[index].plan.toOpen(config_->config.backend_pool.size, host_.now());
  for (std::size_t i = 0; i < n; ++i) {
    open(index);
  }
}

void BackendPool::open(std::size_t index) {
  const BackendConfig& backend = config_->config.backends[index];
  auto* entry = new Entry(*this, index, generation_, host_.now());
  entries_.insert(entry);
  slots_[index].plan.opening();
  entry->transport = backend.tls == TlsMode::kImplicit
                         ? host_.connectBackendTls(backend, config_->backend_tls[index], entry, "")
                         : host_.connectBackend(backend, entry);
  if (entry->transport == nullptr) {
    slots_[index].plan.failed(host_.now());
    entries_.erase(entry);
    delete entry;
    return;
  }
  entry->transport->setHighWatermark(config_->config.limits.write_high_watermark);
}

void BackendPool::becameReady(Entry* entry) {
  if (entry->generation != generation_) {
    close(entry);
    return;
  }
  entry->phase = Entry::Phase::kReady;
  entry->since = host_.now();
  Slot& slot = slots_[entry->index];
  slot.plan.opened();
  slot.ready.push_back(entry);
  stats(entry->index).pool_opened.add();
  stats(entry->index).pool_ready.add();
}

void BackendPool::close(Entry* entry, bool failure) {
  if (entry->phase == Entry::Phase::kClosing) {
    return;
  }
  if (entry->generation == generation_) {
    forget(entry, failure);
  }
  entry->phase = Entry::Phase::kClosing;
  entry->transport->close();  // onClosed follows and deletes the entry
}

void BackendPool::forget(Entry* entry, bool failure) {
  Slot& slot = slots_[entry->index];
  const auto now = host_.now();
  if (entry->phase == Entry::Phase::kReady) {
    slot.ready.erase(std::remove(slot.ready.begin(), slot.ready.end(), entry), slot.ready.end());
    failure ? slot.plan.readyLost(now) : slot.plan.readyGone();
    stats(entry->index).pool_ready.sub();
  } else {
    failure ? slot.plan.failed(now) : slot.plan.abandoned();
  }
}

void BackendPool::entryClosed(Entry* entry) {
  if (entry->phase != Entry::Phase::kClosing && entry->generation == generation_) {
    forget(entry, true);
  }
  entries_.erase(entry);
  delete entry;
}

std::optional<PooledBackend> BackendPool::take(const RuntimeConfig& config, std::size_t index,
                                               TransportHandler* handler) {
  if (&config != config_.get() || !eligible(index)) {
    return std::nullopt;
  }
  Slot& slot = slots_[index];
  if (slot.ready.empty()) {
    stats(index).pool_misses.add();
    refill(index);
    return std::nullopt;
  }
  // The newest: the least likely to have been closed by the backend.
  Entry* entry = slot.ready.back();
  slot.ready.pop_back();
  slot.plan.readyGone();
  stats(index).pool_ready.sub();
  stats(index).pool_hits.add();
  PooledBackend out;
  out.transport = entry->transport;
  out.login = std::move(entry->login);
  out.transport->setHandler(handler);
  entries_.erase(entry);
  delete entry;
  return out;
}

void BackendPool::loginDone(const RuntimeConfig& config, std::size_t index) {
  if (&config == config_.get() && !stopped_) {
    refill(index);
  }
}

void BackendPool::shutdown() {
  if (stopped_) {
    return;
  }
  std::vector<Entry*> entries(entries_.begin(), entries_.end());
  for (Entry* entry : entries) {
    close(entry);
  }
  stopped_ = true;
  timer_.reset();
}

}  // namespace portico::proxy
