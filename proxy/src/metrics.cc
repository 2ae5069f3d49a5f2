#include "metrics.h"

#include <cmath>

#include <fmt/format.h>

namespace portico::proxy {

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

std::string le(std::size_t bucket) {
  double upper = bucketUpperSeconds(bucket);
  return std::isinf(upper) ? std::string("+Inf") : fmt::format("{:g}", upper);
}

}  // namespace

std::string renderProxyMetrics(const StatsSnapshot& s, const RuntimeConfig& config,
                               const SharedState& shared) {
  std::string out;
  out.reserve(16 * 1024);
  auto it = std::back_inserter(out);
  family(out, "portico_connections", "gauge", "Client connections open now.");
  fmt::format_to(it, "portico_connections {}\n", s.connections_current);
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

  // Per backend: only the backends configured now, by name.
  struct Row {
    const std::string* name;
    const StatsSnapshot::Backend* stats;
    std::size_t slot;
  };
  std::vector<Row> rows;
  static const StatsSnapshot::Backend kEmpty{};
  for (std::size_t i = 0; i < config.config.backends.size(); ++i) {
    std::size_t slot = config.stats_slot[i];
    const StatsSnapshot::Backend* b = slot < s.backends.size() ? &s.backends[slot] : &kEmpty;
    rows.push_back(Row{&config.config.backends[i].name, b, slot});
  }

  family(out, "portico_backend_sessions", "gauge",
         "Logged-in sessions relayed to the backend now.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_sessions{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->sessions_current);
  }
  family(out, "portico_backend_sessions_total", "counter", "Sessions logged in to the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_sessions_total{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->sessions_total);
  }
  family(out, "portico_backend_commands_queued", "gauge",
         "Commands sent to the backend and not yet answered.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_commands_queued{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->in_flight);
  }
  family(out, "portico_backend_average_processing_seconds", "gauge",
         "Moving average of the last 1,024 commands' processing time.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_average_processing_seconds{{backend=\"{}\"}} {:g}\n",
                   *r.name, r.stats->averageProcessingMs() / 1000.0);
  }
  family(out, "portico_backend_drained", "gauge", "1 when new logins skip the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_drained{{backend=\"{}\",by=\"responder\"}} {}\n", *r.name,
                   shared.drained_by_responder[r.slot].load(std::memory_order_relaxed) ? 1 : 0);
    fmt::format_to(it, "portico_backend_drained{{backend=\"{}\",by=\"operator\"}} {}\n", *r.name,
                   shared.drained_by_operator[r.slot].load(std::memory_order_relaxed) ? 1 : 0);
  }
  family(out, "portico_backend_login_failures_total", "counter", "Logins the backend refused.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_login_failures_total{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->login_failures);
  }
  family(out, "portico_backend_connect_failures_total", "counter",
         "Connections to the backend that failed or timed out.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_connect_failures_total{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->connect_failures);
  }
  family(out, "portico_backend_responses_cut_total", "counter",
         "Sessions closed part-way through a backend response (the backend lost mid-literal, "
         "say), so no BYE could be written.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_responses_cut_total{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->responses_cut);
  }
  family(out, "portico_backend_bytes_sent_total", "counter", "Bytes relayed to the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_bytes_sent_total{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->bytes_to);
  }
  family(out, "portico_backend_bytes_received_total", "counter", "Bytes relayed from the backend.");
  for (const Row& r : rows) {
    fmt::format_to(it, "portico_backend_bytes_received_total{{backend=\"{}\"}} {}\n", *r.name,
                   r.stats->bytes_from);
  }

  // Per command name: only names seen, to keep the page small.
  family(out, "portico_commands_total", "counter", "Commands answered, by backend and command.");
  for (const Row& r : rows) {
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      if (r.stats->commands[c].count > 0) {
        fmt::format_to(it, "portico_commands_total{{backend=\"{}\",command=\"{}\"}} {}\n", *r.name,
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
          *r.name, name, cmd.no);
      fmt::format_to(
          it, "portico_command_failures_total{{backend=\"{}\",command=\"{}\",status=\"BAD\"}} {}\n",
          *r.name, name, cmd.bad);
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
    fmt::format_to(it, "{}_sum{{backend=\"{}\",command=\"{}\"}} {:g}\n", metric, backend, command,
                   static_cast<double>(cmd.time_us) / 1e6);
    fmt::format_to(it, "{}_count{{backend=\"{}\",command=\"{}\"}} {}\n", metric, backend, command,
                   cmd.count);
  };
  for (const Row& r : rows) {
    for (std::size_t c = 0; c < kCommandCount; ++c) {
      if (r.stats->commands[c].count > 0) {
        histogram(*r.name, commandName(static_cast<CommandId>(c)), r.stats->commands[c],
                  "portico_command_duration_seconds");
      }
    }
  }
  family(out, "portico_idle_duration_seconds", "histogram", "IDLE ... DONE durations, kept apart.");
  for (const Row& r : rows) {
    if (r.stats->idle.count > 0) {
      histogram(*r.name, "IDLE", r.stats->idle, "portico_idle_duration_seconds");
    }
  }
  return out;
}

}  // namespace portico::proxy
