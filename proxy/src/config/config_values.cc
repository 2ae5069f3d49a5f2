// The value types of config.h as text: durations, addresses, TLS modes.
// Plain functions with no TOML in them, so that other code (the admin
// socket, the lookup stage) parses operators' values the same way.
#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <limits>
#include <string_view>

#include "config/config.h"

namespace portico::proxy {

namespace {

constexpr std::array<const char*, 3> kTlsModeNames = {"none", "starttls", "implicit"};
static_assert(kTlsModeNames.size() == static_cast<std::size_t>(TlsMode::kImplicit) + 1,
              "one name per TlsMode");

}  // namespace

const char* tlsModeName(TlsMode mode) {
  auto index = static_cast<std::size_t>(mode);
  return index < kTlsModeNames.size() ? kTlsModeNames[index] : "unknown";
}

std::string HostPort::text() const {
  std::string port_text = std::to_string(port);
  return ipv6 ? "[" + host + "]:" + port_text : host + ":" + port_text;
}

std::optional<Millis> parseDuration(const std::string& text) {
  constexpr std::int64_t kMax = std::numeric_limits<Millis::rep>::max();
  std::size_t i = 0;
  std::int64_t value = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    int digit = text[i] - '0';
    if (value > (kMax - digit) / 10) {
      return std::nullopt;
    }
    value = value * 10 + digit;
  }
  if (i == 0) {
    return std::nullopt;
  }
  std::string_view unit = std::string_view(text).substr(i);
  std::int64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1'000;
  } else if (unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else {
    return std::nullopt;
  }
  if (value > kMax / scale) {
    return std::nullopt;
  }
  return Millis{value * scale};
}

std::optional<HostPort> parseHostPort(const std::string& text) {
  HostPort out;
  std::string port_text;
  if (!text.empty() && text[0] == '[') {
    std::size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::nullopt;
    }
    out.host = text.substr(1, close - 1);
    out.ipv6 = true;
    port_text = text.substr(close + 2);
    in6_addr address{};
    if (::inet_pton(AF_INET6, out.host.c_str(), &address) != 1) {
      return std::nullopt;
    }
    // One spelling per address ("::0001" -> "::1"): listeners are matched
    // across reloads, and duplicates found, by the address text.
    char canonical[INET6_ADDRSTRLEN];
    if (::inet_ntop(AF_INET6, &address, canonical, sizeof(canonical)) != nullptr) {
      out.host = canonical;
    }
  } else {
    std::size_t colon = text.find(':');
    if (colon == std::string::npos) {
      return std::nullopt;
    }
    out.host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    in_addr address{};
    if (::inet_pton(AF_INET, out.host.c_str(), &address) != 1) {
      return std::nullopt;
    }
  }
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  unsigned long port = std::stoul(port_text);
  if (port == 0 || port > 65535) {
    return std::nullopt;
  }
  out.port = static_cast<std::uint16_t>(port);
  return out;
}

}  // namespace portico::proxy
