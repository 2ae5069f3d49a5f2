// kind = "redis": the user's route is a Redis value (hiredis, async, on the
// worker's libuv loop). One connection per worker, opened at construction
// and kept open; lookups are pipelined on it.
//
// Keys: `key` with {user} replaced by the normalised user ("route:alice").
// With `shards` = N > 0, the user's shard is lookupShard(user, N) and
// `shard_key` with {shard} replaced ("route:shard:17") holds the backend for
// the whole shard; a per-user key overrides it. Both GETs go out together.
// A value is "IP:PORT", "[IPv6]:PORT" or a configured backend's name; an
// absent (or empty) value is kNoEntry.
//
// Failures: every lookup completes within `timeout`. A connection that
// cannot be made, or is lost, answers kUnavailable at once and is retried
// with a backoff doubling from kMinBackoff to kMaxBackoff; while it waits,
// lookups answer kUnavailable at once (no hang). A request that times out
// on an open connection drops that connection (a server that stopped
// answering), which fails its other requests too.
//
// hiredis 0.14's own libuv adapter ignores poll errors, so a refused
// connection would never be reported; this file carries a corrected copy.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "lookup/deferred_results.h"
#include "lookup/lookup.h"

struct redisAsyncContext;

namespace portico::proxy {

// The shard of a normalised user: CRC-32 (IEEE 802.3, as zlib's crc32() and
// Python's zlib.crc32()) of its bytes, modulo `shards`. Stable across
// versions and machines: operators compute it in their own scripts.
std::uint32_t lookupShard(std::string_view normalised_user, std::uint32_t shards);

// `pattern` with its one `placeholder` replaced by `value`.
std::string expandKeyTemplate(std::string_view pattern, std::string_view placeholder,
                              std::string_view value);

// A Redis value as a route: "IP:PORT", "[IPv6]:PORT", or a backend name
// (letters, digits, '.', '_', '-'). Surrounding spaces are ignored.
std::optional<LookupRoute> parseRouteValue(std::string_view value);

class RedisLookup final : public DirectoryLookup {
 public:
  static constexpr std::chrono::milliseconds kMinBackoff{100};
  static constexpr std::chrono::milliseconds kMaxBackoff{5'000};

  // `loop.uvLoop()` must not be null.
  RedisLookup(const LookupConfig& config, LookupLoop& loop);
  ~RedisLookup() override;
  RedisLookup(const RedisLookup&) = delete;
  RedisLookup& operator=(const RedisLookup&) = delete;

  LookupId lookup(const LookupRequest& request, LookupCallback callback) override;
  void cancel(LookupId id) override;

  bool connected() const { return state_ == State::kConnected; }
  const std::string& lastError() const { return last_error_; }
  std::size_t inFlight() const { return queries_.size(); }

 private:
  enum class State : std::uint8_t { kConnecting, kConnected, kBackoff };
  struct Query;

  void connect();
  void connectFailed(std::string error);
  void dropConnection(std::string why);
  void sendGet(Query& query, const std::string& key, int slot);
  void onReply(LookupId id, int slot, redisAsyncContext* context, void* reply);
  void decide(Query& query);
  void complete(LookupId id, LookupResult result);
  std::string where() const;

  static void onConnect(const redisAsyncContext* context, int status);
  static void onDisconnect(const redisAsyncContext* context, int status);
  static void onReplyThunk(redisAsyncContext* context, void* reply, void* privdata);

  LookupLoop& loop_;
  LookupConfig config_;
  redisAsyncContext* context_ = nullptr;
  std::uint64_t connection_ = 0;  // counts connections made, to tell them apart
  State state_ = State::kBackoff;
  std::chrono::milliseconds backoff_{0};
  std::string last_error_;
  TimerPtr connect_timer_;
  TimerPtr backoff_timer_;
  DeferredResults deferred_;
  LookupId next_id_ = 1;
  std::unordered_map<LookupId, std::unique_ptr<Query>> queries_;
  bool closing_ = false;
};

}  // namespace portico::proxy
