// porticoctl: the command-line client of Portico's admin socket (admin.h).
//
//   porticoctl [--socket PATH] [--json] [--timeout 10s] <command words...>
//
// Sends one command line, reads one JSON reply line (bounded by --timeout)
// and prints it as tables / "key: value" lines, or raw with --json.
// Exit status: 0 when the reply says ok:true, 1 when it says ok:false (the
// error goes to stderr), 2 for usage, connection, timeout and protocol
// errors.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "counters.h"
#include "portico/json_text.h"
#include "portico/logging.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;
constexpr std::size_t kMaxReply = 256u << 20;

// A usage, connection or protocol problem: message, exit status 2.
struct Failure {
  std::string message;
};

// ---------------------------------------------------------------------------
// Request line

// Quotes a word the way admin.cc's splitAdminLine reads it: inside double
// quotes a backslash takes the next byte literally.
std::string quoteWord(const std::string& word) {
  if (word.find('\n') != std::string::npos) {
    throw Failure{"a command word cannot contain a newline"};
  }
  bool plain = !word.empty() && word.find_first_of(" \t\r\"\\") == std::string::npos;
  if (plain) {
    return word;
  }
  std::string out = "\"";
  for (char c : word) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string requestLine(const std::vector<std::string>& words) {
  std::string line;
  for (const std::string& w : words) {
    line += (line.empty() ? "" : " ") + quoteWord(w);
  }
  return line + "\n";
}

// "10s", "500ms", "2m", "1.5s", "3" (seconds) -> milliseconds.
std::optional<std::chrono::milliseconds> parseTimeout(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  if (i == 0) {
    return std::nullopt;
  }
  double value = 0;
  try {
    std::size_t used = 0;
    value = std::stod(text.substr(0, i), &used);
    if (used != i) {
      return std::nullopt;
    }
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string unit = text.substr(i);
  double ms = 0;
  if (unit.empty() || unit == "s") {
    ms = value * 1000;
  } else if (unit == "ms") {
    ms = value;
  } else if (unit == "m") {
    ms = value * 60'000;
  } else if (unit == "h") {
    ms = value * 3'600'000;
  } else {
    return std::nullopt;
  }
  if (!(ms > 0) || ms > 86'400'000.0) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(ms)));
}

// ---------------------------------------------------------------------------
// Socket

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int msLeft(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<std::int64_t>(left, 0, 1 << 30));
}

std::string timeoutText(std::chrono::milliseconds t) {
  if (t.count() % 1000 == 0) {
    return fmt::format("{}s", t.count() / 1000);
  }
  return fmt::format("{}ms", t.count());
}

// Sends `line` and returns the reply line (without its '\n').
std::string exchange(const std::string& path, const std::string& line,
                     std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Failure{fmt::format("cannot connect to {}: the socket path is {} (at most {} bytes)",
                              path, path.empty() ? "empty" : "too long",
                              sizeof(addr.sun_path) - 1)};
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) {
    throw Failure{fmt::format("cannot create a socket: {}", std::strerror(errno))};
  }
  // A Unix socket connects at once or fails; EAGAIN means the listen
  // backlog is full, so retry until the deadline.
  while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    if (err == EINTR) {
      continue;
    }
    if (err == EAGAIN && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    throw Failure{fmt::format("cannot connect to {}: {} (is Portico running? --socket?)", path,
                              std::strerror(err))};
  }

  std::size_t sent = 0;
  std::string send_error;
  while (sent < line.size()) {
    ssize_t n = ::send(fd.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd.get(), POLLOUT, 0};
      if (::poll(&p, 1, msLeft(deadline)) == 0) {
        throw Failure{
            fmt::format("{}: could not send the request within {}", path, timeoutText(timeout))};
      }
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      // Portico may have answered and closed before reading the request
      // (too many connections): show its answer if there is one.
      send_error = fmt::format("{}: sending the request failed: {}", path, std::strerror(errno));
      break;
    }
    throw Failure{fmt::format("{}: sending the request failed: {}", path, std::strerror(errno))};
  }

  std::string reply;
  char buf[64 * 1024];
  for (;;) {
    auto nl = reply.find('\n');
    if (nl != std::string::npos) {
      reply.resize(nl);
      break;
    }
    pollfd p{fd.get(), POLLIN, 0};
    int rc = ::poll(&p, 1, msLeft(deadline));
    if (rc < 0 && errno == EINTR) {
      continue;
    }
    if (rc == 0) {
      throw Failure{
          fmt::format("no reply from {} within {} (--timeout)", path, timeoutText(timeout))};
    }
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      if (!send_error.empty() && reply.empty()) {
        throw Failure{send_error};
      }
      throw Failure{fmt::format("{}: reading the reply failed: {}", path, std::strerror(errno))};
    }
    if (n == 0) {
      if (reply.empty()) {
        throw Failure{!send_error.empty()
                          ? send_error
                          : fmt::format("{}: Portico closed the connection without a reply", path)};
      }
      break;  // a last line without '\n'
    }
    reply.append(buf, static_cast<std::size_t>(n));
    if (reply.size() > kMaxReply) {
      throw Failure{fmt::format("{}: reply longer than {} bytes", path, kMaxReply)};
    }
  }
  if (!reply.empty() && reply.back() == '\r') {
    reply.pop_back();
  }
  return reply;
}

