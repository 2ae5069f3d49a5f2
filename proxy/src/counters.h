// The proxy's plain counters, declared once (as Envoy declares its stats in
// a macro list). Each list below generates the per-worker storage
// (WorkerStats, BackendStats), the cross-worker sum (StatsSnapshot), the
// Prometheus text (metrics.cc), the admin `stats` reply and its
// `porticoctl stats` rendering. Adding a counter is one line here plus the
// line in the code that counts it.
//
// Columns: X(field, stats_key, kind, metric, help)
//   field      the member name in WorkerStats/BackendStats and StatsSnapshot
//   stats_key  its key in the admin `stats` reply (porticoctl shows it with
//              '_' as ' ')
//   kind       Counter (only grows) or Gauge (goes up and down)
//   metric     the Prometheus series; counters end in _total, bytes say
//              "bytes" in the name. Series that share a family name (the part
//              before '{') are one family, declared with the first one's help.
//   help       the family's HELP text
//
// This header has no dependencies, so porticoctl includes it as well.
#pragma once

#include <cstddef>
#include <iterator>
#include <string_view>

#include "end_reason.h"

namespace portico::proxy {

enum class MetricKind { kCounter, kGauge };

// One row of a counter list, as data.
struct CounterSpec {
  const char* field;
  const char* stats_key;
  MetricKind kind;
  const char* metric;
  const char* help;

  std::string_view family() const {
    std::string_view m = metric;
    return m.substr(0, m.find('{'));
  }
  const char* type() const { return kind == MetricKind::kCounter ? "counter" : "gauge"; }
};

// Per worker, whole process. Rows of one family stay adjacent; the
// renderer adds the logins family's outcome="success" series (a sum of the
// backends' sessions_total) under its header.
// clang-format off
#define PORTICO_WORKER_COUNTERS(X)                                                            \
  X(connections_current, "connections", Gauge, "portico_connections_open",                    \
    "Client connections open now.")                                                           \
  X(connections_total, "connections_total", Counter, "portico_connections_total",             \
    "Client connections accepted.")                                                           \
  X(connections_rejected, "connections_rejected", Counter,                                    \
    "portico_connections_rejected_total",                                                     \
    "Client connections refused by connection limits or shutdown.")                          \
  X(connections_unauthenticated, "connections_unauthenticated", Gauge,                        \
    "portico_connections_unauthenticated", "Client connections open and not logged in.")      \
  X(connections_tls, "connections_tls", Counter, "portico_connections_tls_total",             \
    "Client connections that started TLS (implicit or STARTTLS).")                            \
  X(bytes_from_clients, "bytes_from_clients", Counter, "portico_client_bytes_received_total", \
    "Bytes read from clients.")                                                               \
  X(bytes_to_clients, "bytes_to_clients", Counter, "portico_client_bytes_sent_total",         \
    "Bytes written to clients.")                                                              \
  X(prelogin_bad_commands, "prelogin_bad_commands", Counter,                                  \
    "portico_prelogin_bad_commands_total",                                                    \
    "Commands answered BAD before login (malformed, unknown or not allowed yet).")            \
  X(logins_rejected, "logins_rejected", Counter, "portico_logins_total{outcome=\"rejected\"}", \
    "Client logins (LOGIN, AUTHENTICATE) by outcome: success, rejected (the backend or "      \
    "the SASL payload refused it), unavailable (no backend reachable).")                      \
  X(logins_unavailable, "logins_unavailable", Counter,                                        \
    "portico_logins_total{outcome=\"unavailable\"}", "")                                      \
  PORTICO_END_REASONS(PORTICO_ENDED_COUNTER, X)

// One portico_sessions_ended_total series per end reason (end_reason.h).
#define PORTICO_ENDED_COUNTER(X, id, label, text)                                             \
  X(ended_##label, "ended_" #label, Counter,                                                  \
    "portico_sessions_ended_total{reason=\"" #label "\"}",                                     \
    "Sessions ended, by reason: the session-end log line's reason, as a label.")

// Per worker and backend; shown per configured backend with a backend label.
#define PORTICO_BACKEND_COUNTERS(X)                                                           \
  X(sessions_current, "sessions", Gauge, "portico_backend_sessions_open",                     \
    "Logged-in sessions relayed to the backend now.")                                         \
  X(sessions_total, "sessions_total", Counter, "portico_backend_sessions_total",              \
    "Sessions logged in to the backend.")                                                     \
  X(commands_in_flight, "queued", Gauge, "portico_backend_commands_queued",                   \
    "Commands sent to the backend and not yet answered.")                                     \
  X(login_failures, "login_failures", Counter, "portico_backend_login_failures_total",        \
    "Logins the backend refused.")                                                            \
  X(connect_failures, "connect_failures", Counter, "portico_backend_connect_failures_total",  \
    "Connections to the backend that failed or timed out.")                                   \
  X(responses_cut, "responses_cut", Counter, "portico_backend_responses_cut_total",           \
    "Sessions closed part-way through a backend response (the backend lost mid-literal, "     \
    "say), so no BYE could be written.")                                                      \
  X(bytes_to_backend, "bytes_to", Counter, "portico_backend_bytes_sent_total",                \
    "Bytes relayed to the backend.")                                                          \
  X(bytes_from_backend, "bytes_from", Counter, "portico_backend_bytes_received_total",        \
    "Bytes relayed from the backend.")                                                        \
  X(pool_ready, "pool_ready", Gauge, "portico_backend_pool_ready",                            \
    "Pooled backend connections greeted and ready for a login now ([backend_pool]).")         \
  X(pool_hits, "pool_hits", Counter, "portico_backend_pool_hits_total",                       \
    "Logins that took a ready pooled connection.")                                            \
  X(pool_misses, "pool_misses", Counter, "portico_backend_pool_misses_total",                 \
    "Logins that found the pool empty and connected themselves.")                             \
  X(pool_opened, "pool_opened", Counter, "portico_backend_pool_opened_total",                 \
    "Pooled connections opened and greeted.")                                                 \
  X(pool_expired, "pool_expired", Counter, "portico_backend_pool_expired_total",              \
    "Pooled connections closed unused after idle_timeout.")                                   \
  X(pool_lost, "pool_lost", Counter, "portico_backend_pool_lost_total",                       \
    "Pooled connections that failed before ready, or that the backend closed or spoke on.")   \
  X(pool_stale, "pool_stale", Counter, "portico_backend_pool_stale_total",                    \
    "Taken pooled connections found dead; the login went on over a fresh connection.")
// clang-format on

#define PORTICO_COUNTER_SPEC(field, key, kind, metric, help) \
  CounterSpec{#field, key, MetricKind::k##kind, metric, help},
inline constexpr CounterSpec kWorkerCounters[] = {PORTICO_WORKER_COUNTERS(PORTICO_COUNTER_SPEC)};
inline constexpr CounterSpec kBackendCounters[] = {PORTICO_BACKEND_COUNTERS(PORTICO_COUNTER_SPEC)};
#undef PORTICO_COUNTER_SPEC
inline constexpr std::size_t kWorkerCounterCount = std::size(kWorkerCounters);
inline constexpr std::size_t kBackendCounterCount = std::size(kBackendCounters);

}  // namespace portico::proxy
