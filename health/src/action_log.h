// The action history behind GET /health/actions: a bounded ring of what
// responders and operators did, newest first when read. Pure: no I/O and no
// clock (the caller stamps each record). Results can arrive later (a hook
// finishes after it started): add() returns an id for setResult(), which
// does nothing once the entry has been pushed out of the ring.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>

#include <nlohmann/json.hpp>

#include "portico/health.h"

namespace portico::health {

class ActionLog {
 public:
  explicit ActionLog(std::size_t capacity = 256);

  // At least 1; shrinking drops the oldest entries.
  void setCapacity(std::size_t capacity);
  std::size_t capacity() const { return capacity_; }

  std::uint64_t add(ActionRecord record);
  void setResult(std::uint64_t id, std::string result);

  std::size_t size() const { return entries_.size(); }
  // The newest entry first; valid until the next add().
  const ActionRecord& newest(std::size_t index) const {
    return entries_[entries_.size() - 1 - index].record;
  }

  // {"actions":[{"time","kind","action","target","reason","by","result"}]},
  // newest first, times in ISO-8601 UTC with milliseconds.
  nlohmann::json json() const;
  // json() as text. Reasons and targets can carry an operator's words as
  // they came over the admin socket: invalid UTF-8 becomes U+FFFD instead
  // of an exception.
  std::string text() const;

 private:
  struct Entry {
    std::uint64_t id = 0;
    ActionRecord record;
  };
  void trim();

  std::size_t capacity_;
  std::uint64_t next_id_ = 1;
  std::deque<Entry> entries_;  // oldest first
};

// "2024-05-01T12:00:00.000Z"
std::string formatIsoTime(SystemTime time);

}  // namespace portico::health
