// Small ASCII helpers shared by the pre-login parser, the SASL helpers and
// capability editing. IMAP keywords are ASCII and compared without regard to
// case; these never look at the locale (a Turkish locale must not change how
// "capability" compares).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "portico/ascii.h"
#include "portico/utf8.h"

namespace portico::parser::internal {

using portico::equalsIgnoreCase;
using portico::startsWithIgnoreCase;
using portico::utf8SequenceLength;

inline std::string upperAscii(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = asciiUpper(c);
  }
  return out;
}

}  // namespace portico::parser::internal
