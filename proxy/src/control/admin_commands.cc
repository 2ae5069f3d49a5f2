// The admin socket's commands (see admin.h for the list). Each answers with
// one JSON object; queries that need the workers (sessions, kick) gather
// their answers through the control loop's task queue.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <memory>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "control/control_loop.h"
#include "control/metrics.h"
#include "portico/ascii.h"
#include "portico/json_text.h"
#include "portico/logging.h"

namespace portico::proxy {

namespace {

using nlohmann::json;

// Replies are built with jsonText: user names, backend error text and
// request words may be any bytes, and must never make serialising throw.
std::string ok(json body = json::object()) {
  body["ok"] = true;
  return jsonText(body);
}

std::string fail(const std::string& message) {
  return jsonText(json{{"ok", false}, {"error", message}});
}

// Answers a request from a callback that runs later on the control loop,
// outside the admin server's request boundary: an exception while building
// the reply becomes an error reply there too.
template <typename Build>
void answerLater(const AdminServer::Reply& reply, const char* command, Build build) {
  std::string text;
  try {
    text = build();
  } catch (const std::exception& e) {
    logging::log(logging::Level::kError, "admin", "command '{}' failed: {}", command, e.what());
    text = fail(fmt::format("internal error in '{}': {}", command, e.what()));
  }
  reply(std::move(text));
}

// Options "--name value" and flags "--name" after the positional words.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  std::string error;
};

Args parseArgs(const std::vector<std::string>& words, std::size_t from,
               const std::vector<std::string>& with_value, const std::vector<std::string>& flags) {
  Args args;
  for (std::size_t i = from; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w.rfind("--", 0) != 0) {
      args.positional.push_back(w);
      continue;
    }
    if (std::find(flags.begin(), flags.end(), w) != flags.end()) {
      args.options[w] = "";
    } else if (std::find(with_value.begin(), with_value.end(), w) != with_value.end()) {
      if (i + 1 >= words.size()) {
        args.error = "option " + w + " needs a value";
        return args;
      }
      args.options[w] = words[++i];
    } else {
      args.error = "unknown option " + w;
      return args;
    }
  }
  return args;
}

std::string isoTime(std::chrono::system_clock::time_point t) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

json protocolLogStatus(ControlLoop& c) {
  TraceSettings t = c.shared.trace.settings();
  json out{{"enabled", t.on},
           {"directory", c.config->config.protocol_log.directory},
           {"filters", {{"user", t.user}, {"ip", t.network ? t.network->text : ""}}}};
  if (t.expires) {
    auto left = std::chrono::duration_cast<std::chrono::seconds>(*t.expires -
                                                                 std::chrono::system_clock::now());
    out["ttl_left_seconds"] = std::max<std::int64_t>(0, left.count());
    out["expires"] = isoTime(*t.expires);
  } else {
    out["ttl_left_seconds"] = nullptr;
  }
  if (c.protocol_log) {
    logging::ProtocolLog::Stats s = c.protocol_log->stats();
    out["writer_running"] = c.protocol_log->enabled();
    out["current_file"] = s.current_file;
    out["bytes_written"] = s.bytes_written;
    out["records_written"] = s.records_written;
    out["records_dropped"] = s.records_dropped;
    out["last_error"] = s.last_error;
  }
  return out;
}

}  // namespace

