// Helpers shared by the session's source files (session*.cc). Not part of
// any public interface.
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "config/config.h"
#include "portico/ascii.h"
#include "portico/backend_login.h"
#include "portico/imap_output.h"
#include "portico/parser.h"

namespace portico::proxy::session_detail {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

using parser::kForwardIdTag;

// The parser's limits before login: small lines and literals, except that an
// ID may take every line RFC 2971 allows it.
inline parser::Limits preloginLimits(const Limits& limits) {
  parser::Limits out;
  out.max_line = limits.prelogin_max_line;
  out.max_literal = limits.prelogin_max_literal;
  out.max_id_line = parser::idMaxLine(out.max_tag);
  return out;
}

// Bytes of one pre-login command (`name` as far as the framer has read it)
// held until it is whole: two lines and two literals (LOGIN), or any ID
// within RFC 2971's limits.
inline std::size_t preloginMaxCommand(const Limits& limits, std::string_view name) {
  const std::size_t common = 2 * static_cast<std::size_t>(limits.prelogin_max_line) +
                             2 * static_cast<std::size_t>(limits.prelogin_max_literal);
  if (name == "ID") {
    const std::size_t id = preloginLimits(limits).max_id_line + 2;  // + CRLF
    return common > id ? common : id;
  }
  return common;
}

// Quoting, wiping and excerpts live with the IMAP client in the parser
// library (portico/imap_output.h).
using parser::appendQuoted;
using parser::appendWiping;
using parser::excerpt;
using parser::quotable;
using parser::quote;
using parser::wipe;
using parser::wipeAll;

inline bool isSupportedMechanism(std::string_view mechanism) {
  return mechanism == "PLAIN" || mechanism == "XOAUTH2" || mechanism == "OAUTHBEARER";
}

}  // namespace portico::proxy::session_detail