// ---------------------------------------------------------------------------
// Human-readable output

// Everything printed for humans goes through shown(): a value can hold a
// client's bytes (a user name with ESC or CR LF in it), which must not
// drive the operator's terminal or forge output lines.
std::string shown(const std::string& s) {
  return portico::logging::printable(s);
}

// Text of a scalar JSON value ("-" for null or absent), safe to print.
std::string text(const json& v) {
  if (v.is_null()) {
    return "-";
  }
  if (v.is_string()) {
    return shown(v.get<std::string>());
  }
  if (v.is_boolean()) {
    return v.get<bool>() ? "true" : "false";
  }
  if (v.is_number_float()) {
    return fmt::format("{:.1f}", v.get<double>());
  }
  return portico::jsonText(v);
}

std::string field(const json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key)) {
    return "-";
  }
  std::string s = text(obj.at(key));
  return s.empty() ? "-" : s;
}

class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void add(std::vector<std::string> row) {
    row.resize(rows_.front().size());
    rows_.push_back(std::move(row));
  }
  std::size_t size() const { return rows_.size() - 1; }
  void print(std::FILE* out = stdout) const {
    std::vector<std::size_t> width(rows_.front().size(), 0);
    for (const auto& row : rows_) {
      for (std::size_t i = 0; i < row.size(); ++i) {
        width[i] = std::max(width[i], row[i].size());
      }
    }
    for (const auto& row : rows_) {
      std::string line;
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (i + 1 == row.size()) {
          line += row[i];
        } else {
          line += fmt::format("{:<{}}  ", row[i], width[i]);
        }
      }
      while (!line.empty() && line.back() == ' ') {
        line.pop_back();
      }
      std::fprintf(out, "%s\n", line.c_str());
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string ageText(const json& ms_value) {
  if (!ms_value.is_number()) {
    return "-";
  }
  auto ms = ms_value.get<std::int64_t>();
  std::int64_t s = ms / 1000;
  if (s < 60) {
    return fmt::format("{}.{}s", s, (ms % 1000) / 100);
  }
  if (s < 3600) {
    return fmt::format("{}m{:02}s", s / 60, s % 60);
  }
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

void printSessions(const json& reply) {
  Table t({"ID", "USER", "CLIENT", "BACKEND", "STATE", "COMMAND", "CMD_MS", "IN", "OUT", "AGE"});
  for (const json& s : reply.value("sessions", json::array())) {
    bool busy = !field(s, "command").empty() && field(s, "command") != "-";
    t.add({field(s, "id"), field(s, "user"), field(s, "client"), field(s, "backend"),
           field(s, "state"), busy ? field(s, "command") : "-", busy ? field(s, "command_ms") : "-",
           field(s, "bytes_in"), field(s, "bytes_out"), ageText(s.value("age_ms", json()))});
  }
  t.print();
  std::printf("%zu session%s\n", t.size(), t.size() == 1 ? "" : "s");
}

void printHealth(const json& reply) {
  const json health = reply.value("health", json::object());
  // The Override column only when some monitor has one (Add-ServerMonitoringOverride).
  const json monitors = health.value("Monitors", json::array());
  const bool any_override = std::any_of(monitors.begin(), monitors.end(), [](const json& m) {
    return m.contains("Override") && m["Override"].is_object();
  });
  std::vector<std::string> header{"Name", "TargetResource", "HealthSetName", "AlertValue",
                                  "LastTransitionTime"};
  if (any_override) {
    header.emplace_back("Override");
  }
  Table t(header);
  for (const json& m : monitors) {
    std::vector<std::string> row{field(m, "Name"), field(m, "TargetResource"),
                                 field(m, "HealthSetName"), field(m, "AlertValue"),
                                 field(m, "LastTransitionTime")};
    if (m.contains("Override") && m["Override"].is_object()) {
      const json& o = m["Override"];
      row.push_back(field(o, "State") + " until " +
                    (o.value("Expires", json()).is_null() ? "removed" : field(o, "Expires")) +
                    " by " + field(o, "By"));
    } else if (any_override) {
      row.emplace_back("-");
    }
    t.add(std::move(row));
  }
  if (health.contains("Server")) {
    std::printf(
        "Server: %s%s\n\n", text(health["Server"]).c_str(),
        health.value("Offline", false) ? " (OFFLINE: responders took it out of service)" : "");
  }
  t.print();
  const json actions = health.value("ResponderActions", json::array());
  if (!actions.empty()) {
    std::printf("\nResponder actions:\n");
    Table a({"Time", "Monitor", "TargetResource", "Step", "AlertValue", "Outcome", "Reason"});
    for (const json& x : actions) {
      a.add({field(x, "Time"), field(x, "Monitor"), field(x, "TargetResource"), field(x, "Step"),
             field(x, "AlertValue"), field(x, "Outcome"), field(x, "Reason")});
    }
    a.print();
  }
}

void printActions(const json& reply) {
  Table t({"TIME", "KIND", "ACTION", "TARGET", "BY", "RESULT", "REASON"});
  for (const json& a : reply.value("actions", json::array())) {
    t.add({field(a, "time"), field(a, "kind"), field(a, "action"), field(a, "target"),
           field(a, "by"), field(a, "result"), field(a, "reason")});
  }
  if (reply.value("responders", std::string()) == "dry-run") {
    std::printf("Responders: dry-run (actions are recorded, not done)\n\n");
  }
  t.print();
}

void printBackends(const json& reply) {
  // The reply nests the health library's {"backends": [...]} under
  // "backends"; accept a plain list too.
  json list = reply.value("backends", json::array());
  if (list.is_object()) {
    list = list.value("backends", json::array());
  }
  Table t({"NAME", "STATE", "SESSIONS", "QUEUED", "AVG_MS", "RECENT_COMMANDS"});
  for (const json& b : list) {
    t.add({field(b, "name"), field(b, "state"), field(b, "sessions"), field(b, "queued"),
           field(b, "average_processing_ms"), field(b, "recent_commands")});
  }
  t.print();
}

// A JSON key as words: "records_written" -> "records written".
std::string spaced(std::string key) {
  std::replace(key.begin(), key.end(), '_', ' ');
  return key;
}

void printProtocolLog(const json& reply) {
  const json s = reply.value("protocol_log", json::object());
  const json filters = s.value("filters", json::object());
  auto line = [](const char* key, const std::string& value) {
    std::printf("%s: %s\n", key, value.c_str());
  };
  line("enabled", field(s, "enabled"));
  line("directory", field(s, "directory"));
  line("filter user", field(filters, "user"));
  line("filter ip", field(filters, "ip"));
  if (s.contains("ttl_left_seconds") && !s["ttl_left_seconds"].is_null()) {
    line("ttl left", field(s, "ttl_left_seconds") + "s (until " + field(s, "expires") + ")");
  } else {
    line("ttl left", "-");
  }
  for (const char* key : {"writer_running", "current_file", "records_written", "records_dropped",
                          "bytes_written", "last_error"}) {
    if (s.contains(key)) {
      line(spaced(key).c_str(), field(s, key));
    }
  }
}

// One line per counter in the table, named by its stats key.
void printStats(const json& r) {
  for (const portico::proxy::CounterSpec& spec : portico::proxy::kWorkerCounters) {
    std::printf("%s: %s\n", spaced(spec.stats_key).c_str(), field(r, spec.stats_key).c_str());
  }
  std::printf("workers: %s\n", field(r, "workers").c_str());
  const json backends = r.value("backends", json::object());
  for (const auto& [name, b] : backends.items()) {
    std::string line;
    for (const portico::proxy::CounterSpec& spec : portico::proxy::kBackendCounters) {
      line += fmt::format("{} {}, ", spaced(spec.stats_key), field(b, spec.stats_key));
    }
    std::printf("\nbackend %s: %sidle %s, average %s ms\n", shown(name).c_str(), line.c_str(),
                field(b, "idle").c_str(), field(b, "average_processing_ms").c_str());
    const json commands = b.value("commands", json::object());
    if (!commands.empty()) {
      Table t({"  COMMAND", "COUNT", "NO", "BAD", "AVG_MS"});
      for (const auto& [cmd, c] : commands.items()) {
        t.add({"  " + shown(cmd), field(c, "count"), field(c, "no"), field(c, "bad"),
               c.contains("average_ms") && c["average_ms"].is_number()
                   ? fmt::format("{:.2f}", c["average_ms"].get<double>())
                   : "-"});
      }
      t.print();
    }
  }
}

void printProbe(const json& r) {
  for (const char* key : {"ResultType", "Probe", "HealthSet", "TargetResource", "SampleValue",
                          "Error", "FailedStep", "RetryCount"}) {
    std::printf("%s: %s\n", key, field(r, key).c_str());
  }
  const json trace = r.value("Trace", json::array());
  if (!trace.empty()) {
    std::printf("Trace:\n");
    for (const json& t : trace) {
      std::printf("  %s\n", text(t).c_str());
    }
  }
}

void printGeneric(const json& r) {
  for (const auto& [key, value] : r.items()) {
    if (key == "ok") {
      continue;
    }
    if (value.is_array()) {
      std::printf("%s:\n", shown(key).c_str());
      for (const json& v : value) {
        std::printf("  %s\n", text(v).c_str());
      }
    } else {
      std::printf(
          "%s: %s\n", shown(key).c_str(),
          value.is_structured() ? shown(portico::jsonText(value)).c_str() : text(value).c_str());
    }
  }
}

void printHuman(const std::string& command, const std::vector<std::string>& words, const json& r) {
  if (command == "sessions") {
    printSessions(r);
  } else if (command == "health") {
    printHealth(r);
  } else if (command == "backend" && words.size() > 1 && words[1] == "list") {
    printBackends(r);
  } else if (command == "backend") {
    std::printf("backend %s: %s\n", field(r, "backend").c_str(),
                r.value("drained_by_operator", false) ? "drained by operator" : "enabled");
  } else if (command == "protocol-log") {
    printProtocolLog(r);
  } else if (command == "stats") {
    printStats(r);
  } else if (command == "probe") {
    printProbe(r);
  } else if (command == "kick") {
    std::printf("kicked %s session%s\n", field(r, "kicked").c_str(),
                field(r, "kicked") == "1" ? "" : "s");
  } else if (command == "lookup") {
    std::printf("flushed %s cached directory answer%s\n", field(r, "flushed").c_str(),
                field(r, "flushed") == "1" ? "" : "s");
  } else if (command == "reload") {
    std::printf("configuration reloaded\n");
  } else if (command == "actions") {
    printActions(r);
  } else if (command == "component") {
    std::printf("%s: %s\n", field(r, "component").c_str(), field(r, "state").c_str());
  } else if (command == "monitor" && words.size() > 1 && words[1] == "override") {
    if (r.contains("removed")) {
      for (const json& k : r["removed"]) {
        std::printf("override removed: %s\n", text(k).c_str());
      }
    } else {
      for (const json& k : r.value("overrides", json::array())) {
        std::printf("%s: %s until %s (by %s)\n", text(k).c_str(), field(r, "state").c_str(),
                    field(r, "expires").c_str(), field(r, "by").c_str());
      }
    }
  } else {
    printGeneric(r);
  }
}

// ---------------------------------------------------------------------------
// Command line

struct Options {
  std::string socket;
  bool json_output = false;
  std::string timeout = "10s";
  std::vector<std::string> words;  // the admin command
};

// Adds "--name value" to the words when the option was given.
void addOption(std::vector<std::string>& words, const CLI::Option* opt, const char* name,
               const std::string& value) {
  if (opt->count() > 0) {
    words.emplace_back(name);
    words.push_back(value);
  }
}

int run(int argc, char** argv) {
  Options o;
  const char* env_socket = std::getenv("PORTICO_ADMIN_SOCKET");
  o.socket = env_socket != nullptr && *env_socket != '\0' ? env_socket : "/run/portico/admin.sock";

  CLI::App app{"porticoctl: control a running Portico IMAP proxy through its admin socket"};
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.add_option("-s,--socket", o.socket,
                 "Admin socket (default $PORTICO_ADMIN_SOCKET or /run/portico/admin.sock)");
  app.add_flag("-j,--json", o.json_output, "Print the reply's raw JSON");
  auto* timeout_opt =
      app.add_option("-t,--timeout", o.timeout,
                     "How long to wait for the reply (e.g. 10s, 500ms, 2m; default 10s, "
                     "for probe 5m)");
  app.require_subcommand(1);
  app.fallthrough();  // --json etc. also after the command words

  // protocol-log
  std::string pl_user, pl_ip, pl_ttl;
  auto* plog = app.add_subcommand("protocol-log",
                                  "Switch the IMAP protocol log on or off, or show its state");
  plog->require_subcommand(1);
  auto* plog_on =
      plog->add_subcommand("on", "Log every session's commands (or only matching ones)");
  auto* o_user = plog_on->add_option("--user", pl_user, "Only this user's sessions");
  auto* o_ip = plog_on->add_option("--ip", pl_ip, "Only clients in this address or CIDR");
  auto* o_ttl =
      plog_on->add_option("--ttl", pl_ttl, "Switch off by itself after this long (e.g. 15m)");
  plog->add_subcommand("off", "Stop logging");
  plog->add_subcommand("status", "Show the protocol log's state");

  // health
  std::string health_glob;
  auto* health =
      app.add_subcommand("health", "Monitors and their alert values (like Get-ServerHealth)");
  health->add_option("set-glob", health_glob, "Health set name pattern (e.g. IMAP.*)");

  // probe
  std::string probe_spec, probe_target;
  auto* probe = app.add_subcommand("probe", "Run one probe now (like Invoke-MonitoringProbe)");
  probe->add_option("probe", probe_spec, "SET\\PROBE, e.g. IMAP.Protocol\\ImapSelfTestProbe")
      ->required();
  probe->add_option("target", probe_target, "Target resource (a backend name)");

  // backend
  std::string backend_name;
  bool move_sessions = false;
  auto* backend = app.add_subcommand("backend", "List, drain or enable backends");
  backend->require_subcommand(1);
  backend->add_subcommand("list", "Backends with their state and load");
  auto* drain = backend->add_subcommand("drain", "Send no new logins to a backend");
  drain->add_option("name", backend_name, "Backend name")->required();
  drain->add_flag("--move-sessions", move_sessions, "Also end its sessions between commands (BYE)");
  auto* enable = backend->add_subcommand("enable", "Undo an operator's drain");
  enable->add_option("name", backend_name, "Backend name")->required();

  // sessions
  std::string s_user, s_ip, s_backend;
  auto* sessions = app.add_subcommand("sessions", "List sessions");
  auto* os_user = sessions->add_option("--user", s_user, "Only this user's");
  auto* os_ip = sessions->add_option("--ip", s_ip, "Only from this client address");
  auto* os_backend = sessions->add_option("--backend", s_backend, "Only on this backend");

  // kick
  std::string kick_id, kick_user;
  auto* kick = app.add_subcommand("kick", "End a session (or all of a user's) with BYE");
  auto* ok_id =
      kick->add_option("session-id", kick_id, "Session id (16 hex digits, from `sessions`)");
  auto* ok_user = kick->add_option("--user", kick_user, "End all of this user's sessions");

  // monitor overrides
  std::string m_name, m_target, mo_target, mo_duration, mo_state;
  auto* monitor = app.add_subcommand(
      "monitor", "Override a monitor: disable, repairing, enable, or override for a while");
  monitor->require_subcommand(1);
  for (const char* verb : {"disable", "repairing", "enable"}) {
    auto* sub = monitor->add_subcommand(
        verb, std::string(verb) == "enable"
                  ? "Clear an override"
                  : "Show the monitor as " +
                        std::string(std::string(verb) == "disable" ? "Disabled" : "Repairing") +
                        " until cleared");
    sub->add_option("monitor", m_name, "Monitor name, e.g. ImapDeepTestMonitor")->required();
    sub->add_option("target", m_target, "Target resource (a backend name)");
  }
  auto* m_override = monitor->add_subcommand(
      "override", "Override a monitor for a while (like Add-ServerMonitoringOverride -Duration)");
  m_override->add_option("monitor", m_name, "Monitor name, e.g. ImapDeepTestMonitor");
  auto* mo_target_opt =
      m_override->add_option("--target", mo_target, "Only this target (default: every target)");
  m_override->add_option("--duration", mo_duration, "How long (e.g. 30m, 2h, 7d; at most 60d)");
  auto* mo_state_opt = m_override->add_option("--state", mo_state,
                                              "Disabled (default), Repairing, Healthy or Degraded");
  auto* m_override_remove = m_override->add_subcommand("remove", "Remove an override now");
  std::string mr_name, mr_target;
  m_override_remove->add_option("monitor", mr_name, "Monitor name")->required();
  auto* mr_target_opt =
      m_override_remove->add_option("--target", mr_target, "Only this target (default: every)");

  std::string comp_name, comp_state;
  auto* component = app.add_subcommand(
      "component", "Show or set ImapProxy Active/Inactive (like Set-ServerComponentState)");
  component->add_option("component", comp_name, "ImapProxy")->check(CLI::IsMember({"ImapProxy"}));
  component->add_option("state", comp_state, "active | inactive (Inactive: /readyz answers 503)")
      ->check(CLI::IsMember({"active", "inactive"}));

  auto* actions = app.add_subcommand(
      "actions", "What responders and operators did, newest first (GET /health/actions)");

  std::string lf_user;
  auto* lookup = app.add_subcommand("lookup", "The directory lookup stage ([lookup])");
  lookup->require_subcommand(1);
  auto* lookup_flush =
      lookup->add_subcommand("flush", "Drop cached directory answers on every worker");
  auto* olf_user = lookup_flush->add_option("--user", lf_user, "Only this user's");

  auto* stats = app.add_subcommand("stats", "Counters: connections, bytes, commands per backend");
  auto* reload = app.add_subcommand("reload", "Re-read the configuration file");
  auto* help = app.add_subcommand("commands", "The commands the admin socket knows (its `help`)");
  help->alias("help");

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

  std::vector<std::string>& w = o.words;
  if (plog->parsed()) {
    w.push_back("protocol-log");
    if (plog_on->parsed()) {
      w.push_back("on");
      addOption(w, o_user, "--user", pl_user);
      addOption(w, o_ip, "--ip", pl_ip);
      addOption(w, o_ttl, "--ttl", pl_ttl);
    } else {
      w.push_back(plog->get_subcommands().front()->get_name());
    }
  } else if (health->parsed()) {
    w.push_back("health");
    if (!health_glob.empty()) {
      w.push_back(health_glob);
    }
  } else if (probe->parsed()) {
    w = {"probe", probe_spec};
    if (!probe_target.empty()) {
      w.push_back(probe_target);
    }
  } else if (backend->parsed()) {
    w = {"backend", backend->get_subcommands().front()->get_name()};
    if (drain->parsed() || enable->parsed()) {
      w.push_back(backend_name);
    }
    if (drain->parsed() && move_sessions) {
      w.emplace_back("--move-sessions");
    }
  } else if (sessions->parsed()) {
    w.push_back("sessions");
    addOption(w, os_user, "--user", s_user);
    addOption(w, os_ip, "--ip", s_ip);
    addOption(w, os_backend, "--backend", s_backend);
  } else if (lookup_flush->parsed()) {
    w = {"lookup", "flush"};
    addOption(w, olf_user, "--user", lf_user);
  } else if (kick->parsed()) {
    if ((ok_id->count() > 0) == (ok_user->count() > 0)) {
      std::fprintf(stderr, "porticoctl: kick needs a SESSION-ID or --user U (one of them)\n");
      return kExitUsage;
    }
    w.push_back("kick");
    if (ok_id->count() > 0) {
      w.push_back(kick_id);
    } else {
      addOption(w, ok_user, "--user", kick_user);
    }
  } else if (monitor->parsed()) {
    CLI::App* verb = monitor->get_subcommands().front();
    if (verb == m_override && m_override_remove->parsed()) {
      w = {"monitor", "override", "remove", mr_name};
      addOption(w, mr_target_opt, "--target", mr_target);
    } else if (verb == m_override) {
      if (m_name.empty() || mo_duration.empty()) {
        std::fprintf(stderr,
                     "porticoctl: monitor override needs MONITOR and --duration (e.g. "
                     "monitor override ImapDeepTestMonitor --target mbx1 --duration 2h)\n");
        return kExitUsage;
      }
      w = {"monitor", "override", m_name, "--duration", mo_duration};
      addOption(w, mo_target_opt, "--target", mo_target);
      addOption(w, mo_state_opt, "--state", mo_state);
    } else {
      w = {"monitor", verb->get_name(), m_name};
      if (!m_target.empty()) {
        w.push_back(m_target);
      }
    }
  } else if (actions->parsed()) {
    w.push_back("actions");
  } else if (component->parsed()) {
    if (comp_name.empty() != comp_state.empty()) {
      std::fprintf(stderr, "porticoctl: component needs both ImapProxy and active|inactive\n");
      return kExitUsage;
    }
    w.push_back("component");
    if (!comp_name.empty()) {
      w.push_back(comp_name);
      w.push_back(comp_state);
    }
  } else if (stats->parsed()) {
    w.push_back("stats");
  } else if (reload->parsed()) {
    w.push_back("reload");
  } else if (help->parsed()) {
    w.push_back("help");
  } else {
    std::fprintf(stderr, "porticoctl: no command given (try --help)\n");
    return kExitUsage;
  }

  if (timeout_opt->count() == 0 && w.front() == "probe") {
    o.timeout = "5m";  // a probe answers after its own timeout and retries
  }
  std::optional<std::chrono::milliseconds> timeout = parseTimeout(o.timeout);
  if (!timeout) {
    std::fprintf(stderr, "porticoctl: bad --timeout '%s' (e.g. 10s, 500ms, 2m)\n",
                 o.timeout.c_str());
    return kExitUsage;
  }

  std::string reply_text;
  json reply;
  try {
    reply_text = exchange(o.socket, requestLine(w), *timeout);
    reply = json::parse(reply_text);
  } catch (const Failure& f) {
    std::fprintf(stderr, "porticoctl: %s\n", f.message.c_str());
    return kExitUsage;
  } catch (const json::exception& e) {
    std::fprintf(stderr, "porticoctl: %s: the reply is not JSON (%s): %.200s\n",
                 shown(o.socket).c_str(), e.what(), shown(reply_text).c_str());
    return kExitUsage;
  }
  if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean()) {
    std::fprintf(stderr, "porticoctl: %s: the reply has no \"ok\": %.200s\n",
                 shown(o.socket).c_str(), shown(reply_text).c_str());
    return kExitUsage;
  }
  bool ok = reply["ok"].get<bool>();
  if (o.json_output) {
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

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Failure& f) {
    std::fprintf(stderr, "porticoctl: %s\n", f.message.c_str());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "porticoctl: %s\n", e.what());
    return kExitUsage;
  }
}