std::string protocolLogStatusText(ControlLoop& c) {
  return protocolLogStatus(c).dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

void protocolLogCommand(ControlLoop& c, const std::vector<std::string>& words,
                        AdminServer::Reply& reply) {
  if (words.size() < 2) {
    reply(fail("usage: protocol-log on [--user U] [--ip CIDR] [--ttl 15m] | off | status"));
    return;
  }
  const std::string& verb = words[1];
  if (verb == "status") {
    reply(ok(json{{"protocol_log", protocolLogStatus(c)}}));
    return;
  }
  if (verb == "off") {
    c.shared.trace.set(TraceSettings{});
    logging::log(logging::Level::kInfo, "admin", "protocol-log off");
    reply(ok(json{{"protocol_log", protocolLogStatus(c)}}));
    return;
  }
  if (verb != "on") {
    reply(fail("protocol-log: expected on, off or status, not '" + verb + "'"));
    return;
  }
  Args args = parseArgs(words, 2, {"--user", "--ip", "--ttl"}, {});
  if (!args.error.empty() || !args.positional.empty()) {
    reply(fail(args.error.empty() ? "protocol-log on: unexpected '" + args.positional.front() + "'"
                                  : args.error));
    return;
  }
  TraceSettings settings;
  settings.on = true;
  if (auto it = args.options.find("--user"); it != args.options.end()) {
    settings.user = normaliseUser(it->second);
  }
  if (auto it = args.options.find("--ip"); it != args.options.end()) {
    settings.network = parseCidr(it->second);
    if (!settings.network) {
      reply(fail("protocol-log on: bad --ip '" + it->second + "' (expected an address or CIDR)"));
      return;
    }
  }
  if (auto it = args.options.find("--ttl"); it != args.options.end()) {
    std::optional<Millis> ttl = parseDuration(it->second);
    if (!ttl || ttl->count() <= 0) {
      reply(fail("protocol-log on: bad --ttl '" + it->second + "' (e.g. 90s, 15m, 2h)"));
      return;
    }
    settings.expires = std::chrono::system_clock::now() + *ttl;
  }
  if (Status started = ensureProtocolLog(c); !started.ok()) {
    reply(fail("protocol-log on: cannot start the writer: " + started.message()));
    return;
  }
  logging::log(logging::Level::kInfo, "admin", "protocol-log on{}{}{}",
               settings.user.empty() ? "" : " user=" + settings.user,
               settings.network ? " ip=" + settings.network->text : "",
               settings.expires ? " ttl=" + args.options["--ttl"] : "");
  c.shared.trace.set(std::move(settings));
  reply(ok(json{{"protocol_log", protocolLogStatus(c)}}));
}

json sessionJson(const SessionInfo& s) {
  return json{{"id", fmt::format("{:016x}", s.id)},
              {"client", s.client},
              {"user", s.user},
              {"backend", s.backend},
              {"state", s.state},
              {"command", s.command},
              {"command_ms", s.command_ms},
              {"commands_in_flight", s.commands_in_flight},
              {"bytes_in", s.bytes_in},
              {"bytes_out", s.bytes_out},
              {"age_ms", s.age_ms}};
}

SessionFilter sessionFilterOf(const Args& args) {
  SessionFilter filter;
  if (auto it = args.options.find("--user"); it != args.options.end()) {
    filter.user = normaliseUser(it->second);
  }
  if (auto it = args.options.find("--ip"); it != args.options.end()) {
    filter.ip = it->second;
  }
  if (auto it = args.options.find("--backend"); it != args.options.end()) {
    filter.backend = it->second;
  }
  return filter;
}

void sessionsCommand(ControlLoop& c, const std::vector<std::string>& words,
                     AdminServer::Reply reply) {
  Args args = parseArgs(words, 1, {"--user", "--ip", "--backend"}, {"--fleet"});
  if (!args.error.empty() || !args.positional.empty()) {
    reply(fail(args.error.empty() ? "sessions: unexpected '" + args.positional.front() + "'"
                                  : args.error));
    return;
  }
  const SessionFilter filter = sessionFilterOf(args);
  if (args.options.count("--fleet") != 0) {
    fleetSessions(c, filter, std::move(reply));  // fleet/fleet_control.cc
    return;
  }
  gather<std::vector<SessionInfo>>(
      c, [filter](Worker& w) { return w.listSessions(filter); },
      [reply](std::vector<std::vector<SessionInfo>> all) {
        answerLater(reply, "sessions", [&] {
          json list = json::array();
          for (const auto& worker : all) {
            for (const SessionInfo& s : worker) {
              list.push_back(sessionJson(s));
            }
          }
          return ok(json{{"sessions", list}, {"count", list.size()}});
        });
      });
}

void kickCommand(ControlLoop& c, const std::vector<std::string>& words, AdminServer::Reply reply) {
  Args args = parseArgs(words, 1, {"--user"}, {"--fleet"});
  if (!args.error.empty()) {
    reply(fail(args.error));
    return;
  }
  if (args.options.count("--fleet") != 0) {
    auto it = args.options.find("--user");
    if (it == args.options.end() || !args.positional.empty()) {
      reply(fail("usage: kick --user U --fleet"));
      return;
    }
    fleetKick(c, normaliseUser(it->second), std::move(reply));  // fleet/fleet_control.cc
    return;
  }
  SessionFilter filter;
  if (auto it = args.options.find("--user"); it != args.options.end()) {
    filter.user = normaliseUser(it->second);
  } else if (args.positional.size() == 1) {
    const std::string& id = args.positional.front();
    char* end = nullptr;
    std::uint64_t value = std::strtoull(id.c_str(), &end, 16);
    if (id.empty() || id.size() > 16 || end == nullptr || *end != '\0') {
      reply(fail("kick: '" + id + "' is not a session id (16 hex digits)"));
      return;
    }
    filter.id = value;
  } else {
    reply(fail("usage: kick SESSION-ID | kick --user U [--fleet]"));
    return;
  }
  gather<std::size_t>(
      c, [filter](Worker& w) { return w.kick(filter); },
      [reply](std::vector<std::size_t> counts) {
        answerLater(reply, "kick", [&] {
          std::size_t total = 0;
          for (std::size_t n : counts) {
            total += n;
          }
          return total == 0 ? fail("kick: no matching session") : ok(json{{"kicked", total}});
        });
      });
}

// lookup flush [--user U]: every worker drops its cached directory answers.
void lookupCommand(ControlLoop& c, const std::vector<std::string>& words,
                   AdminServer::Reply reply) {
  if (words.size() < 2 || words[1] != "flush") {
    reply(fail("usage: lookup flush [--user U]"));
    return;
  }
  Args args = parseArgs(words, 2, {"--user"}, {});
  if (!args.error.empty() || !args.positional.empty()) {
    reply(fail(args.error.empty() ? "usage: lookup flush [--user U]" : args.error));
    return;
  }
  std::string user;
  if (auto it = args.options.find("--user"); it != args.options.end()) {
    user = normaliseUser(it->second);
    if (user.empty()) {
      reply(fail("lookup flush: --user needs a user name"));
      return;
    }
  }
  const std::string kind = lookupKindName(c.config->config.lookup.kind);
  gather<std::size_t>(
      c, [user](Worker& w) { return w.flushLookupCache(user); },
      [reply, user, kind](std::vector<std::size_t> counts) {
        answerLater(reply, "lookup", [&] {
          std::size_t total = 0;
          for (std::size_t n : counts) {
            total += n;
          }
          json out{{"flushed", total}, {"kind", kind}};
          if (!user.empty()) {
            out["user"] = user;
          }
          return ok(out);
        });
      });
}

void backendCommand(ControlLoop& c, const std::vector<std::string>& words,
                    AdminServer::Reply& reply) {
  std::string verb = words.size() > 1 ? words[1] : "";
  if (verb == "list") {
    // backendsJson() is {"backends": [...]}: answer its list, not the
    // object, so the reply is {"backends": [...], "ok": true}.
    reply(ok(json{
        {"backends", json::parse(c.health->backendsJson()).value("backends", json::array())}}));
    return;
  }
  if (verb == "drain" || verb == "enable") {
    Args args = parseArgs(words, 2, {}, {"--move-sessions"});
    if (!args.error.empty() || args.positional.size() != 1) {
      reply(fail(args.error.empty() ? "usage: backend " + verb + " NAME" +
                                          (verb == "drain" ? " [--move-sessions]" : "")
                                    : args.error));
      return;
    }
    if (verb == "enable" && args.options.count("--move-sessions") != 0) {
      reply(fail("backend enable: --move-sessions goes with drain"));
      return;
    }
    const std::string& name = args.positional.front();
    bool drain = verb == "drain";
    if (!c.view->setDrainedByOperator(name, drain, args.options.count("--move-sessions") != 0)) {
      reply(fail("backend " + verb + ": no backend named '" + name + "'"));
      return;
    }
    publishOperatorDrain(c, name, drain, args.options.count("--move-sessions") != 0,
                         json{{"backend", name}, {"drained_by_operator", drain}}, std::move(reply));
    return;
  }
  reply(fail("usage: backend list | backend drain NAME [--move-sessions] | backend enable NAME"));
}

void probeCommand(ControlLoop& c, const std::vector<std::string>& words, AdminServer::Reply reply) {
  if (words.size() < 2 || words.size() > 3) {
    reply(fail("usage: probe SET\\PROBE [TARGET]"));
    return;
  }
  const std::string& spec = words[1];
  auto sep = spec.find_first_of("\\/");
  if (sep == std::string::npos) {
    reply(fail("probe: expected SET\\PROBE, e.g. IMAP.Protocol\\ImapDeepTestProbe"));
    return;
  }
  std::string set = spec.substr(0, sep);
  std::string probe = spec.substr(sep + 1);
  std::string target = words.size() == 3 ? words[2] : "";
  bool started = c.health->invokeProbe(set, probe, target, [reply](const health::ProbeResult& r) {
    answerLater(reply, "probe", [&] {
      json trace = json::array();
      for (const std::string& t : r.trace) {
        trace.push_back(t);
      }
      return ok(json{
          {"ResultType", health::resultTypeName(r.result)},
          {"Probe", r.probe},
          {"HealthSet", r.health_set},
          {"TargetResource", r.target},
          {"SampleValue", r.sample_ms},
          {"Error", r.error},
          {"FailedStep",
           r.result == health::ResultType::kSucceeded ? "" : health::probeStepName(r.failed_step)},
          {"RetryCount", r.retry_count},
          {"Trace", trace}});
    });
  });
  if (!started) {
    reply(fail("probe: no probe " + set + "\\" + probe +
               (target.empty() ? "" : " for target " + target)));
  }
}

// "2h", "90m", "30s", "500ms" (parseDuration) or "7d".
std::optional<Millis> parseOverrideDuration(const std::string& text) {
  if (text.size() > 1 && text.back() == 'd') {
    auto hours = parseDuration(text.substr(0, text.size() - 1) + "h");
    if (hours && hours->count() <= Millis::max().count() / 24) {
      return *hours * 24;
    }
    return std::nullopt;
  }
  return parseDuration(text);
}

// Exchange's longest override is 60 days.
constexpr Millis kMaxOverride{60LL * 24 * 3'600'000};

// monitor override MONITOR [--target B] --duration D [--state S]
// monitor override remove MONITOR [--target B]
// (Add-ServerMonitoringOverride / Remove-ServerMonitoringOverride.)
void overrideCommand(ControlLoop& c, const std::vector<std::string>& words, const std::string& by,
                     AdminServer::Reply& reply) {
  const bool remove = words.size() > 2 && words[2] == "remove";
  Args args = parseArgs(words, remove ? 3 : 2, {"--target", "--duration", "--state"}, {});
  if (!args.error.empty() || args.positional.size() != 1) {
    reply(fail(args.error.empty() ? "usage: monitor override MONITOR [--target B] --duration D "
                                    "[--state Disabled|Repairing|Healthy|Degraded] | monitor "
                                    "override remove MONITOR [--target B]"
                                  : "monitor override: " + args.error));
    return;
  }
  const std::string& monitor = args.positional.front();
  std::optional<std::string> target;
  if (auto it = args.options.find("--target"); it != args.options.end()) {
    target = it->second;
  }
  const std::string where = monitor + (target ? " for target " + *target : "");
  if (remove) {
    if (args.options.count("--duration") != 0 || args.options.count("--state") != 0) {
      reply(fail("monitor override remove: takes only MONITOR and --target"));
      return;
    }
    std::vector<std::string> cleared = c.health->removeMonitorOverride(monitor, target);
    if (cleared.empty()) {
      reply(fail("monitor override remove: no override on " + where));
      return;
    }
    logging::log(logging::Level::kInfo, "admin", "monitor override on {} removed by {}", where, by);
    reply(ok(json{{"removed", cleared}}));
    return;
  }
  auto duration_it = args.options.find("--duration");
  if (duration_it == args.options.end()) {
    reply(fail("monitor override: --duration is required (e.g. --duration 2h)"));
    return;
  }
  std::optional<Millis> duration = parseOverrideDuration(duration_it->second);
  if (!duration || duration->count() <= 0 || *duration > kMaxOverride) {
    reply(fail("monitor override: bad --duration '" + duration_it->second +
               "' (e.g. 30m, 2h, 7d; at most 60 days)"));
    return;
  }
  health::AlertValue state = health::AlertValue::kDisabled;
  if (auto it = args.options.find("--state"); it != args.options.end()) {
    const std::string lower = asciiLowered(it->second);
    if (lower == "disabled") {
      state = health::AlertValue::kDisabled;
    } else if (lower == "repairing") {
      state = health::AlertValue::kRepairing;
    } else if (lower == "healthy") {
      state = health::AlertValue::kHealthy;
    } else if (lower == "degraded") {
      state = health::AlertValue::kDegraded;
    } else {
      reply(fail("monitor override: bad --state '" + it->second +
                 "' (Disabled, Repairing, Healthy or Degraded)"));
      return;
    }
  }
  Result<std::vector<std::string>> added =
      c.health->addMonitorOverride(monitor, target, state, *duration, by);
  if (!added.ok()) {
    reply(fail("monitor override: " + added.message()));
    return;
  }
  const std::vector<std::string>& set = *added;
  const auto expires = std::chrono::system_clock::now() + *duration;
  logging::log(logging::Level::kInfo, "admin", "monitor override {} on {} for {} by {}",
               health::alertValueName(state), where, duration_it->second, by);
  reply(ok(json{{"overrides", set},
                {"state", health::alertValueName(state)},
                {"expires", isoTime(expires)},
                {"by", by}}));
}

// monitor disable|repairing|enable NAME [TARGET]: an operator's override
// (Disabled silences a monitor and releases its responders; Repairing
// keeps a drain in place while someone works on the backend), until
// cleared; `monitor override` sets one that expires by itself.
void monitorCommand(ControlLoop& c, const std::vector<std::string>& words, const std::string& by,
                    AdminServer::Reply& reply) {
  if (words.size() >= 2 && words[1] == "override") {
    overrideCommand(c, words, by, reply);
    return;
  }
  if (words.size() < 3 || words.size() > 4) {
    reply(fail("usage: monitor disable|repairing|enable MONITOR [TARGET] | monitor override ..."));
    return;
  }
  const std::string& verb = words[1];
  health::AlertValue value;
  if (verb == "disable") {
    value = health::AlertValue::kDisabled;
  } else if (verb == "repairing") {
    value = health::AlertValue::kRepairing;
  } else if (verb == "enable") {
    value = health::AlertValue::kUnknown;  // clears the override
  } else {
    reply(fail("monitor: expected disable, repairing, enable or override, not '" + verb + "'"));
    return;
  }
  std::string target = words.size() == 4 ? words[3] : "";
  if (!c.health->setMonitorOverride(words[2], target, value, by)) {
    reply(
        fail("monitor: no monitor " + words[2] + (target.empty() ? "" : " for target " + target)));
    return;
  }
  logging::log(logging::Level::kInfo, "admin", "monitor {}{} {} by {}", words[2],
               target.empty() ? "" : "/" + target, verb, by);
  reply(ok(json{{"monitor", words[2]}, {"target", target}, {"override", verb}}));
}

// Wraps `reply` so that the command lands in the action history (GET
// /health/actions) with who sent it and how it ended.
AdminServer::Reply recorded(ControlLoop& c, const AdminRequest& request, std::string action,
                            std::string target, AdminServer::Reply reply) {
  std::string line;
  for (const std::string& w : request.words) {
    line += (line.empty() ? "" : " ") + w;
  }
  return [&c, action = std::move(action), target = std::move(target), line = std::move(line),
          by = request.peer, reply = std::move(reply)](std::string text) {
    const json answer = json::parse(text, nullptr, false);
    std::string result = "done";
    if (!answer.is_object() || !answer.value("ok", false)) {
      result = "refused: " + (answer.is_object() ? answer.value("error", std::string("?")) : "?");
    } else if (answer.contains("kicked")) {
      result = fmt::format("kicked {}", answer["kicked"].dump());
    } else if (answer.contains("expires")) {
      result = "until " + answer.value("expires", std::string());
    }
    if (c.health) {
      c.health->recordAction(health::ActionRecord{std::chrono::system_clock::now(), "operator",
                                                  action, target, "admin socket: " + line, by,
                                                  result});
    }
    reply(std::move(text));
  };
}

// What an operator command acts on, for the action history; "" for the
// commands that only read.
std::pair<std::string, std::string> actionOf(const std::vector<std::string>& words) {
  auto word = [&](std::size_t i) { return i < words.size() ? words[i] : std::string(); };
  auto option = [&](const std::string& name) {
    for (std::size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] == name) {
        return words[i + 1];
      }
    }
    return std::string();
  };
  const std::string& command = words.front();
  if (command == "backend" && (word(1) == "drain" || word(1) == "enable")) {
    return {"backend " + word(1), word(2)};
  }
  if (command == "user" && (word(1) == "hold" || word(1) == "release")) {
    std::string user = word(2) == "--ttl" ? word(4) : word(2);
    return {"user " + word(1), user};
  }
  if (command == "kick") {
    const std::string user = option("--user");
    return {"kick", user.empty() ? "session " + word(1) : "user " + user};
  }
  if (command == "monitor" && word(1) == "override") {
    const bool remove = word(2) == "remove";
    const std::string monitor = word(remove ? 3 : 2);
    const std::string target = option("--target");
    return {remove ? "monitor override remove" : "monitor override",
            target.empty() ? monitor : monitor + "/" + target};
  }
  if (command == "monitor" && words.size() >= 3) {
    return {"monitor " + word(1), word(3).empty() ? word(2) : word(2) + "/" + word(3)};
  }
  if (command == "protocol-log" && (word(1) == "on" || word(1) == "off")) {
    const std::string user = option("--user");
    const std::string ip = option("--ip");
    std::string target = user.empty() ? "" : "user " + user;
    target += ip.empty() ? "" : (target.empty() ? "ip " : ", ip ") + ip;
    return {"protocol-log " + word(1), target.empty() ? "all sessions" : target};
  }
  if (command == "reload") {
    return {"reload", "configuration"};
  }
  if (command == "lookup" && word(1) == "flush") {
    const std::string user = option("--user");
    return {"lookup flush", user.empty() ? "all users" : "user " + user};
  }
  if (command == "component" && words.size() == 3) {
    return {"component " + word(2), word(1)};
  }
  return {};
}

