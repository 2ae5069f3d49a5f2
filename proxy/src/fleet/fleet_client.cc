#include "fleet/fleet_client.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <charconv>
#include <random>
#include <set>
#include <utility>

#include "config/config.h"
#include "fleet/fleet_redis.h"
#include "portico/logging.h"

namespace portico::proxy::fleet {

namespace {

using Millis = std::chrono::milliseconds;

// Reads every live hold (dropping index entries whose key expired) and the
// backend verdicts, in one round trip.
constexpr const char* kReconcileScript = R"lua(
local holds = {}
for _, u in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local ttl = redis.call('PTTL', ARGV[1] .. u)
  if ttl > 0 then
    holds[#holds + 1] = u
    holds[#holds + 1] = tostring(ttl)
  else
    redis.call('SREM', KEYS[2], u)
  end
end
return {redis.call('HGETALL', KEYS[1]), holds}
)lua";

// Last writer wins: each (field, value, stamp, node) replaces the stored
// verdict only when newer; a change is announced on the channel (ARGV[1]).
constexpr const char* kMergeScript = R"lua(
local changed = 0
for i = 2, #ARGV, 4 do
  local stamp, node = -1, ''
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local s, n = string.match(cur, '^%S+ (%d+) (.*)$')
    if s then stamp, node = tonumber(s), n end
  end
  local mine = tonumber(ARGV[i + 2])
  if mine > stamp or (mine == stamp and ARGV[i + 3] > node) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    changed = changed + 1
  end
end
if changed > 0 then redis.call('PUBLISH', ARGV[1], 'backends') end
return changed
)lua";

// KEYS: hold key, index set. ARGV: user, node, ttl ms, channel, "nx" to
// leave an existing hold alone.
constexpr const char* kHoldScript = R"lua(
if ARGV[5] == 'nx' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], 'holds')
return 1
)lua";

constexpr const char* kReleaseScript = R"lua(
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'holds')
return 1
)lua";

// This node's health votes, and every live node's. KEYS: the voters index.
// ARGV: alive-key prefix, node, ttl ms, channel, this node's votes (the
// backends it finds Unhealthy, one per line). Returns node, votes, ...
constexpr const char* kVoteScript = R"lua(
local mine = ARGV[1] .. ARGV[2]
local before = redis.call('GET', mine)
redis.call('SET', mine, ARGV[5], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[2])
if before ~= ARGV[5] then redis.call('PUBLISH', ARGV[4], 'health') end
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. n)
  if v then
    out[#out + 1] = n
    out[#out + 1] = v
  else
    redis.call('SREM', KEYS[1], n)
  end
end
return out
)lua";

// The data generation: set by the first node to reach an empty Redis.
constexpr const char* kEpochScript = R"lua(
local e = redis.call('GET', KEYS[1])
if e then return {e, 0} end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
)lua";

}  // namespace

FleetClient::FleetClient(uv_loop_t* loop, const FleetConfig& config, LoginGate& gate,
                         SessionCounts& counts, LoginPenalties& penalties, FleetHooks hooks)
    : loop_(loop),
      config_(config),
      node_(config.node.empty() ? defaultNodeName() : config.node),
      gate_(gate),
      counts_(counts),
      penalties_(penalties),
      hooks_(std::move(hooks)) {
  std::optional<HostPort> address = parseHostPort(config_.redis);
  HostPort where = address.value_or(HostPort{"127.0.0.1", 6379, false});
  commands_ = std::make_unique<RedisConnection>(
      loop_, where.host, where.port, where.ipv6, kRedisTimeout,
      RedisConnection::Hooks{[this] { onConnected(); },
                             [this](const std::string& why) { onLost(why); }});
  events_ = std::make_unique<RedisConnection>(
      loop_, where.host, where.port, where.ipv6, kRedisTimeout,
      RedisConnection::Hooks{[this] { onSubscriberConnected(); }, nullptr});
}

FleetClient::~FleetClient() {
  stop();
}

