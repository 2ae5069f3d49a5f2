// Small ASCII helpers shared by the pre-login parser, the SASL helpers and
// capability editing. IMAP keywords are ASCII and compared without regard to
// case; these never look at the locale (a Turkish locale must not change how
// "capability" compares).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace portico::parser::internal {

inline char toUpperAscii(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
}

inline bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (toUpperAscii(a[i]) != toUpperAscii(b[i])) {
      return false;
    }
  }
  return true;
}

inline bool startsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && equalsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

inline std::string upperAscii(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = toUpperAscii(c);
  }
  return out;
}

}  // namespace portico::parser::internal
