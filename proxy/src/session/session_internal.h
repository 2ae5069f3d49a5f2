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
#include "portico/parser.h"

namespace portico::proxy::session_detail {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

inline constexpr const char* kForwardIdTag = "P0ID";

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

// A LOGIN argument Portico sends to a backend as a quoted string. 8-bit
// bytes (UTF-8 user names and passwords) are not: an IMAP4rev1 server without
// UTF8=ACCEPT may refuse them there, while SASL PLAIN (RFC 4616 is UTF-8) and
// literals (CHAR8) carry the same bytes to any server.
inline bool quotable(std::string_view s) {
  for (unsigned char c : s) {
    if (c == '\r' || c == '\n' || c == '\0' || c >= 0x80) {
      return false;
    }
  }
  return true;
}

// Overwrites a secret before its memory is released or reused.
inline void wipe(std::string& s) {
  volatile char* p = s.data();
  for (std::size_t i = 0; i < s.size(); ++i) {
    p[i] = 0;
  }
  s.clear();
}

// wipe() over the whole buffer, spare capacity included: erase() and
// clear() leave old bytes there.
inline void wipeAll(std::string& s) {
  s.resize(s.capacity());
  wipe(s);
}

// Appends to a buffer that may hold secrets without leaving a copy behind
// when it grows: the old buffer is wiped before it is freed.
inline void appendWiping(std::string& s, std::string_view bytes) {
  if (s.size() + bytes.size() > s.capacity()) {
    std::string bigger;
    bigger.reserve(std::max(s.size() + bytes.size(), 2 * s.capacity()));
    bigger.append(s);
    wipeAll(s);
    s.swap(bigger);  // `bigger` now owns the wiped old buffer
  }
  s.append(bytes);
}

// An IMAP quoted string, appended in place (no temporary copy of a secret).
inline void appendQuoted(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
}

inline std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  appendQuoted(out, s);
  return out;
}

// Printable, bounded excerpt of a peer's line for an operator's log.
inline std::string excerpt(std::string_view line) {
  std::string out;
  for (char c : line.substr(0, 120)) {
    out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return out;
}

inline bool isSupportedMechanism(std::string_view mechanism) {
  return mechanism == "PLAIN" || mechanism == "XOAUTH2" || mechanism == "OAUTHBEARER";
}

}  // namespace portico::proxy::session_detail