void FleetClient::start() {
  if (timer_ != nullptr) {
    return;
  }
  timer_ = new uv_timer_t;
  uv_timer_init(loop_, timer_);
  timer_->data = this;
  const auto every = static_cast<std::uint64_t>(kReconcileEvery.count());
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<FleetClient*>(t->data);
        if (self->holds_.expire(Clock::now()) > 0) {
          self->gate_.setHolds(self->holds_);
        }
        const auto now = Clock::now();
        self->finishKicks(now, false);
        if (self->commands_->connected()) {
          self->reconcile();
          self->publishCounts(now);
          self->publishRegistry(now);
          self->publishFailures();
          self->vote();
        } else {
          self->unreachable(self->commands_->lastError().empty() ? "not connected"
                                                                 : self->commands_->lastError());
        }
      },
      every, every);
  logging::log(logging::Level::kInfo, "fleet", "fleet node {} sharing state through {} ({})", node_,
               commands_->where(),
               config_.refuseWhenDown() ? "refusing logins while it is down"
                                        : "local state while it is down");
  commands_->start();
  events_->start();
}

void FleetClient::stop() {
  finishKicks(Clock::now(), true);
  if (timer_ != nullptr) {
    uv_timer_stop(timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    timer_ = nullptr;
  }
  commands_->close();
  events_->close();
}

void FleetClient::onConnected() {
  republishing_ =
      commands_->command({"EVAL", kEpochScript, "1", key("epoch"), randomToken()},
                         [this](const redisReply* reply, const std::string& error) {
                           republishing_ = false;
                           if (!replyError(reply, error).empty() ||
                               reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
                             unreachable("epoch: " + (replyError(reply, error).empty()
                                                          ? std::string("unexpected reply")
                                                          : replyError(reply, error)));
                             return;
                           }
                           std::string epoch(textOf(reply->element[0]));
                           const bool created = reply->element[1]->type == REDIS_REPLY_INTEGER &&
                                                reply->element[1]->integer == 1;
                           const bool everything = created || (!epoch_.empty() && epoch != epoch_);
                           epoch_ = epoch;
                           republish(everything);
                           reconcile();
                         });
}

void FleetClient::onLost(const std::string& why) {
  republishing_ = false;
  unreachable(why);
}

void FleetClient::unreachable(const std::string& why) {
  if (synced_ || last_error_ != why) {
    logging::log(
        synced_ ? logging::Level::kWarn : logging::Level::kInfo, "fleet",
        "fleet state unavailable ({}): {}", why,
        config_.refuseWhenDown() ? "refusing new logins" : "going on with the last known state");
  }
  synced_ = false;
  last_error_ = why;
  // Only this node's sessions count towards max_sessions_per_user now.
  counts_.setRemote({});
  counts_published_ = false;
  // Penalties end at their time in Redis, which cannot be asked now: none.
  penalties_.setPenalised({});
  if (config_.refuseWhenDown()) {
    gate_.setRefusing(true);
  }
  if (hooks_.health) {
    hooks_.health(false, why);
  }
}

void FleetClient::onSubscriberConnected() {
  events_->subscribe(key("events"), [this](const redisReply* reply, const std::string&) {
    // The confirmation and every change message: read the state again (a
    // message missed while resubscribing is covered by the confirmation's
    // read). Kick requests and their answers travel here too.
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) {
      return;
    }
    if (textOf(reply->element[0]) == "message") {
      onEvent(textOf(reply->element[2]));
    } else if (commands_->connected()) {
      reconcile();
      vote();
    }
  });
}

