// Writing an IMAP client's output: quoted strings, secrets wiped before
// their memory is released, printable excerpts of a peer's lines. Used by
// BackendLoginClient and by the proxy's session.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

namespace portico::parser {

// A LOGIN argument sent to a server as a quoted string. 8-bit bytes (UTF-8
// user names and passwords) are not: an IMAP4rev1 server without
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

}  // namespace portico::parser
