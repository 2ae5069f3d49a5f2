// Fleet mode on the control loop: the FleetClient's hooks into the workers
// and the health model, and the admin socket's fleet commands.
#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "control/control_loop.h"
#include "portico/json_text.h"
#include "portico/logging.h"
#include "routing.h"

namespace portico::proxy {

namespace {

using nlohmann::json;

constexpr std::chrono::milliseconds kMaxHold{7 * 24 * 3600 * 1000LL};

std::string ok(json body) {
  body["ok"] = true;
  return jsonText(body);
}

std::string fail(const std::string& message) {
  return jsonText(json{{"ok", false}, {"error", message}});
}

// A user name fit to be a Redis key and a log field.
bool goodUser(const std::string& user) {
  if (user.empty() || user.size() > 256) {
    return false;
  }
  for (char ch : user) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7f) {
      return false;
    }
  }
  return true;
}

json statusJson(const ControlLoop& c) {
  const fleet::FleetClient& f = *c.fleet;
  json verdicts = json::object();
  for (const auto& [backend, v] : f.verdicts()) {
    verdicts[backend] = json{{"drained", v.drained},
                             {"move_sessions", v.move_sessions},
                             {"by", v.node},
                             {"stamp_ms", v.stamp_ms}};
  }
  json holds = json::array();
  const auto now = fleet::Clock::now();
  for (const auto& [user, until] : f.holds().entries()) {
    if (until > now) {
      holds.push_back(
          json{{"user", user},
               {"remaining_ms",
                std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count()}});
    }
  }
  const fleet::QuorumView& q = f.quorum();
  json health = json::object();
  for (const auto& [backend, count] : q.votes) {
    health[backend] = json{{"unhealthy_on", count}, {"drained", q.drained.count(backend) != 0}};
  }
  for (const std::string& backend : q.drained) {
    if (!health.contains(backend)) {
      health[backend] = json{{"unhealthy_on", 0}, {"drained", true}};
    }
  }
  return json{{"node", f.node()},
              {"live_nodes", q.live_nodes},
              {"health_quorum", q.needed},
              {"health", health},
              {"redis", f.where()},
              {"connected", f.connected()},
              {"last_error", f.lastError()},
              {"on_redis_down", c.config->config.fleet.on_redis_down},
              {"refusing_logins", f.refusing()},
              {"backends", verdicts},
              {"holds", holds}};
}

}  // namespace

void startFleet(ControlLoop& c) {
  const FleetConfig& config = c.config->config.fleet;
  if (!config.enabled()) {
    return;
  }
  fleet::FleetHooks hooks;
  hooks.apply_drain = [&c](const std::string& backend, bool drained, bool move_sessions) {
    return c.view->setDrainedByOperator(backend, drained, move_sessions);
  };
  hooks.bye_users = [&c](const std::vector<std::string>& users) {
    for (auto& w : c.workers) {
      w->post([users](Worker& worker) { worker.byeUsers(users); });
    }
  };
  hooks.health = [&c](bool good, const std::string& error) {
    if (c.health) {
      c.health->recordFleetResult(good, error);
    }
  };
  hooks.unhealthy_here = [&c] { return c.view->drainedByResponder(); };
  hooks.apply_quorum = [&c](const std::string& backend, bool drained) {
    c.view->setDrainedByFleet(backend, drained, drained && c.config->config.health.move_sessions);
  };
  hooks.limits_on = [&c] { return c.config->config.limits.max_sessions_per_user > 0; };
  hooks.list_sessions = [&c](std::function<void(fleet::FleetHooks::Entries)> done) {
    gather<std::vector<SessionInfo>>(
        c, [](Worker& w) { return w.listSessions(SessionFilter{}); },
        [done = std::move(done)](std::vector<std::vector<SessionInfo>> all) {
          const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count();
          fleet::FleetHooks::Entries entries;
          for (const auto& worker : all) {
            for (const SessionInfo& s : worker) {
              if (s.backend.empty()) {
                continue;  // not logged in
              }
              entries.emplace_back(fmt::format("{:016x}", s.id),
                                   jsonText(json{{"user", s.user},
                                                 {"client", s.client},
                                                 {"backend", s.backend},
                                                 {"since_ms", now_ms - s.age_ms}}));
            }
          }
          done(std::move(entries));
        });
  };
  hooks.kick_user = [&c](const std::string& user, std::function<void(std::size_t)> done) {
    SessionFilter filter;
    filter.user = user;
    gather<std::size_t>(
        c, [filter](Worker& w) { return w.kick(filter); },
        [done = std::move(done)](std::vector<std::size_t> counts) {
          std::size_t total = 0;
          for (std::size_t n : counts) {
            total += n;
          }
          done(total);
        });
  };
  hooks.penalty_limits = [&c] {
    const Limits& l = c.config->config.limits;
    return fleet::FleetHooks::PenaltyLimits{l.login_failures_per_ip, l.login_failures_per_user,
                                            l.login_failure_window};
  };
  c.fleet = std::make_unique<fleet::FleetClient>(&c.loop, config, c.shared.fleet_gate,
                                                 c.shared.user_sessions, c.shared.login_penalties,
                                                 std::move(hooks));
  c.view->setOnResponderChange([&c] {
    if (c.fleet) {
      c.fleet->healthChanged();
    }
  });
  c.fleet->start();
}

void publishOperatorDrain(ControlLoop& c, const std::string& backend, bool drained,
                          bool move_sessions, json result, AdminServer::Reply reply) {
  if (!c.fleet) {
    reply(ok(std::move(result)));
    return;
  }
  c.fleet->publishVerdict(
      backend, drained, move_sessions,
      [result = std::move(result), reply = std::move(reply)](const std::string& error) mutable {
        result["fleet"] = error.empty() ? "published" : "this node only for now: " + error;
        reply(ok(std::move(result)));
      });
}

