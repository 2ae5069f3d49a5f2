// porticoctl's output for humans: tables and "key: value" lines, every
// value passed through shown().
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "counters.h"
#include "portico/json_text.h"
#include "portico/logging.h"
#include "porticoctl.h"

namespace portico::ctl {

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

namespace {

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

// sessions --fleet: the registry's entries, by node.
void printFleetSessions(const json& reply) {
  Table t({"NODE", "ID", "USER", "CLIENT", "BACKEND", "AGE"});
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  for (const json& s : reply.value("sessions", json::array())) {
    const std::int64_t since = s.value("since_ms", std::int64_t{0});
    t.add({field(s, "node"), field(s, "id"), field(s, "user"), field(s, "client"),
           field(s, "backend"), ageText(json(std::max<std::int64_t>(0, now_ms - since)))});
  }
  t.print();
  std::printf("%zu session%s on %zu node%s\n", t.size(), t.size() == 1 ? "" : "s",
              reply.value("nodes", json::object()).size(),
              reply.value("nodes", json::object()).size() == 1 ? "" : "s");
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

}  // namespace

void printHuman(const std::string& command, const std::vector<std::string>& words, const json& r) {
  if (command == "sessions" && r.contains("nodes")) {
    printFleetSessions(r);
  } else if (command == "sessions") {
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
    if (r.contains("nodes")) {
      for (const auto& [node, n] : r["nodes"].items()) {
        std::printf("  %s: %s\n", node.c_str(), n.dump().c_str());
      }
      std::printf("%s of %s nodes answered\n", field(r, "nodes_answered").c_str(),
                  field(r, "nodes_asked").c_str());
    }
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

}  // namespace portico::ctl
