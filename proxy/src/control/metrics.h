// Prometheus text for the proxy's own counters, from a StatsSnapshot, and
// the same histograms as JSON for the status page.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "accounting.h"
#include "runtime.h"

namespace portico::proxy {

// Only the backends configured now (`config`) are shown, by name.
std::string renderProxyMetrics(const StatsSnapshot& stats, const RuntimeConfig& config,
                               const ProcessState& shared);

// GET /commands on the status endpoint (the status page draws it): per
// configured backend, every command seen with its count, NO, BAD, sum of
// processing times in seconds and non-cumulative bucket counts, plus IDLE
// (or null); "bucket_upper_seconds" holds the buckets' upper bounds, null
// for the last (+Inf).
std::string renderCommandsJson(const StatsSnapshot& stats, const RuntimeConfig& config);

// The admin `stats` reply (without "ok" and "workers"): every counter of
// kWorkerCounters under its stats key, and per configured backend its
// kBackendCounters, moving average, IDLE count and commands seen.
nlohmann::json statsJson(const StatsSnapshot& stats, const RuntimeConfig& config);

}  // namespace portico::proxy
