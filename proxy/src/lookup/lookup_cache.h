// Positive directory answers (kRoute), per worker, for `cache_ttl`.
//
// Policy (docs/lookup.md, "Cache"):
// - Only kRoute answers are kept; refusals, "no entry" and failures always
//   go back to the directory.
// - Keyed on the normalised user. An answer that carries no password
//   override serves any later login of that user: Portico replays the
//   client's own password to the backend, which still checks it.
// - An answer that carries a password override (Auth-Pass) is bound to the
//   password that produced it: the entry keeps an HMAC-SHA-256 of that
//   password under a random per-cache key, and serves only a login whose
//   password has the same digest. A wrong password therefore never gets a
//   cached Auth-Pass (it goes to the directory, which refuses it), and the
//   cache holds no reusable form of the client's password.
// - Bounded: at most `max_entries`; the least recently used entry goes
//   first. Expired entries are dropped when met.
// - Secrets (cached Auth-Pass values) are wiped on eviction, flush and
//   destruction.
//
// Time comes from the caller (now), so tests run it on a fake clock.
// Single-threaded, like the worker that owns it.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "lookup/lookup.h"

namespace portico::proxy {

class LookupCache {
 public:
  using Clock = std::chrono::steady_clock;
  using Digest = std::array<unsigned char, 32>;

  LookupCache(std::chrono::milliseconds ttl, std::size_t max_entries);
  ~LookupCache();
  LookupCache(const LookupCache&) = delete;
  LookupCache& operator=(const LookupCache&) = delete;

  bool enabled() const { return ttl_.count() > 0 && max_entries_ > 0; }

  // HMAC-SHA-256 of `password` under this cache's key.
  Digest digest(std::string_view password) const;

  // A fresh answer for `user` that a login with this password digest may
  // use (from_cache set), or nullopt.
  std::optional<LookupResult> get(std::string_view user, const Digest& password_digest,
                                  Clock::time_point now);
  // Keeps a kRoute answer until now + ttl; anything else is not kept.
  // Returns whether it was stored.
  bool put(std::string_view user, const Digest& password_digest, const LookupResult& result,
           Clock::time_point now);

  // For `porticoctl lookup flush [--user U]`: how many entries went.
  std::size_t flushAll();
  std::size_t flushUser(std::string_view user);

  std::size_t size() const { return entries_.size(); }
  std::uint64_t evictions() const { return evictions_; }

 private:
  struct Entry {
    LookupResult result;
    Clock::time_point expires;
    std::optional<Digest> password_digest;  // set when result carries Auth-Pass
    std::list<std::string>::iterator lru;
  };

  void erase(std::unordered_map<std::string, Entry>::iterator it);

  std::chrono::milliseconds ttl_;
  std::size_t max_entries_;
  std::array<unsigned char, 32> key_{};
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // most recently used first
  std::uint64_t evictions_ = 0;
};

}  // namespace portico::proxy
