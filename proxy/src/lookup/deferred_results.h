// Results that are known at once (a cache hit, a directory known to be
// down) still reach their callbacks from the loop, never from inside
// lookup(): the caller's state machine never sees a re-entrant callback.
// One zero-delay timer delivers them in the order they were posted.
#pragma once

#include <deque>
#include <utility>

#include "lookup/lookup.h"

namespace portico::proxy {

class DeferredResults {
 public:
  explicit DeferredResults(LookupLoop& loop) : timer_(loop.createTimer([this] { deliver(); })) {}

  void post(LookupId id, LookupCallback callback, LookupResult result) {
    queue_.push_back({id, std::move(callback), std::move(result)});
    timer_->arm(std::chrono::milliseconds{0});
  }

  // True when `id` was waiting here (it is dropped, its callback never runs).
  bool cancel(LookupId id) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->id == id) {
        wipeSecretsOf(it->result);
        queue_.erase(it);
        return true;
      }
    }
    return false;
  }

  bool empty() const { return queue_.empty(); }

  ~DeferredResults() {
    for (Entry& entry : queue_) {
      wipeSecretsOf(entry.result);
    }
  }

 private:
  struct Entry {
    LookupId id;
    LookupCallback callback;
    LookupResult result;
  };

  static void wipeSecretsOf(LookupResult& result) {
    if (result.backend_password) {
      wipeSecret(*result.backend_password);
    }
  }

  // Only what was queued before this delivery started; results a callback
  // posts go in the next round, so a callback loop cannot starve the loop.
  void deliver() {
    std::size_t count = queue_.size();
    while (count-- > 0 && !queue_.empty()) {
      Entry entry = std::move(queue_.front());
      queue_.pop_front();
      entry.callback(std::move(entry.result));
    }
    if (!queue_.empty()) {
      timer_->arm(std::chrono::milliseconds{0});
    }
  }

  TimerPtr timer_;
  std::deque<Entry> queue_;
};

}  // namespace portico::proxy
