// IP networks in CIDR notation ("10.0.0.0/8", "fd00::/8", "127.0.0.1"), for
// listener settings such as trusted_networks. Pure: no I/O.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "portico/status.h"

namespace portico::net {

struct Network {
  std::array<std::uint8_t, 16> address{};  // network byte order, host bits zero
  std::uint8_t prefix = 0;                 // 0-32 (IPv4) or 0-128 (IPv6)
  bool ipv6 = false;
  std::string text() const;  // "10.0.0.0/8"
  bool operator==(const Network&) const = default;
};

// "ADDRESS/PREFIX" or a bare address (a /32 or /128). An error when
// malformed, the prefix is out of range, or host bits are set ("10.1.0.0/8"
// is refused: it is usually a typo).
Result<Network> parseNetwork(std::string_view text);

// Whether `address` (AF_INET or AF_INET6) lies in one of `networks`. An
// IPv4-mapped IPv6 address (::ffff:10.1.2.3) matches as its IPv4 address.
bool networksContain(const std::vector<Network>& networks, const sockaddr_storage& address);

}  // namespace portico::net
