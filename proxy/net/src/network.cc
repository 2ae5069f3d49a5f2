#include "portico/net/network.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace portico::net {

namespace {

bool matches(const Network& n, const std::uint8_t* address, bool ipv6) {
  if (n.ipv6 != ipv6) {
    return false;
  }
  std::size_t full = n.prefix / 8;
  if (std::memcmp(n.address.data(), address, full) != 0) {
    return false;
  }
  std::size_t bits = n.prefix % 8;
  if (bits == 0) {
    return true;
  }
  auto mask = static_cast<std::uint8_t>(0xff << (8 - bits));
  return (address[full] & mask) == n.address[full];
}

}  // namespace

std::string Network::text() const {
  char buffer[INET6_ADDRSTRLEN];
  ::inet_ntop(ipv6 ? AF_INET6 : AF_INET, address.data(), buffer, sizeof(buffer));
  return std::string(buffer) + "/" + std::to_string(prefix);
}

Result<Network> parseNetwork(std::string_view text) {
  Network n;
  std::string_view host = text;
  std::optional<unsigned> prefix;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    std::string_view digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3) {
      return Status::error("bad prefix length in network \"" + std::string(text) + "\"");
    }
    unsigned value = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') {
        return Status::error("bad prefix length in network \"" + std::string(text) + "\"");
      }
      value = value * 10 + static_cast<unsigned>(c - '0');
    }
    prefix = value;
  }
  std::string copy(host);
  if (::inet_pton(AF_INET, copy.c_str(), n.address.data()) == 1) {
    n.ipv6 = false;
  } else if (::inet_pton(AF_INET6, copy.c_str(), n.address.data()) == 1) {
    n.ipv6 = true;
  } else {
    return Status::error("bad network \"" + std::string(text) +
                         "\" (write ADDRESS/PREFIX, e.g. 10.0.0.0/8)");
  }
  const unsigned max = n.ipv6 ? 128 : 32;
  if (prefix.value_or(max) > max) {
    return Status::error("prefix length over " + std::to_string(max) + " in network \"" +
                         std::string(text) + "\"");
  }
  n.prefix = static_cast<std::uint8_t>(prefix.value_or(max));
  Network masked = n;
  std::size_t full = n.prefix / 8;
  std::size_t bytes = n.ipv6 ? 16 : 4;
  for (std::size_t i = full; i < bytes; ++i) {
    std::size_t bits = i == full ? n.prefix % 8 : 0;
    masked.address[i] &= static_cast<std::uint8_t>(bits == 0 ? 0 : 0xff << (8 - bits));
  }
  if (masked.address != n.address) {
    return Status::error("network \"" + std::string(text) +
                         "\" has host bits set (did you mean \"" + masked.text() + "\"?)");
  }
  return n;
}

bool networksContain(const std::vector<Network>& networks, const sockaddr_storage& address) {
  const std::uint8_t* bytes = nullptr;
  bool ipv6 = false;
  if (address.ss_family == AF_INET) {
    bytes = reinterpret_cast<const std::uint8_t*>(
        &reinterpret_cast<const sockaddr_in*>(&address)->sin_addr);
  } else if (address.ss_family == AF_INET6) {
    const auto* in6 = &reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr;
    bytes = reinterpret_cast<const std::uint8_t*>(in6);
    ipv6 = !IN6_IS_ADDR_V4MAPPED(in6);
    if (!ipv6) {
      bytes += 12;
    }
  } else {
    return false;
  }
  for (const Network& n : networks) {
    if (matches(n, bytes, ipv6)) {
      return true;
    }
  }
  return false;
}

}  // namespace portico::net
