// FleetClient, per-user sessions across the fleet: this node's session
// counts and registry written to Redis and the other nodes' read back (for
// limits.max_sessions_per_user and `porticoctl sessions --fleet`), kicks
// sent to every node, and failed logins counted per IP and per user for the
// login penalties. The rest of the client is fleet_client.cc.
#include <hiredis/hiredis.h>

#include <algorithm>
#include <charconv>
#include <set>
#include <utility>

#include "fleet/fleet_client.h"
#include "fleet/fleet_redis.h"
#include "portico/logging.h"

namespace portico::proxy::fleet {

namespace {

// This node's session counts (KEYS[1]) rewritten when ARGV[4] is "w"
// (ARGV[5..]: user, count pairs), then every other live node's counts. A
// node whose counts and registry keys have both expired leaves the index.
// ARGV: key prefix, node, ttl ms, "w" or "".
constexpr const char* kCountsScript = R"lua(
if ARGV[4] == 'w' then
  redis.call('DEL', KEYS[1])
  for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[2])
end
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if n ~= ARGV[2] then
    local c = ARGV[1] .. 'counts:' .. n
    if redis.call('EXISTS', c) == 1 then
      out[#out + 1] = redis.call('HGETALL', c)
    elseif redis.call('EXISTS', ARGV[1] .. 'sessions:' .. n) == 0 then
      redis.call('SREM', KEYS[2], n)
    end
  end
end
return out
)lua";

// This node's registry (KEYS[1]) replaced by ARGV[3..] (id, value pairs).
// ARGV: node, ttl ms.
constexpr const char* kRegistryWriteScript = R"lua(
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
)lua";

// Every node's registry: {node, {id, value, ...}, ...}. ARGV: key prefix.
constexpr const char* kRegistryReadScript = R"lua(
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. 'sessions:' .. n
  if redis.call('EXISTS', k) == 1 then
    out[#out + 1] = n
    out[#out + 1] = redis.call('HGETALL', k)
  elseif redis.call('EXISTS', ARGV[1] .. 'counts:' .. n) == 0 then
    redis.call('SREM', KEYS[1], n)
  end
end
return out
)lua";

// Failed logins (ARGV[7..]: ip, user pairs) counted in a sliding window per
// IP and per user; an IP or user that reaches its limit is penalised until
// the window has passed (KEYS[1]: score = end). Returns the penalised.
// ARGV: key prefix, now ms, window ms, per-ip limit, per-user limit, node.
constexpr const char* kFailuresScript = R"lua(
local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local limits = {ip = tonumber(ARGV[4]), user = tonumber(ARGV[5])}
for i = 7, #ARGV, 2 do
  local ids = {ip = ARGV[i], user = ARGV[i + 1]}
  for _, kind in ipairs({'ip', 'user'}) do
    local id = ids[kind]
    if limits[kind] > 0 and id ~= '' then
      local k = ARGV[1] .. 'fail:' .. kind .. ':' .. id
      redis.call('ZADD', k, now, ARGV[6] .. ':' .. now .. ':' .. i)
      redis.call('ZREMRANGEBYSCORE', k, '-inf', now - window)
      redis.call('PEXPIRE', k, window)
      if redis.call('ZCARD', k) >= limits[kind] then
        redis.call('ZADD', KEYS[1], now + window, kind .. ':' .. id)
        redis.call('PEXPIRE', KEYS[1], window)
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
)lua";

}  // namespace

void FleetClient::publishCounts(Clock::time_point now) {
  if (counts_busy_) {
    return;
  }
  if (!hooks_.limits_on || !hooks_.limits_on()) {
    if (counts_published_) {
      counts_.setRemote({});
      counts_published_ = false;
    }
    return;
  }
  const std::uint64_t generation = counts_.generation();
  const bool write =
      !counts_published_ || generation != counts_generation_ || now - counts_at_ >= refreshEvery();
  std::vector<std::string> args{
      "EVAL",          kCountsScript,           "2",   key("counts:") + node_,
      key("nodes"),    std::string(kKeyPrefix), node_, std::to_string(config_.session_ttl.count()),
      write ? "w" : ""};
  if (write) {
    counts_generation_ = generation;
    counts_at_ = now;
    for (const auto& [user, count] : counts_.localCounts()) {
      args.push_back(user);
      args.push_back(std::to_string(count));
    }
  }
  counts_busy_ =
      commands_->command(args, [this, write](const redisReply* reply, const std::string& error) {
        counts_busy_ = false;
        std::string problem = replyError(reply, error);
        if (problem.empty() && reply->type != REDIS_REPLY_ARRAY) {
          problem = "unexpected reply to the session counts";
        }
        if (!problem.empty()) {
          counts_published_ = false;
          logging::log(logging::Level::kDebug, "fleet", "session counts: {}", problem);
          return;
        }
        CountMap others;
        for (std::size_t i = 0; i < reply->elements; ++i) {
          const redisReply* node = reply->element[i];
          if (node->type != REDIS_REPLY_ARRAY) {
            continue;
          }
          for (std::size_t j = 0; j + 1 < node->elements; j += 2) {
            addCounts(others, std::string(textOf(node->element[j])),
                      std::string(textOf(node->element[j + 1])));
          }
        }
        counts_.setRemote(std::move(others));
        if (write) {
          counts_published_ = true;
        }
      });
}