void FleetClient::republish(bool everything) {
  std::vector<std::pair<std::string, Verdict>> all(verdicts_.begin(), verdicts_.end());
  if (!all.empty()) {
    sendVerdicts(all, [](const std::string& error) {
      if (!error.empty()) {
        logging::log(logging::Level::kWarn, "fleet", "republishing backend state: {}", error);
      }
    });
  }
  const auto now = Clock::now();
  auto logError = [](const std::string& error) {
    if (!error.empty()) {
      logging::log(logging::Level::kWarn, "fleet", "republishing holds: {}", error);
    }
  };
  std::map<std::string, std::optional<Clock::time_point>> unsent = std::move(unsent_holds_);
  unsent_holds_.clear();
  for (const auto& [user, until] : unsent) {
    if (!until) {
      sendRelease(user, logError);
    } else if (*until > now) {
      sendHold(user, std::chrono::duration_cast<Millis>(*until - now), false, logError);
    }
  }
  if (everything) {
    logging::log(logging::Level::kInfo, "fleet",
                 "Redis lost the fleet state (new epoch): publishing this node's ({} backend "
                 "verdicts, {} holds)",
                 verdicts_.size(), holds_.entries().size());
    for (const auto& [user, until] : holds_.entries()) {
      if (until > now && unsent.count(user) == 0) {
        sendHold(user, std::chrono::duration_cast<Millis>(until - now), true, logError);
      }
    }
  }
}

void FleetClient::sendVerdicts(const std::vector<std::pair<std::string, Verdict>>& verdicts,
                               Done done) {
  std::vector<std::string> args{"EVAL", kMergeScript, "1", key("backends"), key("events")};
  for (const auto& [backend, verdict] : verdicts) {
    args.push_back(backend);
    args.push_back(encodeVerdict(verdict));
    args.push_back(std::to_string(verdict.stamp_ms));
    args.push_back(verdict.node);
  }
  if (!commands_->command(args, [done](const redisReply* reply, const std::string& error) {
        done(replyError(reply, error));
      })) {
    done(commands_->where() + " unavailable: " + commands_->lastError());
  }
}

void FleetClient::sendHold(const std::string& user, Millis ttl, bool only_if_absent, Done done) {
  std::vector<std::string> args{
      "EVAL",        kHoldScript,
      "2",           key("hold:") + user,
      key("holds"),  user,
      node_,         std::to_string(std::max<std::int64_t>(1, ttl.count())),
      key("events"), only_if_absent ? "nx" : ""};
  if (!commands_->command(args, [done](const redisReply* reply, const std::string& error) {
        done(replyError(reply, error));
      })) {
    done(commands_->where() + " unavailable: " + commands_->lastError());
  }
}

void FleetClient::sendRelease(const std::string& user, Done done) {
  std::vector<std::string> args{"EVAL",       kReleaseScript, "2",          key("hold:") + user,
                                key("holds"), user,           key("events")};
  if (!commands_->command(args, [done](const redisReply* reply, const std::string& error) {
        done(replyError(reply, error));
      })) {
    done(commands_->where() + " unavailable: " + commands_->lastError());
  }
}

void FleetClient::publishVerdict(const std::string& backend, bool drained, bool move_sessions,
                                 Done done) {
  Verdict verdict{drained, move_sessions, wallMs(), node_};
  if (auto it = verdicts_.find(backend); it != verdicts_.end()) {
    verdict.stamp_ms = std::max(verdict.stamp_ms, it->second.stamp_ms + 1);
  }
  verdicts_[backend] = verdict;
  sendVerdicts({{backend, verdict}}, std::move(done));
}

void FleetClient::hold(const std::string& user, Millis ttl, Done done) {
  ++local_changes_;
  const auto until = Clock::now() + ttl;
  holds_.put(user, until);
  gate_.setHolds(holds_);
  if (hooks_.bye_users) {
    hooks_.bye_users({user});
  }
  if (!commands_->connected()) {
    unsent_holds_[user] = until;
    done(commands_->where() + " unavailable: " + commands_->lastError());
    return;
  }
  sendHold(user, ttl, false, std::move(done));
}

void FleetClient::release(const std::string& user, Done done) {
  ++local_changes_;
  holds_.erase(user);
  gate_.setHolds(holds_);
  if (!commands_->connected()) {
    unsent_holds_[user] = std::nullopt;
    done(commands_->where() + " unavailable: " + commands_->lastError());
    return;
  }
  sendRelease(user, std::move(done));
}

