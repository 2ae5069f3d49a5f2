// Which sessions the protocol log records: all of them, none, or only
// those matching a user and/or a client network, until an optional expiry.
// Written by the control thread (admin socket, config), read by workers.
//
// The data path pays one relaxed atomic load per command: a session keeps
// the generation it last evaluated and re-evaluates (under the mutex) only
// when the generation has moved, which happens only when an operator
// changes the settings.
#pragma once

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

namespace portico::proxy {

struct Cidr {
  int family = 0;  // AF_INET or AF_INET6; 0: matches nothing
  std::array<unsigned char, 16> address{};
  int prefix = 0;
  std::string text;
  bool contains(const sockaddr_storage& address) const;
};
std::optional<Cidr> parseCidr(const std::string& text);

struct TraceSettings {
  bool on = false;
  std::string user;  // normalised; empty: any user
  std::optional<Cidr> network;
  std::optional<std::chrono::system_clock::time_point> expires;
};

class ProtocolTrace {
 public:
  std::uint64_t generation() const { return generation_.load(std::memory_order_relaxed); }
  void set(TraceSettings settings);
  TraceSettings settings() const;
  // Does a session of `user` (normalised; empty before login) from `client` get logged?
  bool matches(const std::string& user, const sockaddr_storage& client) const;
  // Turns tracing off if its TTL has passed; true when it did.
  bool expireIfDue(std::chrono::system_clock::time_point now);

 private:
  mutable std::mutex mu_;
  TraceSettings settings_;
  std::atomic<std::uint64_t> generation_{1};
};

}  // namespace portico::proxy