void statsCommand(ControlLoop& c, AdminServer::Reply& reply) {
  std::vector<const WorkerStats*> stats;
  for (const auto& w : c.workers) {
    stats.push_back(&w->workerStats());
  }
  json out = statsJson(snapshot(stats), *c.config);
  out["workers"] = c.workers.size();
  reply(ok(std::move(out)));
}

}  // namespace

void handleAdminCommand(ControlLoop& c, const AdminRequest& request, AdminServer::Reply reply) {
  const std::vector<std::string>& words = request.words;
  const std::string& command = words.front();
  if (!c.stopping) {
    if (auto [action, target] = actionOf(words); !action.empty()) {
      reply = recorded(c, request, std::move(action), std::move(target), std::move(reply));
    }
  }
  if (c.stopping) {
    reply(fail("shutting down"));
  } else if (command == "protocol-log") {
    protocolLogCommand(c, words, reply);
  } else if (command == "health") {
    if (words.size() > 2) {
      reply(fail("usage: health [SET-GLOB]"));
      return;
    }
    reply(ok(
        json{{"health", json::parse(c.health->healthJson(words.size() == 2 ? words[1] : "*"))}}));
  } else if (command == "probe") {
    probeCommand(c, words, std::move(reply));
  } else if (command == "backend") {
    backendCommand(c, words, reply);
  } else if (command == "sessions") {
    sessionsCommand(c, words, std::move(reply));
  } else if (command == "kick") {
    kickCommand(c, words, std::move(reply));
  } else if (command == "lookup") {
    lookupCommand(c, words, std::move(reply));
  } else if (command == "user" || command == "fleet") {
    fleetCommand(c, words, std::move(reply));  // fleet/fleet_control.cc
  } else if (command == "monitor") {
    monitorCommand(c, words, request.peer, reply);
  } else if (command == "component") {
    // Get-/Set-ServerComponentState for Portico's one component.
    if (words.size() == 3 && words[1] == "ImapProxy" &&
        (words[2] == "active" || words[2] == "inactive")) {
      c.health->setComponentActive(words[2] == "active", request.peer);
      logging::log(logging::Level::kInfo, "admin", "component ImapProxy set {} by {}", words[2],
                   request.peer);
    } else if (words.size() != 1) {
      reply(fail("usage: component [ImapProxy active|inactive]"));
      return;
    }
    reply(ok(json{{"component", "ImapProxy"},
                  {"state", c.health->componentActive() ? "Active" : "Inactive"}}));
  } else if (command == "actions") {
    if (words.size() != 1) {
      reply(fail("usage: actions"));
      return;
    }
    reply(ok(json{{"actions", json::parse(c.health->actionsJson()).value("actions", json::array())},
                  {"responders", c.health->dryRun() ? "dry-run" : "act"}}));
  } else if (command == "stats") {
    statsCommand(c, reply);
  } else if (command == "reload") {
    if (Status done = reloadConfig(c); done.ok()) {
      reply(ok(json{{"reloaded", true}}));
    } else {
      reply(fail("reload refused: " + done.message()));
    }
  } else if (command == "help") {
    reply(ok(json{
        {"commands",
         {"protocol-log on [--user U] [--ip CIDR] [--ttl D] | off | status", "health [SET-GLOB]",
          "probe SET\\PROBE [TARGET]", "backend list | drain NAME [--move-sessions] | enable NAME",
          "sessions [--user U] [--ip IP] [--backend B] [--fleet]",
          "kick SESSION-ID | --user U [--fleet]",
          "monitor disable|repairing|enable MONITOR [TARGET]",
          "monitor override MONITOR [--target B] --duration D [--state S] | override remove "
          "MONITOR [--target B]",
          "actions", "component [ImapProxy active|inactive]", "stats", "reload",
          "lookup flush [--user U]", "user hold USER --ttl D | release USER | list", "fleet"}}}));
  } else {
    reply(fail("unknown command '" + command + "' (try 'help')"));
  }
}

}  // namespace portico::proxy