void FleetClient::reconcile() {
  if (republishing_) {
    return;  // the epoch's answer reads the state once it has republished
  }
  if (reading_) {
    read_again_ = true;
    return;
  }
  reading_ = true;
  const std::uint64_t changes = local_changes_;
  const bool sent = commands_->command(
      {"EVAL", kReconcileScript, "2", key("backends"), key("holds"), key("hold:")},
      [this, changes](const redisReply* reply, const std::string& error) {
        reading_ = false;
        reconciled(reply, error, changes != local_changes_);
        if (read_again_ && commands_->connected()) {
          read_again_ = false;
          reconcile();
        }
      });
  if (!sent) {
    reading_ = false;
    unreachable(commands_->lastError().empty() ? "not connected" : commands_->lastError());
  }
}

void FleetClient::reconciled(const void* raw, const std::string& error, bool stale_holds) {
  const auto* reply = static_cast<const redisReply*>(raw);
  std::string problem = replyError(reply, error);
  if (problem.empty() && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
                          reply->element[0]->type != REDIS_REPLY_ARRAY ||
                          reply->element[1]->type != REDIS_REPLY_ARRAY)) {
    problem = "unexpected reply to the state read";
  }
  if (!problem.empty()) {
    unreachable(problem);
    return;
  }
  const redisReply* backends = reply->element[0];
  for (std::size_t i = 0; i + 1 < backends->elements; i += 2) {
    std::string backend(textOf(backends->element[i]));
    std::optional<Verdict> verdict = decodeVerdict(textOf(backends->element[i + 1]));
    if (!verdict) {
      continue;
    }
    auto it = verdicts_.find(backend);
    if (it != verdicts_.end() && !newer(*verdict, it->second)) {
      continue;
    }
    verdicts_[backend] = *verdict;
    if (hooks_.apply_drain &&
        hooks_.apply_drain(backend, verdict->drained, verdict->drained && verdict->move_sessions)) {
      logging::log(logging::Level::kInfo, "fleet", "backend {} {} fleet-wide by node {}", backend,
                   verdict->drained ? "drained" : "enabled", verdict->node);
    }
  }
  if (!stale_holds) {
    const redisReply* holds = reply->element[1];
    std::vector<std::pair<std::string, std::int64_t>> remaining;
    for (std::size_t i = 0; i + 1 < holds->elements; i += 2) {
      std::string_view ms = textOf(holds->element[i + 1]);
      std::int64_t value = 0;
      std::from_chars(ms.data(), ms.data() + ms.size(), value);
      remaining.emplace_back(std::string(textOf(holds->element[i])), value);
    }
    HoldTable next;
    next.replace(remaining, Clock::now());
    std::vector<std::string> added;
    for (const auto& [user, until] : next.entries()) {
      if (holds_.entries().count(user) == 0) {
        added.push_back(user);
      }
    }
    std::size_t removed = 0;
    for (const auto& [user, until] : holds_.entries()) {
      removed += next.entries().count(user) == 0 ? 1 : 0;
    }
    if (!added.empty() || removed > 0) {
      logging::log(logging::Level::kInfo, "fleet", "user holds: {} held ({} new, {} ended)",
                   next.entries().size(), added.size(), removed);
    }
    holds_ = std::move(next);
    gate_.setHolds(holds_);
    if (!added.empty() && hooks_.bye_users) {
      hooks_.bye_users(added);
    }
  } else {
    read_again_ = true;  // a local hold or release crossed this read
  }
  if (!synced_) {
    logging::log(logging::Level::kInfo, "fleet", "fleet state read from {}", commands_->where());
  }
  synced_ = true;
  last_error_.clear();
  gate_.setRefusing(false);
  if (hooks_.health) {
    hooks_.health(true, "");
  }
}

void FleetClient::vote() {
  if (!commands_->connected()) {
    return;
  }
  if (voting_) {
    vote_again_ = true;
    return;
  }
  std::string mine;
  if (hooks_.unhealthy_here) {
    for (const std::string& backend : hooks_.unhealthy_here()) {
      mine += backend;
      mine += '\n';
    }
  }
  voting_ = commands_->command({"EVAL", kVoteScript, "1", key("voters"), key("alive:"), node_,
                                std::to_string(kAliveTtl.count()), key("events"), mine},
                               [this](const redisReply* reply, const std::string& error) {
                                 voting_ = false;
                                 voted(reply, error);
                                 if (vote_again_) {
                                   vote_again_ = false;
                                   vote();
                                 }
                               });
}