void fleetSessions(ControlLoop& c, const SessionFilter& filter, AdminServer::Reply reply) {
  if (!c.fleet) {
    reply(fail("sessions --fleet: fleet mode is off ([fleet] redis is not set)"));
    return;
  }
  c.fleet->readRegistry([filter, reply = std::move(reply)](
                            std::vector<fleet::RegistryEntry> entries, const std::string& error) {
    if (!error.empty()) {
      reply(fail("sessions --fleet: " + error));
      return;
    }
    json list = json::array();
    std::map<std::string, std::size_t> per_node;
    for (const fleet::RegistryEntry& e : entries) {
      json value = json::parse(e.value, nullptr, false);
      if (!value.is_object()) {
        continue;
      }
      SessionInfo info;
      info.id = std::strtoull(e.id.c_str(), nullptr, 16);
      info.user = value.value("user", "");
      info.client = value.value("client", "");
      info.backend = value.value("backend", "");
      if (!filter.matches(info)) {
        continue;
      }
      ++per_node[e.node];
      list.push_back(json{{"node", e.node},
                          {"id", e.id},
                          {"user", info.user},
                          {"client", info.client},
                          {"backend", info.backend},
                          {"since_ms", value.value("since_ms", std::int64_t{0})}});
    }
    reply(ok(json{{"sessions", list}, {"count", list.size()}, {"nodes", per_node}}));
  });
}

void fleetKick(ControlLoop& c, const std::string& user, AdminServer::Reply reply) {
  if (!c.fleet) {
    reply(fail("kick --fleet: fleet mode is off ([fleet] redis is not set)"));
    return;
  }
  if (!goodUser(user)) {
    reply(fail("kick --fleet: bad user name"));
    return;
  }
  logging::log(logging::Level::kWarn, "admin", "kick --fleet of user {}", user);
  c.fleet->kickEverywhere(
      user, [user, reply = std::move(reply)](const std::map<std::string, std::size_t>& kicked,
                                             std::size_t asked, const std::string& error) {
        if (!error.empty()) {
          reply(fail("kick --fleet: " + error));
          return;
        }
        std::size_t total = 0;
        for (const auto& [node, n] : kicked) {
          total += n;
        }
        json body{{"user", user},
                  {"kicked", total},
                  {"nodes", kicked},
                  {"nodes_asked", asked},
                  {"nodes_answered", kicked.size()}};
        if (total == 0 && kicked.size() >= asked) {
          reply(fail(fmt::format("kick: no matching session on any of {} node{}", asked,
                                 asked == 1 ? "" : "s")));
          return;
        }
        reply(ok(std::move(body)));
      });
}

void fleetCommand(ControlLoop& c, const std::vector<std::string>& words, AdminServer::Reply reply) {
  const std::string& command = words.front();
  if (!c.fleet) {
    reply(fail(command + ": fleet mode is off ([fleet] redis is not set)"));
    return;
  }
  if (command == "fleet") {
    if (words.size() != 1) {
      reply(fail("usage: fleet"));
      return;
    }
    reply(ok(json{{"fleet", statusJson(c)}}));
    return;
  }
  const std::string verb = words.size() > 1 ? words[1] : "";
  if (verb == "list" && words.size() == 2) {
    reply(ok(json{{"holds", statusJson(c)["holds"]}}));
    return;
  }
  const char* usage = "usage: user hold USER --ttl DURATION | user release USER | user list";
  if (verb == "hold") {
    std::optional<Millis> ttl;
    std::string user;
    for (std::size_t i = 2; i < words.size(); ++i) {
      if (words[i] == "--ttl" && i + 1 < words.size()) {
        ttl = parseDuration(words[++i]);
        if (!ttl) {
          reply(fail("user hold: bad --ttl '" + words[i] + "' (e.g. 90s, 10m, 2h)"));
          return;
        }
      } else if (user.empty() && words[i].rfind("--", 0) != 0) {
        user = words[i];
      } else {
        reply(fail(usage));
        return;
      }
    }
    if (user.empty() || !ttl) {
      reply(fail(usage));
      return;
    }
    if (ttl->count() < 1000 || *ttl > kMaxHold) {
      reply(fail("user hold: --ttl must be from 1s to 7 days"));
      return;
    }
    user = normaliseUser(user);
    if (!goodUser(user)) {
      reply(fail("user hold: bad user name"));
      return;
    }
    logging::log(logging::Level::kWarn, "admin", "user {} held fleet-wide for {} ms", user,
                 ttl->count());
    c.fleet->hold(
        user, *ttl, [user, ttl = *ttl, reply = std::move(reply)](const std::string& error) {
          reply(ok(
              json{{"user", user},
                   {"held", true},
                   {"ttl_ms", ttl.count()},
                   {"fleet", error.empty() ? "published" : "this node only for now: " + error}}));
        });
    return;
  }
  if (verb == "release" && words.size() == 3) {
    std::string user = normaliseUser(words[2]);
    if (!goodUser(user)) {
      reply(fail("user release: bad user name"));
      return;
    }
    logging::log(logging::Level::kWarn, "admin", "user {} released fleet-wide", user);
    c.fleet->release(user, [user, reply = std::move(reply)](const std::string& error) {
      reply(ok(json{{"user", user},
                    {"held", false},
                    {"fleet", error.empty() ? "published" : "this node only for now: " + error}}));
    });
    return;
  }
  reply(fail(usage));
}

}  // namespace portico::proxy
