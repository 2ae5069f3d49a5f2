// porticoctl: the command-line client of Portico's admin socket (admin.h).
//
//   porticoctl [--socket PATH] [--json] [--timeout 10s] <command words...>
//
// Sends one command line, reads one JSON reply line (bounded by --timeout)
// and prints it as tables / "key: value" lines, or raw with --json.
// Exit status: 0 when the reply says ok:true, 1 when it says ok:false (the
// error goes to stderr), 2 for usage, connection, timeout and protocol
// errors.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "portico/json_text.h"
#include "porticoctl.h"

namespace portico::ctl {
namespace {

// ---------------------------------------------------------------------------
// Command line
//
// Each admin command is a CLI11 subcommand whose callback turns what was
// parsed into the admin request's words; the values it reads live in Args,
// which outlives the parse.

using Words = std::vector<std::string>;

struct Args {
  std::string socket;
  bool json_output = false;
  std::string timeout = "10s";
  std::string pl_user, pl_ip, pl_ttl;                              // protocol-log on
  std::string health_glob;                                         // health
  std::string probe_spec, probe_target;                            // probe
  std::string backend_name;                                        // backend
  bool move_sessions = false;                                      //
  std::string s_user, s_ip, s_backend;                             // sessions
  std::string kick_id, kick_user;                                  // kick
  bool fleet_wide = false;                                         // sessions, kick --fleet
  std::string m_name, m_target, mo_target, mo_duration, mo_state;  // monitor
  std::string mr_name, mr_target;                                  // monitor override remove
  std::string comp_name, comp_state;                               // component
  std::string lf_user;                                             // lookup flush
  std::string hold_user, hold_ttl;                                 // user hold|release
};

// Adds "--name value" to the words when the option was given.
void addOption(Words& words, const CLI::Option* opt, const char* name, const std::string& value) {
  if (opt->count() > 0) {
    words.emplace_back(name);
    words.push_back(value);
  }
}

void usage(const char* message) {
  throw Failure{message};
}

void addProtocolLog(CLI::App& app, Args& a, Words& w) {
  auto* plog = app.add_subcommand("protocol-log",
                                  "Switch the IMAP protocol log on or off, or show its state");
  plog->require_subcommand(1);
  auto* on = plog->add_subcommand("on", "Log every session's commands (or only matching ones)");
  auto* user = on->add_option("--user", a.pl_user, "Only this user's sessions");
  auto* ip = on->add_option("--ip", a.pl_ip, "Only clients in this address or CIDR");
  auto* ttl = on->add_option("--ttl", a.pl_ttl, "Switch off by itself after this long (e.g. 15m)");
  on->callback([&a, &w, user, ip, ttl] {
    w = {"protocol-log", "on"};
    addOption(w, user, "--user", a.pl_user);
    addOption(w, ip, "--ip", a.pl_ip);
    addOption(w, ttl, "--ttl", a.pl_ttl);
  });
  for (const auto& [verb, what] :
       {std::pair{"off", "Stop logging"}, std::pair{"status", "Show the protocol log's state"}}) {
    plog->add_subcommand(verb, what)->callback([&w, verb = std::string(verb)] {
      w = {"protocol-log", verb};
    });
  }
}

void addHealthAndProbe(CLI::App& app, Args& a, Words& w) {
  auto* health =
      app.add_subcommand("health", "Monitors and their alert values (like Get-ServerHealth)");
  health->add_option("set-glob", a.health_glob, "Health set name pattern (e.g. IMAP.*)");
  health->callback([&a, &w] {
    w = {"health"};
    if (!a.health_glob.empty()) {
      w.push_back(a.health_glob);
    }
  });
  auto* probe = app.add_subcommand("probe", "Run one probe now (like Invoke-MonitoringProbe)");
  probe->add_option("probe", a.probe_spec, "SET\\PROBE, e.g. IMAP.Protocol\\ImapSelfTestProbe")
      ->required();
  probe->add_option("target", a.probe_target, "Target resource (a backend name)");
  probe->callback([&a, &w] {
    w = {"probe", a.probe_spec};
    if (!a.probe_target.empty()) {
      w.push_back(a.probe_target);
    }
  });
}

void addBackend(CLI::App& app, Args& a, Words& w) {
  auto* backend = app.add_subcommand("backend", "List, drain or enable backends");
  backend->require_subcommand(1);
  backend->add_subcommand("list", "Backends with their state and load")->callback([&w] {
    w = {"backend", "list"};
  });
  auto* drain = backend->add_subcommand("drain", "Send no new logins to a backend");
  drain->add_option("name", a.backend_name, "Backend name")->required();
  drain->add_flag("--move-sessions", a.move_sessions,
                  "Also end its sessions between commands (BYE)");
  drain->callback([&a, &w] {
    w = {"backend", "drain", a.backend_name};
    if (a.move_sessions) {
      w.emplace_back("--move-sessions");
    }
  });
  auto* enable = backend->add_subcommand("enable", "Undo an operator's drain");
  enable->add_option("name", a.backend_name, "Backend name")->required();
  enable->callback([&a, &w] { w = {"backend", "enable", a.backend_name}; });
}

void addSessionsAndKick(CLI::App& app, Args& a, Words& w) {
  auto* sessions = app.add_subcommand("sessions", "List sessions");
  auto* user = sessions->add_option("--user", a.s_user, "Only this user's");
  auto* ip = sessions->add_option("--ip", a.s_ip, "Only from this client address");
  auto* backend = sessions->add_option("--backend", a.s_backend, "Only on this backend");
  sessions->add_flag("--fleet", a.fleet_wide, "Every node's (fleet session registry)");
  sessions->callback([&a, &w, user, ip, backend] {
    w = {"sessions"};
    addOption(w, user, "--user", a.s_user);
    addOption(w, ip, "--ip", a.s_ip);
    addOption(w, backend, "--backend", a.s_backend);
    if (a.fleet_wide) {
      w.emplace_back("--fleet");
    }
  });
  auto* kick = app.add_subcommand("kick", "End a session (or all of a user's) with BYE");
  auto* id =
      kick->add_option("session-id", a.kick_id, "Session id (16 hex digits, from `sessions`)");
  auto* kick_user = kick->add_option("--user", a.kick_user, "End all of this user's sessions");
  kick->add_flag("--fleet", a.fleet_wide, "With --user: on every node of the fleet");
  kick->callback([&a, &w, id, kick_user] {
    if ((id->count() > 0) == (kick_user->count() > 0)) {
      usage("kick needs a SESSION-ID or --user U (one of them)");
    }
    if (a.fleet_wide && kick_user->count() == 0) {
      usage("kick --fleet goes with --user U");
    }
    w = {"kick"};
    if (id->count() > 0) {
      w.push_back(a.kick_id);
    } else {
      addOption(w, kick_user, "--user", a.kick_user);
    }
    if (a.fleet_wide) {
      w.emplace_back("--fleet");
    }
  });
}

void addMonitor(CLI::App& app, Args& a, Words& w) {
  auto* monitor = app.add_subcommand(
      "monitor", "Override a monitor: disable, repairing, enable, or override for a while");
  monitor->require_subcommand(1);
  for (const char* verb : {"disable", "repairing", "enable"}) {
    const std::string name = verb;
    auto* sub = monitor->add_subcommand(
        name, name == "enable" ? "Clear an override"
                               : "Show the monitor as " +
                                     std::string(name == "disable" ? "Disabled" : "Repairing") +
                                     " until cleared");
    sub->add_option("monitor", a.m_name, "Monitor name, e.g. ImapDeepTestMonitor")->required();
    sub->add_option("target", a.m_target, "Target resource (a backend name)");
    sub->callback([&a, &w, name] {
      w = {"monitor", name, a.m_name};
      if (!a.m_target.empty()) {
        w.push_back(a.m_target);
      }
    });
  }
  auto* over = monitor->add_subcommand(
      "override", "Override a monitor for a while (like Add-ServerMonitoringOverride -Duration)");
  over->add_option("monitor", a.m_name, "Monitor name, e.g. ImapDeepTestMonitor");
  auto* target =
      over->add_option("--target", a.mo_target, "Only this target (default: every target)");
  over->add_option("--duration", a.mo_duration, "How long (e.g. 30m, 2h, 7d; at most 60d)");
  auto* state =
      over->add_option("--state", a.mo_state, "Disabled (default), Repairing, Healthy or Degraded");
  auto* remove = over->add_subcommand("remove", "Remove an override now");
  remove->add_option("monitor", a.mr_name, "Monitor name")->required();
  auto* remove_target =
      remove->add_option("--target", a.mr_target, "Only this target (default: every)");
  // The parent's callback runs after its subcommand's: `remove` has set
  // the words by then.
  remove->callback([&a, &w, remove_target] {
    w = {"monitor", "override", "remove", a.mr_name};
    addOption(w, remove_target, "--target", a.mr_target);
  });
  over->callback([&a, &w, remove, target, state] {
    if (remove->parsed()) {
      return;
    }
    if (a.m_name.empty() || a.mo_duration.empty()) {
      usage(
          "monitor override needs MONITOR and --duration (e.g. monitor override "
          "ImapDeepTestMonitor --target mbx1 --duration 2h)");
    }
    w = {"monitor", "override", a.m_name, "--duration", a.mo_duration};
    addOption(w, target, "--target", a.mo_target);
    addOption(w, state, "--state", a.mo_state);
  });
}

void addOthers(CLI::App& app, Args& a, Words& w) {
  auto* component = app.add_subcommand(
      "component", "Show or set ImapProxy Active/Inactive (like Set-ServerComponentState)");
  component->add_option("component", a.comp_name, "ImapProxy")->check(CLI::IsMember({"ImapProxy"}));
  component->add_option("state", a.comp_state, "active | inactive (Inactive: /readyz answers 503)")
      ->check(CLI::IsMember({"active", "inactive"}));
  component->callback([&a, &w] {
    if (a.comp_name.empty() != a.comp_state.empty()) {
      usage("component needs both ImapProxy and active|inactive");
    }
    w = {"component"};
    if (!a.comp_name.empty()) {
      w.push_back(a.comp_name);
      w.push_back(a.comp_state);
    }
  });

  auto* lookup = app.add_subcommand("lookup", "The directory lookup stage ([lookup])");
  lookup->require_subcommand(1);
  auto* flush = lookup->add_subcommand("flush", "Drop cached directory answers on every worker");
  auto* user = flush->add_option("--user", a.lf_user, "Only this user's");
  flush->callback([&a, &w, user] {
    w = {"lookup", "flush"};
    addOption(w, user, "--user", a.lf_user);
  });

  auto* user_cmd = app.add_subcommand("user", "Fleet user holds for mailbox moves ([fleet])");
  user_cmd->require_subcommand(1);
  auto* hold =
      user_cmd->add_subcommand("hold", "Refuse the user's logins on every node for a while");
  hold->add_option("name", a.hold_user, "User name")->required();
  hold->add_option("--ttl", a.hold_ttl, "How long (e.g. 90s, 10m, 2h)")->required();
  hold->callback([&a, &w] { w = {"user", "hold", a.hold_user, "--ttl", a.hold_ttl}; });
  auto* release = user_cmd->add_subcommand("release", "End the user's hold on every node");
  release->add_option("name", a.hold_user, "User name")->required();
  release->callback([&a, &w] { w = {"user", "release", a.hold_user}; });
  user_cmd->add_subcommand("list", "Users held now")->callback([&w] { w = {"user", "list"}; });

  // Commands of one word.
  const std::pair<const char*, const char*> plain[] = {
      {"actions", "What responders and operators did, newest first (GET /health/actions)"},
      {"stats", "Counters: connections, bytes, commands per backend"},
      {"reload", "Re-read the configuration file"},
      {"fleet", "Fleet mode: this node, its Redis link, shared drains and holds"},
  };
  for (const auto& [name, what] : plain) {
    app.add_subcommand(name, what)->callback([&w, name = std::string(name)] { w = {name}; });
  }
  auto* help = app.add_subcommand("commands", "The commands the admin socket knows (its `help`)");
  help->alias("help");
  help->callback([&w] { w = {"help"}; });
}

// Sends the request and prints the reply; the process's exit status.
int request(const Args& a, const Words& w, std::chrono::milliseconds timeout) {
  std::string reply_text;
  json reply;
  try {
    reply_text = exchange(a.socket, requestLine(w), timeout);
    reply = json::parse(reply_text);
  } catch (const json::exception& e) {
    std::fprintf(stderr, "porticoctl: %s: the reply is not JSON (%s): %.200s\n",
                 shown(a.socket).c_str(), e.what(), shown(reply_text).c_str());
    return kExitUsage;
  }
  if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean()) {
    std::fprintf(stderr, "porticoctl: %s: the reply has no \"ok\": %.200s\n",
                 shown(a.socket).c_str(), shown(reply_text).c_str());
    return kExitUsage;
  }
  bool ok = reply["ok"].get<bool>();
  if (a.json_output) {
    // Re-serialised with \uXXXX for all but ASCII: the same JSON value, and
    // no byte of it can act on the terminal.
    std::printf("%s\n", portico::jsonText(reply, -1, true).c_str());
  } else if (ok) {
    printHuman(w.front(), w, reply);
  }
  if (!ok) {
    const json& error = reply.contains("error") ? reply["error"] : json("command failed");
    std::fprintf(stderr, "porticoctl: %s\n", text(error).c_str());
    return kExitRefused;
  }
  return kExitOk;
}

int run(int argc, char** argv) {
  Args a;
  const char* env_socket = std::getenv("PORTICO_ADMIN_SOCKET");
  a.socket = env_socket != nullptr && *env_socket != '\0' ? env_socket : "/run/portico/admin.sock";

  CLI::App app{"porticoctl: control a running Portico IMAP proxy through its admin socket"};
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.add_option("-s,--socket", a.socket,
                 "Admin socket (default $PORTICO_ADMIN_SOCKET or /run/portico/admin.sock)");
  app.add_flag("-j,--json", a.json_output, "Print the reply's raw JSON");
  auto* timeout_opt =
      app.add_option("-t,--timeout", a.timeout,
                     "How long to wait for the reply (e.g. 10s, 500ms, 2m; default 10s, "
                     "for probe 5m)");
  app.require_subcommand(1);
  app.fallthrough();  // --json etc. also after the command words

  Words w;
  addProtocolLog(app, a, w);
  addHealthAndProbe(app, a, w);
  addBackend(app, a, w);
  addSessionsAndKick(app, a, w);
  addMonitor(app, a, w);
  addOthers(app, a, w);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message (and a --help hint)
    return kExitUsage;
  }
  if (w.empty()) {
    usage("no command given (try --help)");
  }
  if (timeout_opt->count() == 0 && w.front() == "probe") {
    a.timeout = "5m";  // a probe answers after its own timeout and retries
  }
  std::optional<std::chrono::milliseconds> timeout = parseTimeout(a.timeout);
  if (!timeout) {
    std::fprintf(stderr, "porticoctl: bad --timeout '%s' (e.g. 10s, 500ms, 2m)\n",
                 a.timeout.c_str());
    return kExitUsage;
  }
  return request(a, w, *timeout);
}

}  // namespace
}  // namespace portico::ctl

int main(int argc, char** argv) {
  try {
    return portico::ctl::run(argc, argv);
  } catch (const portico::ctl::Failure& f) {
    std::fprintf(stderr, "porticoctl: %s\n", f.message.c_str());
    return portico::ctl::kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "porticoctl: %s\n", e.what());
    return portico::ctl::kExitUsage;
  }
}
