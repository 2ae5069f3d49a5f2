// [fleet]: several Portico nodes sharing backend drains and user holds
// through Redis (fleet/fleet_client.h). Read through the schema table
// (config_schema.cc); the keys are the contract.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace portico::proxy {

struct FleetConfig {
  std::string redis;                    // "IP:PORT"; "" = no fleet
  std::string node;                     // "" = the host name (fleet::defaultNodeName())
  std::string on_redis_down = "local";  // "local" | "refuse"
  // Nodes that must find a backend Unhealthy (their responders drained it)
  // before every node drains it; 0 = a majority of the live nodes.
  std::uint32_t health_quorum = 0;
  // Lifetime of this node's session registry and session counts in Redis;
  // refreshed every third of it.
  std::chrono::milliseconds session_ttl{30'000};

  bool enabled() const { return !redis.empty(); }
  bool refuseWhenDown() const { return on_redis_down == "refuse"; }
  bool operator==(const FleetConfig&) const = default;
};

}  // namespace portico::proxy
