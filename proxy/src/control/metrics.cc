#include "control/metrics.h"

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "portico/prometheus_text.h"

namespace portico::proxy {

namespace {

void family(std::string& out, std::string_view name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// Backend names come from the config: escaped like any label value.
std::string label(std::string_view value) {
  return prometheusLabel(value);
}

// Bucket bounds and sums with every digit they have ("{}" is the shortest
// text that reads back as the same double): "{:g}" would print 104.858 for
// the bucket bound 104.8576 and round big sums.
std::string le(std::size_t bucket) {
  double upper = bucketUpperSeconds(bucket);
  return std::isinf(upper) ? std::string("+Inf") : fmt::format("{}", upper);
}

struct Row {
  std::string name;  // label-escaped
  std::string_view config_name;
  const StatsSnapshot::Backend* stats;
  std::size_t slot;
  double weight;
};

// Per backend: only the backends configured now, by name.
std::vector<Row> configuredRows(const StatsSnapshot& s, const RuntimeConfig& config) {
  static const StatsSnapshot::Backend kEmpty{};
  std::vector<Row> rows;
  for (std::size_t i = 0; i < config.config.backends.size(); ++i) {
    std::size_t slot = config.stats_slot[i];
    const StatsSnapshot::Backend* b = slot < s.backends.size() ? &s.backends[slot] : &kEmpty;
    const BackendConfig& backend = config.config.backends[i];
    rows.push_back(Row{label(backend.name), backend.name, b, slot, backend.weight});
  }
  return rows;
}

// The process-wide counters, one family per name (the logins share one).
void appendProcessCounters(std::string& out, const StatsSnapshot& s) {
  auto it = std::back_inserter(out);
  std::string_view open_family;
  for (std::size_t k = 0; k < kWorkerCounterCount; ++k) {
    const CounterSpec& spec = kWorkerCounters[k];
    if (spec.family() != open_family) {
      open_family = spec.family();
      family(out, open_family, spec.type(), spec.help);
      if (open_family == "portico_logins_total") {
        std::uint64_t logins_ok = 0;
        for (const StatsSnapshot::Backend& b : s.backends) {
          logins_ok += b.sessions_total;
        }
        fmt::format_to(it, "portico_logins_total{{outcome=\"success\"}} {}\n", logins_ok);
      }
    }
    fmt::format_to(it, "{} {}\n", spec.metric, s.*kWorkerSnapshotFields[k]);
  }
}

// The protocol log: whether sessions are being traced, and what the
// writer did (dropped records are lost lines: full disk, full queue).
void appendProtocolLogMetrics(std::string& out, const ProcessState& shared) {
  auto it = std::back_inserter(out);
  const logging::ProtocolLog* plog = shared.protocol_log.load(std::memory_order_relaxed);
  const logging::ProtocolLog::Stats plog_stats =
      plog ? plog->stats() : logging::ProtocolLog::Stats{};
  family(out, "portico_protocol_log_enabled", "gauge",
         "1 while the protocol log records sessions (all, or a user/network trace).");
  fmt::format_to(it, "portico_protocol_log_enabled {}\n", shared.trace.settings().on ? 1 : 0);
  family(out, "portico_protocol_log_records_total", "counter", "Protocol log lines written.");
  fmt::format_to(it, "portico_protocol_log_records_total {}\n", plog_stats.records_written);
  family(out, "portico_protocol_log_dropped_records_total", "counter",
         "Protocol log lines dropped (full queue, full disk, vanished directory).");
  fmt::format_to(it, "portico_protocol_log_dropped_records_total {}\n", plog_stats.records_dropped);
  family(out, "portico_protocol_log_written_bytes_total", "counter",
         "Bytes written to protocol log files, headers included.");
  fmt::format_to(it, "portico_protocol_log_written_bytes_total {}\n", plog_stats.bytes_written);
}

// Per backend: weight, processing time, drains and the backend counters.
void appendBackendMetrics(std::string& out, const std::vector<Row>& rows,
                          const ProcessState& shared) {
  auto it = std::back_inserter(out);
  family(out, "portico_backend_weight", "gauge", "Routing weight of the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_weight{{backend=\"{}\"}} {}\n", r.name, r.weight);
  }
  family(out, "portico_backend_average_processing_seconds", "gauge",
         "Moving average of the last 1,024 commands' processing time.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_average_processing_seconds{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->averageProcessingMs() / 1000.0);
  }
  family(out, "portico_backend_drained", "gauge", "1 when new logins skip the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_drained{{backend=\"{}\",by=\"responder\"}} {}\n", r.name,
                   shared.drained_by_responder[r.slot].load(std::memory_order_relaxed) ? 1 : 0);
    fmt::format_to(it, "portico_backend_drained{{backend=\"{}\",by=\"operator\"}} {}\n", r.name,
                   shared.drained_by_operator[r.slot].load(std::memory_order_relaxed) ? 1 : 0);
    fmt::format_to(it, "portico_backend_drained{{backend=\"{}\",by=\"fleet\"}} {}\n", r.name,
                   shared.drained_by_fleet[r.slot].load(std::memory_order_relaxed) ? 1 : 0);
  }
  for (std::size_t k = 0; k < kBackendCounterCount; ++k) {
    const CounterSpec& spec = kBackendCounters[k];
    family(out, spec.metric, spec.type(), spec.help);
    for (const Row& r : rows) {
      fmt::format_to(it, "{}{{backend=\"{}\"}} {}\n", spec.metric, r.name,
                     r.stats->*kBackendSnapshotFields[k]);
    }
  }
}

// Per command name: only names seen, to keep the page small. The command
// label is bounded: the names in PORTICO_COMMANDS, everything else OTHER.
void appendCommandMetrics(std::string& out, const std::vector<Row>& rows) {
  auto it = std::back_inserter(out);
  family(out, "portico_commands_total", "counter", "Commands answered, by backend and command.");
  for (const Row& r : rows) {
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      if (r.stats->commands[c].count > 0) {
        fmt::format_to(it, "portico_commands_total{{backend=\"{}\",command=\"{}\"}} {}\n", r.name,
                       commandName(static_cast<CommandId>(c)), r.stats->commands[c].count);
      }
    }
  }
  family(out, "portico_command_failures_total", "counter",
         "Commands answered NO or BAD, by backend, command and status.");
  for (const Row& r : rows) {
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      const auto& cmd = r.stats->commands[c];
      if (cmd.count == 0) {
        continue;
      }
      const char* name = commandName(static_cast<CommandId>(c));
      fmt::format_to(
          it, "portico_command_failures_total{{backend=\"{}\",command=\"{}\",status=\"NO\"}} {}\n",
          r.name, name, cmd.no);
      fmt::format_to(
          it, "portico_command_failures_total{{backend=\"{}\",command=\"{}\",status=\"BAD\"}} {}\n",
          r.name, name, cmd.bad);
    }
  }
  family(out, "portico_command_duration_seconds", "histogram",
         "Processing time: last byte handed to the backend to the tagged reply.");
  auto histogram = [&](const std::string& backend, const char* command,
                       const StatsSnapshot::Command& cmd, const char* metric) {
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      cumulative += cmd.histogram[b];
      fmt::format_to(it, "{}_bucket{{backend=\"{}\",command=\"{}\",le=\"{}\"}} {}\n", metric,
                     backend, command, le(b), cumulative);
    }
    fmt::format_to(it, "{}_sum{{backend=\"{}\",command=\"{}\"}} {}\n", metric, backend, command,
                   static_cast<double>(cmd.time_us) / 1e6);
    fmt::format_to(it, "{}_count{{backend=\"{}\",command=\"{}\"}} {}\n", metric, backend, command,
                   cmd.count);
  };
  for (const Row& r : rows) {
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      if (r.stats->commands[c].count > 0) {
        histogram(r.name, commandName(static_cast<CommandId>(c)), r.stats->commands[c],
                  "portico_command_duration_seconds");
      }
    }
  }
  family(out, "portico_idle_duration_seconds", "histogram", "IDLE ... DONE durations, kept apart.");
  for (const Row& r : rows) {
    if (r.stats->idle.count > 0) {
      histogram(r.name, "IDLE", r.stats->idle, "portico_idle_duration_seconds");
    }
  }
}

}  // namespace

