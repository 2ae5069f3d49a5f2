// limits.max_sessions_per_user: how many sessions each user has open on this
// node (across its workers), what the other nodes of the fleet last said
// they have, and the check a worker makes at login. Pure bookkeeping, no
// I/O: the control loop (fleet/fleet_client.h) publishes the local counts
// to Redis and feeds the other nodes' counts back in.
//
// A session takes a slot when its login starts (before any backend is
// asked, so that two logins at once cannot both pass the last free slot on
// this node) and gives it back when the login fails or the session ends.
// Across the fleet the view is eventually consistent: the other nodes'
// counts are as of their last publication (at most a reconcile period old).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

namespace portico::proxy::fleet {

class SessionCounts;

// One session's slot; gives it back when destroyed or reset.
class UserSlot {
 public:
  UserSlot() = default;
  UserSlot(SessionCounts* counts, std::string user) : counts_(counts), user_(std::move(user)) {}
  ~UserSlot() { reset(); }
  UserSlot(UserSlot&& other) noexcept
      : counts_(std::exchange(other.counts_, nullptr)), user_(std::move(other.user_)) {}
  UserSlot& operator=(UserSlot&& other) noexcept;
  UserSlot(const UserSlot&) = delete;
  UserSlot& operator=(const UserSlot&) = delete;

  void reset();
  bool held() const { return counts_ != nullptr; }

 private:
  SessionCounts* counts_ = nullptr;
  std::string user_;
};

using CountMap = std::map<std::string, std::uint32_t>;

class SessionCounts {
 public:
  // Takes a slot for `user` (normalised) into `slot` unless this node's
  // sessions plus the other nodes' reach `limit` (0: no limit); false then,
  // with `slot` empty.
  bool acquire(const std::string& user, std::uint32_t limit, UserSlot& slot);
  void release(const std::string& user);

  // This node's count for `user`, and the other nodes' (as last read).
  std::uint32_t local(const std::string& user) const;
  std::uint32_t remote(const std::string& user) const;
  // Every user with a session here; and a number that changes with it, so
  // the publisher can tell whether anything changed since it last looked.
  CountMap localCounts() const;
  std::uint64_t generation() const { return generation_.load(std::memory_order_relaxed); }

  // The other nodes' counts summed by user (control loop); empty when
  // Redis cannot be reached (then only this node's sessions count).
  void setRemote(CountMap remote);

 private:
  mutable std::mutex mu_;
  CountMap local_;
  std::shared_ptr<const CountMap> remote_;
  std::atomic<std::uint64_t> generation_{0};
};

// Adds one node's published counts ("user" -> "count" pairs as Redis
// returns them) into `sum`; values that are not counts are skipped.
void addCounts(CountMap& sum, const std::string& user, const std::string& count);

}  // namespace portico::proxy::fleet
