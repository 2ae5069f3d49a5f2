// The lookup stage as a session sees it: the directory (http or redis)
// behind the positive-answer cache, with the stage's metrics. It is itself
// a DirectoryLookup with the same contract (lookup.h): a cache hit, too, is
// delivered from the loop, never from inside lookup().
//
// Owned by the worker, one per worker; the directory it wraps is its own.
#pragma once

#include <chrono>
#include <unordered_map>

#include "lookup/deferred_results.h"
#include "lookup/lookup.h"
#include "lookup/lookup_cache.h"

namespace portico::proxy {

class LookupStage final : public DirectoryLookup {
 public:
  // `stats` must outlive the stage (the worker keeps both).
  LookupStage(LookupLoop& loop, DirectoryLookupPtr directory, const LookupConfig& config,
              LookupStats& stats);
  ~LookupStage() override;

  LookupId lookup(const LookupRequest& request, LookupCallback callback) override;
  void cancel(LookupId id) override;

  LookupCache& cache() { return cache_; }
  std::size_t inFlight() const { return pending_.size(); }

 private:
  struct Pending {
    LookupId inner = 0;
    std::chrono::steady_clock::time_point started;
    std::string user;
    LookupCache::Digest password_digest{};
    LookupCallback callback;
  };

  void onAnswer(LookupId id, LookupResult result);

  LookupLoop& loop_;
  DirectoryLookupPtr directory_;
  LookupStats& stats_;
  LookupCache cache_;
  DeferredResults deferred_;
  LookupId next_id_ = 1;
  std::unordered_map<LookupId, Pending> pending_;
};

}  // namespace portico::proxy