std::string renderProxyMetrics(const StatsSnapshot& s, const RuntimeConfig& config,
                               const ProcessState& shared) {
  std::string out;
  out.reserve(16 * 1024);
  appendProcessCounters(out, s);
  appendProtocolLogMetrics(out, shared);
  const std::vector<Row> rows = configuredRows(s, config);
  appendBackendMetrics(out, rows, shared);
  appendCommandMetrics(out, rows);
  out += renderLookupMetrics(shared.lookup.stats);  // lookup/lookup_metrics.cc
  return out;
}

std::string renderCommandsJson(const StatsSnapshot& s, const RuntimeConfig& config) {
  using nlohmann::json;
  json bounds = json::array();
  for (std::size_t b = 0; b < kBuckets; ++b) {
    const double upper = bucketUpperSeconds(b);
    bounds.push_back(std::isinf(upper) ? json(nullptr) : json(upper));
  }
  auto command = [](const char* name, const StatsSnapshot::Command& cmd) {
    return json{{"command", name},
                {"count", cmd.count},
                {"no", cmd.no},
                {"bad", cmd.bad},
                {"sum_seconds", static_cast<double>(cmd.time_us) / 1e6},
                {"buckets", cmd.histogram}};
  };
  json backends = json::array();
  for (const Row& r : configuredRows(s, config)) {
    const StatsSnapshot::Backend& b = *r.stats;
    json commands = json::array();
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      if (b.commands[c].count > 0) {
        commands.push_back(command(commandName(static_cast<CommandId>(c)), b.commands[c]));
      }
    }
    backends.push_back({{"name", r.config_name},
                        {"commands", std::move(commands)},
                        {"idle", b.idle.count > 0 ? command("IDLE", b.idle) : json(nullptr)}});
  }
  return json{{"bucket_upper_seconds", std::move(bounds)}, {"backends", std::move(backends)}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
}

}  // namespace portico::proxy

