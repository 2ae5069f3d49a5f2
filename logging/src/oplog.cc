#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

#include "portico/logging.h"

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

void write(Level lvl, std::string_view component, std::string_view message) {
  char stamp[32];
  formatNow(stamp);
  std::string line;
  line.reserve(message.size() + 64);
  line.append(stamp).append(" ").append(levelName(lvl)).append(" [");
  line.append(component).append("] ").append(message).append("\n");
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
