// What a worker needs to serve sessions, as one immutable snapshot. A
// reload builds a new RuntimeConfig and hands it to every worker; sessions
// keep the snapshot they started with, so a reload never changes a session
// under its feet.
#pragma once

#include <atomic>
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "accounting.h"
#include "config.h"
#include "routing.h"

namespace portico::proxy {

struct RuntimeConfig {
  Config config;
  BackendSelector selector;
  std::vector<std::size_t> stats_slot;  // per backend index
  std::string capabilities;             // pre-login capability list Portico advertises

  RuntimeConfig(Config c, std::vector<std::size_t> slots);
};
using RuntimeConfigPtr = std::shared_ptr<const RuntimeConfig>;

// State shared by all workers and the control thread. Written rarely.
struct SharedState {
  // Per stats slot: drained backends are skipped by routing for new logins.
  std::array<std::atomic<bool>, kMaxBackends> drained{};
  std::atomic<std::uint64_t> connections{0};  // across workers, for max_connections
};

}  // namespace portico::proxy
