// Helpers shared by the session's source files (session*.cc). Not part of
// any public interface.
#pragma once

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace portico::proxy::session_detail {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

inline constexpr std::size_t kMaxBackendLoginBytes = 64 * 1024;
inline constexpr const char* kForwardIdTag = "P0ID";

inline bool quotable(std::string_view s) {
  for (unsigned char c : s) {
    if (c == '\r' || c == '\n' || c == '\0' || c >= 0x80) {
      return false;
    }
  }
  return true;
}

inline std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
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

// quote(), appended in place (no temporary copy of a secret).
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

inline bool startsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) {
    return false;
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(s[i])) != prefix[i]) {
      return false;
    }
  }
  return true;
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
