#include "lookup/lookup_stage.h"

#include <openssl/crypto.h>

#include <utility>

namespace portico::proxy {

LookupStage::LookupStage(LookupLoop& loop, DirectoryLookupPtr directory, const LookupConfig& config,
                         LookupStats& stats)
    : loop_(loop),
      directory_(std::move(directory)),
      stats_(stats),
      cache_(config.cache_ttl, config.cache_size),
      deferred_(loop) {}

LookupStage::~LookupStage() {
  for (auto& [id, pending] : pending_) {
    OPENSSL_cleanse(pending.password_digest.data(), pending.password_digest.size());
  }
  // The directory goes first (members are destroyed in reverse order
  // otherwise): it cancels its own lookups and calls nobody back.
  directory_.reset();
}

LookupId LookupStage::lookup(const LookupRequest& request, LookupCallback callback) {
  const LookupId id = next_id_++;
  const auto now = loop_.now();
  LookupCache::Digest digest{};
  if (cache_.enabled()) {
    digest = cache_.digest(request.password);
    if (std::optional<LookupResult> hit = cache_.get(request.user, digest, now)) {
      stats_.cache_hits.fetch_add(1, std::memory_order_relaxed);
      stats_.recordAnswer(hit->outcome);
      deferred_.post(id, std::move(callback), std::move(*hit));
      return id;
    }
    stats_.cache_misses.fetch_add(1, std::memory_order_relaxed);
  }
  Pending& pending = pending_[id];
  pending.started = now;
  pending.user = request.user;
  pending.password_digest = digest;
  pending.callback = std::move(callback);
  pending.inner = directory_->lookup(
      request, [this, id](LookupResult result) { onAnswer(id, std::move(result)); });
  return id;
}

void LookupStage::onAnswer(LookupId id, LookupResult result) {
  auto it = pending_.find(id);
  if (it == pending_.end()) {
    return;
  }
  Pending pending = std::move(it->second);
  pending_.erase(it);
  stats_.recordLatency(
      std::chrono::duration_cast<std::chrono::microseconds>(loop_.now() - pending.started));
  stats_.recordAnswer(result.outcome);
  cache_.put(pending.user, pending.password_digest, result, loop_.now());
  OPENSSL_cleanse(pending.password_digest.data(), pending.password_digest.size());
  pending.callback(std::move(result));
}

void LookupStage::cancel(LookupId id) {
  auto it = pending_.find(id);
  if (it != pending_.end()) {
    directory_->cancel(it->second.inner);
    OPENSSL_cleanse(it->second.password_digest.data(), it->second.password_digest.size());
    pending_.erase(it);
    stats_.cancelled.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (deferred_.cancel(id)) {
    stats_.cancelled.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // namespace portico::proxy
