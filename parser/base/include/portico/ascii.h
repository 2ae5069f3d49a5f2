// ASCII case folding for protocol words (IMAP atoms, HTTP header names, SASL
// mechanisms, TLS names). Locale-independent on purpose: <cctype>'s
// tolower/toupper follow the C locale, and strcasecmp folds bytes above
// 0x7f in some locales, so a peer's bytes could compare differently on
// another host. Only 'A'..'Z' and 'a'..'z' fold here; every other byte
// compares as itself.
//
// Header-only and dependency-free, so every library (parser, logging,
// health, proxy) can include it.
#pragma once

#include <string>
#include <string_view>

namespace portico {

constexpr char asciiLower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

constexpr char asciiUpper(char c) {
  return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
}

constexpr bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (asciiLower(a[i]) != asciiLower(b[i])) {
      return false;
    }
  }
  return true;
}

constexpr bool startsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && equalsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

inline std::string asciiLowered(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = asciiLower(c);
  }
  return out;
}

}  // namespace portico