void FleetClient::voted(const void* raw, const std::string& error) {
  const auto* reply = static_cast<const redisReply*>(raw);
  if (!replyError(reply, error).empty() || reply->type != REDIS_REPLY_ARRAY) {
    return;  // the state read reports the outage; the last verdicts stay
  }
  QuorumView next;
  for (std::size_t i = 0; i + 1 < reply->elements; i += 2) {
    ++next.live_nodes;
    std::string_view votes = textOf(reply->element[i + 1]);
    while (!votes.empty()) {
      std::size_t end = votes.find('\n');
      std::string_view backend = votes.substr(0, end);
      if (!backend.empty()) {
        ++next.votes[std::string(backend)];
      }
      votes = end == std::string_view::npos ? std::string_view() : votes.substr(end + 1);
    }
  }
  next.needed = quorumNeeded(next.live_nodes, config_.health_quorum);
  for (const std::string& backend :
       quorumDrains(next.votes, next.live_nodes, config_.health_quorum)) {
    next.drained.insert(backend);
  }
  for (const std::string& backend : next.drained) {
    if (quorum_.drained.count(backend) == 0) {
      logging::log(logging::Level::kWarn, "fleet",
                   "backend {} drained fleet-wide: Unhealthy on {} of {} live nodes (quorum {})",
                   backend, next.votes[backend], next.live_nodes, next.needed);
      if (hooks_.apply_quorum) {
        hooks_.apply_quorum(backend, true);
      }
    }
  }
  for (const std::string& backend : quorum_.drained) {
    if (next.drained.count(backend) == 0) {
      logging::log(logging::Level::kInfo, "fleet",
                   "backend {} restored fleet-wide: Unhealthy on {} of {} live nodes (quorum {})",
                   backend, next.votes[backend], next.live_nodes, next.needed);
      if (hooks_.apply_quorum) {
        hooks_.apply_quorum(backend, false);
      }
    }
  }
  quorum_ = std::move(next);
}

std::chrono::milliseconds FleetClient::refreshEvery() const {
  return std::clamp<Millis>(std::chrono::duration_cast<Millis>(config_.session_ttl / 3),
                            Millis(100), Millis(5'000));
}

void FleetClient::onEvent(std::string_view message) {
  auto word = [&message]() {
    std::size_t space = message.find(' ');
    std::string_view out = message.substr(0, space);
    message = space == std::string_view::npos ? std::string_view() : message.substr(space + 1);
    return std::string(out);
  };
  if (message.rfind("kick ", 0) == 0) {
    word();
    std::string request = word();
    std::string user(message);
    if (request.empty() || user.empty() || !hooks_.kick_user) {
      return;
    }
    std::weak_ptr<int> alive = alive_;
    hooks_.kick_user(user, [this, alive, request, user](std::size_t kicked) {
      if (alive.expired()) {
        return;
      }
      logging::log(logging::Level::kInfo, "fleet", "kick --fleet of user {}: {} session{} here",
                   user, kicked, kicked == 1 ? "" : "s");
      commands_->command({"PUBLISH", key("events"),
                          "kicked " + request + " " + node_ + " " + std::to_string(kicked)},
                         [](const redisReply*, const std::string&) {});
    });
    return;
  }
  if (message.rfind("kicked ", 0) == 0) {
    word();
    std::string request = word();
    std::string node = word();
    std::size_t count = 0;
    std::from_chars(message.data(), message.data() + message.size(), count);
    if (auto it = kicks_.find(request); it != kicks_.end() && !node.empty()) {
      it->second.kicked[node] = count;
      finishKicks(Clock::now(), false);
    }
    return;
  }
  if (commands_->connected()) {
    reconcile();
    if (message == "health") {
      vote();  // a node's health votes changed: count them again
    }
  }
}

}  // namespace portico::proxy::fleet
