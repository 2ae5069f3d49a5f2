// UTF-8 well-formedness (RFC 3629), for the places that must tell text from
// arbitrary bytes: the pre-login parser (RFC 9051 quoted strings) and the
// log writer (which escapes what is not text).
//
// Header-only and dependency-free, like portico/ascii.h, so every library
// can include it.
#pragma once

#include <cstddef>
#include <string_view>

namespace portico {

// Length of the well-formed UTF-8 sequence of two to four bytes at the start
// of `text` (RFC 3629 section 4: no overlong forms, no surrogates, nothing
// above U+10FFFF), or 0 if there is none.
constexpr std::size_t utf8SequenceLength(std::string_view text) {
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

}  // namespace portico
