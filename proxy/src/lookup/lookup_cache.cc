#include "lookup/lookup_cache.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "routing.h"

namespace portico::proxy {

LookupCache::LookupCache(std::chrono::milliseconds ttl, std::size_t max_entries)
    : ttl_(ttl), max_entries_(max_entries) {
  if (RAND_bytes(key_.data(), static_cast<int>(key_.size())) != 1) {
    // No randomness: keep no password-bound entries at all rather than
    // digests under a guessable key.
    max_entries_ = 0;
  }
}

LookupCache::~LookupCache() {
  flushAll();
  OPENSSL_cleanse(key_.data(), key_.size());
}

LookupCache::Digest LookupCache::digest(std::string_view password) const {
  Digest out{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(password.data()), password.size(), out.data(),
       &length);
  return out;
}

void LookupCache::erase(std::unordered_map<std::string, Entry>::iterator it) {
  if (it->second.result.backend_password) {
    wipeSecret(*it->second.result.backend_password);
  }
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

std::optional<LookupResult> LookupCache::get(std::string_view user, const Digest& password_digest,
                                             Clock::time_point now) {
  if (!enabled()) {
    return std::nullopt;
  }
  auto it = entries_.find(normaliseUser(user));
  if (it == entries_.end()) {
    return std::nullopt;
  }
  Entry& entry = it->second;
  if (now >= entry.expires) {
    erase(it);
    return std::nullopt;
  }
  if (entry.password_digest && CRYPTO_memcmp(entry.password_digest->data(), password_digest.data(),
                                             password_digest.size()) != 0) {
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, entry.lru);
  LookupResult result = entry.result;
  result.from_cache = true;
  return result;
}

bool LookupCache::put(std::string_view user, const Digest& password_digest,
                      const LookupResult& result, Clock::time_point now) {
  if (!enabled() || result.outcome != LookupOutcome::kRoute) {
    return false;
  }
  std::string key = normaliseUser(user);
  if (auto it = entries_.find(key); it != entries_.end()) {
    erase(it);
  }
  while (entries_.size() >= max_entries_ && !lru_.empty()) {
    erase(entries_.find(lru_.back()));
    ++evictions_;
  }
  lru_.push_front(key);
  Entry entry{result, now + ttl_, std::nullopt, lru_.begin()};
  entry.result.from_cache = false;
  if (result.backend_password) {
    entry.password_digest = password_digest;
  }
  entries_.emplace(std::move(key), std::move(entry));
  return true;
}

std::size_t LookupCache::flushAll() {
  std::size_t count = entries_.size();
  while (!entries_.empty()) {
    erase(entries_.begin());
  }
  return count;
}

std::size_t LookupCache::flushUser(std::string_view user) {
  auto it = entries_.find(normaliseUser(user));
  if (it == entries_.end()) {
    return 0;
  }
  erase(it);
  return 1;
}

}  // namespace portico::proxy
