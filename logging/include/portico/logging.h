// Portico's operational logger: one line per event on stderr (or a file),
// "2026-11-27T21:05:58.123Z LEVEL [component] message". Thread-safe: each
// line is formatted first and written with one write(2) call, so lines from
// workers never interleave. Never pass secrets (passwords, SASL payloads).
// The protocol log (Exchange-style CSV files written by one thread) is
// declared in portico/protocol_log.h, included at the end.
#pragma once

#include <atomic>
#include <string_view>

#include <fmt/format.h>

namespace portico::logging {

enum class Level : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
const char* levelName(Level level);

void setLevel(Level level);
Level level();
// Redirects output to fd (default 2). The caller keeps the fd open.
void setOutputFd(int fd);

// Writes one line. Component and message go through appendPrintable, so
// bytes from peers (a user name with CR LF or ESC in a LOGIN literal) can
// neither forge a further line nor drive the terminal that shows the log.
void write(Level level, std::string_view component, std::string_view message);

// Appends `text` with every byte that is not printable shown as \xHH: C0
// controls (CR, LF, TAB, ESC, ...), DEL, the C1 controls U+0080..U+009F and
// bytes that are not well-formed UTF-8. Well-formed UTF-8 text ("jörg")
// is kept as it is. A backslash is not escaped.
void appendPrintable(std::string& out, std::string_view text);
std::string printable(std::string_view text);

template <typename... Args>
void log(Level lvl, std::string_view component, fmt::format_string<Args...> format,
         Args&&... args) {
  if (static_cast<int>(lvl) < static_cast<int>(level())) {
    return;
  }
  write(lvl, component, fmt::format(format, std::forward<Args>(args)...));
}

// "2026-11-27T21:05:58.123Z" for the current time (UTC, milliseconds).
void formatNow(char (&out)[32]);

}  // namespace portico::logging

#include "portico/protocol_log.h"  // IWYU pragma: export
