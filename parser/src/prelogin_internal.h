// Small ASCII helpers shared by the pre-login parser, the SASL helpers and
// capability editing. IMAP keywords are ASCII and compared without regard to
// case; these never look at the locale (a Turkish locale must not change how
// "capability" compares).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "portico/ascii.h"

namespace portico::parser::internal {

using portico::equalsIgnoreCase;
using portico::startsWithIgnoreCase;

// Length of the well-formed UTF-8 sequence of two to four bytes at the start
// of `text` (RFC 3629 section 4: no overlong forms, no surrogates, nothing
// above U+10FFFF), or 0 if there is none.
inline std::size_t utf8SequenceLength(std::string_view text) {
  if (text.empty()) {
    return 0;
  }
  const auto byte = [&text](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  std::size_t length = 0;
  unsigned char low = 0x80;  // range of the second byte
  unsigned char high = 0xbf;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    low = lead == 0xe0 ? 0xa0 : 0x80;
    high = lead == 0xed ? 0x9f : 0xbf;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    low = lead == 0xf0 ? 0x90 : 0x80;
    high = lead == 0xf4 ? 0x8f : 0xbf;
  } else {
    return 0;
  }
  if (text.size() < length || byte(1) < low || byte(1) > high) {
    return 0;
  }
  for (std::size_t i = 2; i < length; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xbf) {
      return 0;
    }
  }
  return length;
}

inline std::string upperAscii(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = asciiUpper(c);
  }
  return out;
}

}  // namespace portico::parser::internal