namespace portico::proxy {

nlohmann::json statsJson(const StatsSnapshot& s, const RuntimeConfig& config) {
  using nlohmann::json;
  json backends = json::object();
  for (const Row& r : configuredRows(s, config)) {
    const StatsSnapshot::Backend& b = *r.stats;
    json commands = json::object();
    for (std::size_t k = 0; k < kCommandCount; ++k) {
      const auto& cmd = b.commands[k];
      if (cmd.count > 0) {
        commands[commandName(static_cast<CommandId>(k))] =
            json{{"count", cmd.count},
                 {"no", cmd.no},
                 {"bad", cmd.bad},
                 {"average_ms",
                  static_cast<double>(cmd.time_us) / 1000.0 / static_cast<double>(cmd.count)}};
      }
    }
    json backend = json::object();
    for (std::size_t k = 0; k < kBackendCounterCount; ++k) {
      backend[kBackendCounters[k].stats_key] = b.*kBackendSnapshotFields[k];
    }
    backend["average_processing_ms"] = b.averageProcessingMs();
    backend["commands"] = std::move(commands);
    backend["idle"] = b.idle.count;
    backends[std::string(r.config_name)] = std::move(backend);
  }
  json out = json::object();
  for (std::size_t k = 0; k < kWorkerCounterCount; ++k) {
    out[kWorkerCounters[k].stats_key] = s.*kWorkerSnapshotFields[k];
  }
  out["backends"] = std::move(backends);
  return out;
}

}  // namespace portico::proxy
