#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

#include "portico/logging.h"
#include "portico/utf8.h"

namespace portico::logging {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<int> g_fd{2};
}  // namespace

const char* levelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "DEBUG";
    case Level::kInfo:
      return "INFO";
    case Level::kWarn:
      return "WARN";
    case Level::kError:
      return "ERROR";
  }
  return "?";
}

void setLevel(Level level) {
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}
Level level() {
  return static_cast<Level>(g_level.load(std::memory_order_relaxed));
}
void setOutputFd(int fd) {
  g_fd.store(fd, std::memory_order_relaxed);
}

void formatNow(char (&out)[32]) {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  // strftime bounds the date part; the milliseconds are three digits.
  std::size_t n = std::strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(out + n, sizeof(out) - n, ".%03uZ", static_cast<unsigned>(ms % 1000));
}

namespace {

bool allPrintableAscii(std::string_view text) {
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f) {
      return false;
    }
  }
  return true;
}

}  // namespace

void appendPrintable(std::string& out, std::string_view text) {
  if (allPrintableAscii(text)) {
    out.append(text);  // the common case: one scan, one copy
    return;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    // U+0080..U+009F (C2 80..C2 9F) are the C1 controls, CSI among them.
    const std::size_t len = c >= 0x80 ? utf8SequenceLength(text.substr(i)) : 0;
    const bool c1 = len == 2 && c == 0xc2 && static_cast<unsigned char>(text[i + 1]) < 0xa0;
    if (len == 0 || c1) {
      out.append("\\x").push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
      ++i;
      continue;
    }
    out.append(text.substr(i, len));
    i += len;
  }
}

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  appendPrintable(out, text);
  return out;
}

void write(Level lvl, std::string_view component, std::string_view message) {
  char stamp[32];
  formatNow(stamp);
  std::string line;
  line.reserve(message.size() + 64);
  line.append(stamp).append(" ").append(levelName(lvl)).append(" [");
  appendPrintable(line, component);
  line.append("] ");
  appendPrintable(line, message);
  line.append("\n");
  int fd = g_fd.load(std::memory_order_relaxed);
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n <= 0) {
      return;  // nowhere to report a failing log; drop the line
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace portico::logging
