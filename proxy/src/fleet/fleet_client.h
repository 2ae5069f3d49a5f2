// Fleet mode's link to Redis, on the control loop (never on a worker loop):
// publishes this node's operator drains and user holds, reads the fleet's
// state back (at once on a pub/sub message, and every kReconcileEvery in any
// case), applies it here, and feeds FleetStateMonitor. Key layout and the
// rules of the state: fleet_state.h.
//
// Failure behaviour: every Redis call has a deadline (RedisConnection).
// While Redis cannot be reached the node keeps its last known state (holds
// still expire at their time) or, with on_redis_down = "refuse", has its
// workers refuse new logins. Once Redis answers again the node publishes
// what it made meanwhile, and everything it knows when Redis lost its data
// (a restart without persistence: the epoch key changed), then reads the
// fleet's state again.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fleet/fleet_config.h"
#include "fleet/fleet_state.h"
#include "fleet/login_penalty.h"
#include "fleet/redis_connection.h"
#include "fleet/session_limit.h"

namespace portico::proxy::fleet {

struct FleetHooks {
  // Drains (or enables) a backend on this node; false when it has no
  // backend of that name.
  std::function<bool(const std::string& backend, bool drained, bool move_sessions)> apply_drain;
  // Ends the open sessions of these (normalised) users between commands.
  std::function<void(const std::vector<std::string>& users)> bye_users;
  // One observation for FleetStateMonitor.
  std::function<void(bool ok, const std::string& error)> health;
  // Whether limits.max_sessions_per_user is on (then this node publishes
  // its counts and reads the others').
  std::function<bool()> limits_on;
  // This node's logged-in sessions for the registry: (session id, value).
  using Entries = std::vector<std::pair<std::string, std::string>>;
  std::function<void(std::function<void(Entries)> done)> list_sessions;
  // Ends the sessions of (normalised) `user` on this node; `done` gets how many.
  std::function<void(const std::string& user, std::function<void(std::size_t)> done)> kick_user;
  // limits.login_failures_per_ip / _per_user / login_failure_window now.
  struct PenaltyLimits {
    std::uint32_t per_ip = 0;
    std::uint32_t per_user = 0;
    std::chrono::milliseconds window{0};
  };
  std::function<PenaltyLimits()> penalty_limits;
  // The backends this node's own responders drained: its health votes.
  std::function<std::vector<std::string>()> unhealthy_here;
  // Drains (or restores) a backend on this node by the fleet's quorum.
  std::function<void(const std::string& backend, bool drained)> apply_quorum;
};

// The fleet's health verdicts as last read (FleetClient::vote()).
struct QuorumView {
  std::uint32_t live_nodes = 0;
  std::uint32_t needed = 0;
  std::map<std::string, std::uint32_t> votes;  // backend -> nodes finding it Unhealthy
  std::set<std::string> drained;               // by the quorum, applied here
};

// A registry entry as read back: which node, the session id, its value.
struct RegistryEntry {
  std::string node;
  std::string id;
  std::string value;
};

class FleetClient {
 public:
  static constexpr std::chrono::milliseconds kReconcileEvery{500};
  static constexpr std::chrono::milliseconds kRedisTimeout{1'000};
  // A node's health votes (and its place among the live nodes) last this
  // long after its last write; it writes every kReconcileEvery.
  static constexpr std::chrono::milliseconds kAliveTtl{3'000};

  // How long a kick --fleet waits for the nodes' answers.
  static constexpr std::chrono::milliseconds kKickWait{2'000};

  // `config.redis` must be a valid address (checked by the config reader).

  FleetClient(uv_loop_t* loop, const FleetConfig& config, LoginGate& gate, SessionCounts& counts,
              LoginPenalties& penalties, FleetHooks hooks);
  ~FleetClient();
  FleetClient(const FleetClient&) = delete;
  FleetClient& operator=(const FleetClient&) = delete;

  void start();
  // Closes the connections; run the loop afterwards to free the handles.
  void stop();

  // "" when Redis took it, else why not (the change then applies on this
  // node and is published once Redis is back).
  using Done = std::function<void(const std::string& error)>;
  // An operator's drain or enable made here; the caller applied it locally.
  void publishVerdict(const std::string& backend, bool drained, bool move_sessions, Done done);
  // Holds (normalised) `user` on every node for `ttl`, or releases it.
  void hold(const std::string& user, std::chrono::milliseconds ttl, Done done);
  void release(const std::string& user, Done done);
  // This node's responders drained or restored a backend: vote now.
  void healthChanged() { vote(); }

  // Every node's registered sessions (this one's as last published).
  using RegistryDone = std::function<void(std::vector<RegistryEntry>, const std::string& error)>;
  void readRegistry(RegistryDone done);
  // Ends `user`'s sessions on every node: `done` gets each answering node's
  // count and how many nodes heard the request (fewer answers: some did not
  // answer within kKickWait).
  using KickDone = std::function<void(const std::map<std::string, std::size_t>& kicked,
                                      std::size_t asked, const std::string& error)>;
  void kickEverywhere(const std::string& user, KickDone done);

  const std::string& node() const { return node_; }
  std::string where() const { return commands_->where(); }
  bool connected() const { return commands_->connected() && synced_; }
  const std::string& lastError() const { return last_error_; }
  bool refusing() const { return gate_.refusing(); }
  const std::map<std::string, Verdict>& verdicts() const { return verdicts_; }
  const HoldTable& holds() const { return holds_; }
  const QuorumView& quorum() const { return quorum_; }

 private:
  void onConnected();
  void onLost(const std::string& why);
  void onSubscriberConnected();
  void republish(bool everything);
  void sendVerdicts(const std::vector<std::pair<std::string, Verdict>>& verdicts, Done done);
  void sendHold(const std::string& user, std::chrono::milliseconds ttl, bool only_if_absent,
                Done done);
  void sendRelease(const std::string& user, Done done);
  void reconcile();
  void reconciled(const void* reply, const std::string& error, bool stale_holds);
  void unreachable(const std::string& why);
  // Writes this node's health votes and reads every live node's, in one
  // round trip; applies the quorum's drains here (voted()).
  void vote();
  void voted(const void* reply, const std::string& error);
  void onEvent(std::string_view message);
  void publishCounts(Clock::time_point now);
  void publishRegistry(Clock::time_point now);
  void publishFailures();
  void finishKicks(Clock::time_point now, bool all);
  std::chrono::milliseconds refreshEvery() const;

  uv_loop_t* loop_;
  FleetConfig config_;
  std::string node_;
  LoginGate& gate_;
  SessionCounts& counts_;
  LoginPenalties& penalties_;
  bool penalties_busy_ = false;
  FleetHooks hooks_;
  std::unique_ptr<RedisConnection> commands_;
  std::unique_ptr<RedisConnection> events_;  // SUBSCRIBE only
  uv_timer_t* timer_ = nullptr;
  bool synced_ = false;      // the last read of the fleet state worked
  bool reading_ = false;     // a reconcile is in flight
  bool read_again_ = false;  // ... and another was asked for meanwhile
  // Connected, and what this node made meanwhile not sent yet: a read now
  // would drop the holds it placed while Redis was away.
  bool republishing_ = false;
  std::string epoch_;                // the Redis data generation last seen
  std::uint64_t local_changes_ = 0;  // holds and releases made here
  std::string last_error_;
  std::map<std::string, Verdict> verdicts_;  // by backend: the newest known
  HoldTable holds_;
  QuorumView quorum_;
  bool voting_ = false;      // a vote is in flight
  bool vote_again_ = false;  // ... and another was asked for meanwhile
  // Holds (expiry) and releases (nullopt) made while Redis was away.
  std::map<std::string, std::optional<Clock::time_point>> unsent_holds_;
  // Session counts and registry: what was last published, and when.
  std::uint64_t counts_generation_ = 0;
  bool counts_busy_ = false;
  bool counts_published_ = false;
  Clock::time_point counts_at_{};
  bool registry_busy_ = false;
  Clock::time_point registry_at_{};
  // kick --fleet requests made here, by request id.
  struct PendingKick {
    std::string user;
    std::size_t asked = 0;
    bool published = false;
    std::map<std::string, std::size_t> kicked;
    Clock::time_point deadline;
    KickDone done;
  };
  std::map<std::string, PendingKick> kicks_;
  // Callbacks that may outlive this client (the workers answer through the
  // control loop's queue) hold it weakly.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace portico::proxy::fleet
