#include "metrics.h"

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace portico::proxy {

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// A label value as the text format wants it: backslash, quote and newline
// escaped. Backend names come from the config, so they are escaped too.
std::string label(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
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
    rows.push_back(
        Row{label(config.config.backends[i].name), b, slot, config.config.backends[i].weight});
  }
  return rows;
}

}  // namespace

std::string renderProxyMetrics(const StatsSnapshot& s, const RuntimeConfig& config,
                               const SharedState& shared) {
  std::string out;
  out.reserve(16 * 1024);
  auto it = std::back_inserter(out);
  family(out, "portico_connections_open", "gauge", "Client connections open now.");
  fmt::format_to(it, "portico_connections_open {}\n", s.connections_current);
  family(out, "portico_connections_total", "counter", "Client connections accepted.");
  fmt::format_to(it, "portico_connections_total {}\n", s.connections_total);
  family(out, "portico_connections_rejected_total", "counter",
         "Client connections refused by connection limits or shutdown.");
  fmt::format_to(it, "portico_connections_rejected_total {}\n", s.connections_rejected);
  family(out, "portico_connections_unauthenticated", "gauge",
         "Client connections open and not logged in.");
  fmt::format_to(it, "portico_connections_unauthenticated {}\n", s.connections_unauthenticated);
  family(out, "portico_connections_tls_total", "counter",
         "Client connections that started TLS (implicit or STARTTLS).");
  fmt::format_to(it, "portico_connections_tls_total {}\n", s.connections_tls);
  family(out, "portico_client_bytes_received_total", "counter", "Bytes read from clients.");
  fmt::format_to(it, "portico_client_bytes_received_total {}\n", s.bytes_from_clients);
  family(out, "portico_client_bytes_sent_total", "counter", "Bytes written to clients.");
  fmt::format_to(it, "portico_client_bytes_sent_total {}\n", s.bytes_to_clients);

  std::uint64_t logins_ok = 0;
  for (const StatsSnapshot::Backend& b : s.backends) {
    logins_ok += b.sessions_total;
  }
  family(out, "portico_logins_total", "counter",
         "Client logins (LOGIN, AUTHENTICATE) by outcome: success, rejected (the backend or "
         "the SASL payload refused it), unavailable (no backend reachable).");
  fmt::format_to(it, "portico_logins_total{{outcome=\"success\"}} {}\n", logins_ok);
  fmt::format_to(it, "portico_logins_total{{outcome=\"rejected\"}} {}\n", s.logins_rejected);
  fmt::format_to(it, "portico_logins_total{{outcome=\"unavailable\"}} {}\n", s.logins_unavailable);

  // The protocol log: whether sessions are being traced, and what the
  // writer did (dropped records are lost lines: full disk, full queue).
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

  const std::vector<Row> rows = configuredRows(s, config);
  family(out, "portico_backend_weight", "gauge", "Routing weight of the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_weight{{backend=\"{}\"}} {}\n", r.name, r.weight);
  }
  family(out, "portico_backend_sessions_open", "gauge",
         "Logged-in sessions relayed to the backend now.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_sessions_open{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->sessions_current);
  }
  family(out, "portico_backend_sessions_total", "counter", "Sessions logged in to the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_sessions_total{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->sessions_total);
  }
  family(out, "portico_backend_commands_queued", "gauge",
         "Commands sent to the backend and not yet answered.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_commands_queued{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->in_flight);
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
  }
  family(out, "portico_backend_login_failures_total", "counter", "Logins the backend refused.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_login_failures_total{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->login_failures);
  }
  family(out, "portico_backend_connect_failures_total", "counter",
         "Connections to the backend that failed or timed out.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_connect_failures_total{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->connect_failures);
  }
  family(out, "portico_backend_responses_cut_total", "counter",
         "Sessions closed part-way through a backend response (the backend lost mid-literal, "
         "say), so no BYE could be written.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_responses_cut_total{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->responses_cut);
  }
  family(out, "portico_backend_bytes_sent_total", "counter", "Bytes relayed to the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_bytes_sent_total{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->bytes_to);
  }
  family(out, "portico_backend_bytes_received_total", "counter", "Bytes relayed from the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_bytes_received_total{{backend=\"{}\"}} {}\n", r.name,
                   r.stats->bytes_from);
  }

  // Per command name: only names seen, to keep the page small. The command
  // label is bounded: the names in PORTICO_COMMANDS, everything else OTHER.
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
  static const StatsSnapshot::Backend kEmpty{};
  for (std::size_t i = 0; i < config.config.backends.size(); ++i) {
    const std::size_t slot = config.stats_slot[i];
    const StatsSnapshot::Backend& b = slot < s.backends.size() ? s.backends[slot] : kEmpty;
    json commands = json::array();
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      if (b.commands[c].count > 0) {
        commands.push_back(command(commandName(static_cast<CommandId>(c)), b.commands[c]));
      }
    }
    backends.push_back({{"name", config.config.backends[i].name},
                        {"commands", std::move(commands)},
                        {"idle", b.idle.count > 0 ? command("IDLE", b.idle) : json(nullptr)}});
  }
  return json{{"bucket_upper_seconds", std::move(bounds)}, {"backends", std::move(backends)}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
}

}  // namespace portico::proxy
