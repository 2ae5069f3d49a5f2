// Fleet mode's shared state as plain data: how a backend's operator verdict
// and a user hold are written in Redis, which of two verdicts wins, the
// table of held users with their expiry, and the gate workers consult at
// login. No I/O here (fleet_client.* talks to Redis).
//
// Redis layout (prefix "portico:fleet:"):
//   backends         hash: backend name -> verdict text (encodeVerdict)
//   hold:<user>      string: the node that placed the hold; PX = its TTL,
//                    so a hold expires by itself
//   holds            set: users with a hold key (an index; entries whose
//                    key expired are removed when read)
//   epoch            string: a random token set (NX) by the first node to
//                    reach an empty Redis; a node that sees it change knows
//                    Redis lost its data and publishes what it knows again
//   alive:<node>     string: the backends this node finds Unhealthy
//                    (space-separated, maybe none); PX = kAliveTtl,
//                    refreshed at every read, so a dead node's votes go
//   voters           set: nodes with an alive key (an index; entries whose
//                    key expired are removed when read)
//   events           pub/sub channel: "backends", "holds" or "health" after
//                    a change, so that every node reads the state again
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portico::proxy::fleet {

inline constexpr std::string_view kKeyPrefix = "portico:fleet:";

// An operator's drain or enable of one backend, fleet-wide. The newest
// (stamp, then node name) wins everywhere: a last-writer-wins register.
struct Verdict {
  bool drained = false;
  bool move_sessions = false;  // drain --move-sessions
  std::uint64_t stamp_ms = 0;  // wall clock, milliseconds since the epoch
  std::string node;            // who decided

  bool operator==(const Verdict&) const = default;
};

// "drained 1733300000000 portico-a", "drained+move ...", "enabled ...".
std::string encodeVerdict(const Verdict& verdict);
// nullopt for anything else (a foreign or damaged value is ignored).
std::optional<Verdict> decodeVerdict(std::string_view text);
// True when `a` should replace `b`.
bool newer(const Verdict& a, const Verdict& b);

// A node name: 1 to 64 of [A-Za-z0-9._-]. "" when good, else why not.
std::string nodeNameProblem(std::string_view node);
// The host name when it is a good node name, else "portico".
std::string defaultNodeName();

// Health verdicts by quorum: each node votes for the backends its own
// responders drained (Unhealthy on that node); a backend with at least
// `needed` votes among the live nodes is drained on every node.
// `configured` 0 means a majority of the live nodes.
std::uint32_t quorumNeeded(std::uint32_t live_nodes, std::uint32_t configured);
// The backends drained by the fleet: those with enough votes. `votes`:
// backend -> how many live nodes find it Unhealthy.
std::vector<std::string> quorumDrains(const std::map<std::string, std::uint32_t>& votes,
                                      std::uint32_t live_nodes, std::uint32_t configured);

// Held users (normalised) and when each hold ends.
using Clock = std::chrono::steady_clock;
class HoldTable {
 public:
  void put(const std::string& user, Clock::time_point until);
  bool erase(const std::string& user);
  // Replaces the whole table with Redis's view: (user, remaining ms).
  void replace(const std::vector<std::pair<std::string, std::int64_t>>& remaining,
               Clock::time_point now);
  // Drops the holds that ended by `now`; how many.
  std::size_t expire(Clock::time_point now);
  bool held(const std::string& user, Clock::time_point now) const;
  const std::map<std::string, Clock::time_point>& entries() const { return holds_; }
  bool operator==(const HoldTable&) const = default;

 private:
  std::map<std::string, Clock::time_point> holds_;
};

// What a worker asks at login, without waiting for anyone: the control loop
// keeps it up to date; a worker takes a lock only when holds exist or
// logins are refused (one relaxed load otherwise).
class LoginGate {
 public:
  // The text after "TAG NO " for a login of `user` (normalised), or nullopt
  // to let it go on.
  std::optional<std::string> refusal(const std::string& user, Clock::time_point now) const;

  void setHolds(const HoldTable& holds);
  // on_redis_down = "refuse" while Redis cannot be reached.
  void setRefusing(bool refusing);
  bool refusing() const { return refusing_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> active_{false};
  std::atomic<bool> refusing_{false};
  mutable std::mutex mu_;
  std::shared_ptr<const HoldTable> holds_;
};

}  // namespace portico::proxy::fleet
