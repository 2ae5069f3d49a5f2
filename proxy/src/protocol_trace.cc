#include "protocol_trace.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace portico::proxy {

std::optional<Cidr> parseCidr(const std::string& text) {
  Cidr cidr;
  cidr.text = text;
  std::string host = text;
  int prefix = -1;
  auto slash = text.find('/');
  if (slash != std::string::npos) {
    host = text.substr(0, slash);
    std::string bits = text.substr(slash + 1);
    if (bits.empty() || bits.size() > 3 ||
        bits.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    prefix = std::stoi(bits);
  }
  if (inet_pton(AF_INET, host.c_str(), cidr.address.data()) == 1) {
    cidr.family = AF_INET;
    cidr.prefix = prefix < 0 ? 32 : prefix;
    if (cidr.prefix > 32) {
      return std::nullopt;
    }
  } else if (inet_pton(AF_INET6, host.c_str(), cidr.address.data()) == 1) {
    cidr.family = AF_INET6;
    cidr.prefix = prefix < 0 ? 128 : prefix;
    if (cidr.prefix > 128) {
      return std::nullopt;
    }
  } else {
    return std::nullopt;
  }
  return cidr;
}

bool Cidr::contains(const sockaddr_storage& peer) const {
  const unsigned char* bytes = nullptr;
  unsigned char mapped[4];
  if (peer.ss_family == AF_INET && family == AF_INET) {
    bytes = reinterpret_cast<const unsigned char*>(
        &reinterpret_cast<const sockaddr_in*>(&peer)->sin_addr);
  } else if (peer.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer);
    if (family == AF_INET6) {
      bytes = in6->sin6_addr.s6_addr;
    } else if (family == AF_INET && IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      std::memcpy(mapped, in6->sin6_addr.s6_addr + 12, 4);
      bytes = mapped;
    }
  }
  if (bytes == nullptr) {
    return false;
  }
  int full = prefix / 8;
  if (std::memcmp(bytes, address.data(), static_cast<std::size_t>(full)) != 0) {
    return false;
  }
  int rest = prefix % 8;
  if (rest == 0) {
    return true;
  }
  auto mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (bytes[full] & mask) == (address[static_cast<std::size_t>(full)] & mask);
}

void ProtocolTrace::set(TraceSettings settings) {
  std::lock_guard<std::mutex> lock(mu_);
  settings_ = std::move(settings);
  generation_.fetch_add(1, std::memory_order_relaxed);
}

TraceSettings ProtocolTrace::settings() const {
  std::lock_guard<std::mutex> lock(mu_);
  return settings_;
}

bool ProtocolTrace::matches(const std::string& user, const sockaddr_storage& client) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!settings_.on) {
    return false;
  }
  if (!settings_.user.empty() && user != settings_.user) {
    return false;
  }
  if (settings_.network && !settings_.network->contains(client)) {
    return false;
  }
  return true;
}

bool ProtocolTrace::expireIfDue(std::chrono::system_clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!settings_.on || !settings_.expires || now < *settings_.expires) {
    return false;
  }
  settings_ = TraceSettings{};
  generation_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace portico::proxy