void FleetClient::publishRegistry(Clock::time_point now) {
  if (registry_busy_ || !hooks_.list_sessions || now - registry_at_ < refreshEvery()) {
    return;
  }
  registry_busy_ = true;
  registry_at_ = now;
  std::weak_ptr<int> alive = alive_;
  hooks_.list_sessions([this, alive](FleetHooks::Entries entries) {
    if (alive.expired()) {
      return;
    }
    std::vector<std::string> args{"EVAL",
                                  kRegistryWriteScript,
                                  "2",
                                  key("sessions:") + node_,
                                  key("nodes"),
                                  node_,
                                  std::to_string(config_.session_ttl.count())};
    for (auto& [id, value] : entries) {
      args.push_back(std::move(id));
      args.push_back(std::move(value));
    }
    registry_busy_ =
        commands_->command(args, [this](const redisReply* reply, const std::string& error) {
          registry_busy_ = false;
          if (std::string problem = replyError(reply, error); !problem.empty()) {
            registry_at_ = {};  // try again at the next tick
            logging::log(logging::Level::kDebug, "fleet", "session registry: {}", problem);
          }
        });
  });
}

void FleetClient::readRegistry(RegistryDone done) {
  const bool sent = commands_->command(
      {"EVAL", kRegistryReadScript, "1", key("nodes"), std::string(kKeyPrefix)},
      [done](const redisReply* reply, const std::string& error) {
        std::string problem = replyError(reply, error);
        if (problem.empty() && reply->type != REDIS_REPLY_ARRAY) {
          problem = "unexpected reply to the registry read";
        }
        if (!problem.empty()) {
          done({}, problem);
          return;
        }
        std::vector<RegistryEntry> out;
        for (std::size_t i = 0; i + 1 < reply->elements; i += 2) {
          std::string node(textOf(reply->element[i]));
          const redisReply* sessions = reply->element[i + 1];
          if (sessions->type != REDIS_REPLY_ARRAY) {
            continue;
          }
          for (std::size_t j = 0; j + 1 < sessions->elements; j += 2) {
            out.push_back(RegistryEntry{node, std::string(textOf(sessions->element[j])),
                                        std::string(textOf(sessions->element[j + 1]))});
          }
        }
        done(std::move(out), "");
      });
  if (!sent) {
    done({}, commands_->where() + " unavailable: " + commands_->lastError());
  }
}

void FleetClient::kickEverywhere(const std::string& user, KickDone done) {
  if (!commands_->connected()) {
    done({}, 0, commands_->where() + " unavailable: " + commands_->lastError());
    return;
  }
  std::string request = randomToken();
  PendingKick& kick = kicks_[request];
  kick.user = user;
  kick.deadline = Clock::now() + kKickWait;
  kick.done = std::move(done);
  commands_->command({"PUBLISH", key("events"), "kick " + request + " " + user},
                     [this, request](const redisReply* reply, const std::string& error) {
                       auto it = kicks_.find(request);
                       if (it == kicks_.end()) {
                         return;
                       }
                       std::string problem = replyError(reply, error);
                       if (problem.empty() && reply->type != REDIS_REPLY_INTEGER) {
                         problem = "unexpected reply to PUBLISH";
                       }
                       if (!problem.empty()) {
                         KickDone finish = std::move(it->second.done);
                         kicks_.erase(it);
                         finish({}, 0, problem);
                         return;
                       }
                       it->second.asked =
                           static_cast<std::size_t>(std::max<long long>(0, reply->integer));
                       it->second.published = true;
                       finishKicks(Clock::now(), false);
                     });
}

void FleetClient::finishKicks(Clock::time_point now, bool all) {
  std::vector<PendingKick> finished;
  for (auto it = kicks_.begin(); it != kicks_.end();) {
    const PendingKick& k = it->second;
    if (all || now >= k.deadline || (k.published && k.kicked.size() >= k.asked)) {
      finished.push_back(std::move(it->second));
      it = kicks_.erase(it);
    } else {
      ++it;
    }
  }
  for (PendingKick& k : finished) {
    k.done(k.kicked, k.asked, k.published ? "" : "no answer from Redis");
  }
}

void FleetClient::publishFailures() {
  if (penalties_busy_) {
    return;
  }
  FleetHooks::PenaltyLimits limits =
      hooks_.penalty_limits ? hooks_.penalty_limits() : FleetHooks::PenaltyLimits{};
  std::vector<std::pair<std::string, std::string>> notes = penalties_.take();
  if (limits.per_ip == 0 && limits.per_user == 0) {
    penalties_.setPenalised({});
    return;
  }
  std::vector<std::string> args{"EVAL",
                                kFailuresScript,
                                "1",
                                key("penalties"),
                                std::string(kKeyPrefix),
                                std::to_string(wallMs()),
                                std::to_string(std::max<std::int64_t>(1000, limits.window.count())),
                                std::to_string(limits.per_ip),
                                std::to_string(limits.per_user),
                                node_};
  for (auto& [ip, user] : notes) {
    args.push_back(std::move(ip));
    args.push_back(std::move(user));
  }
  penalties_busy_ =
      commands_->command(args, [this](const redisReply* reply, const std::string& error) {
        penalties_busy_ = false;
        std::string problem = replyError(reply, error);
        if (problem.empty() && reply->type != REDIS_REPLY_ARRAY) {
          problem = "unexpected reply to the login failures";
        }
        if (!problem.empty()) {
          logging::log(logging::Level::kDebug, "fleet", "login failures: {}", problem);
          return;
        }
        std::set<std::string> penalised;
        for (std::size_t i = 0; i < reply->elements; ++i) {
          penalised.emplace(textOf(reply->element[i]));
        }
        penalties_.setPenalised(std::move(penalised));
      });
}

}  // namespace portico::proxy::fleet
