// Prometheus text for the proxy's own counters, from a StatsSnapshot.
#pragma once

#include <string>
#include <vector>

#include "accounting.h"
#include "runtime.h"

namespace portico::proxy {

// Only the backends configured now (`config`) are shown, by name.
std::string renderProxyMetrics(const StatsSnapshot& stats, const RuntimeConfig& config,
                               const SharedState& shared);

}  // namespace portico::proxy
