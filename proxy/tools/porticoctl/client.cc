// porticoctl's admin-socket client: the request line and one exchange,
// every wait bounded by the deadline.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "porticoctl.h"

namespace portico::ctl {
namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Request line

// Quotes a word the way admin.cc's splitAdminLine reads it: inside double
// quotes a backslash takes the next byte literally.
std::string quoteWord(const std::string& word) {
  if (word.find('\n') != std::string::npos) {
    throw Failure{"a command word cannot contain a newline"};
  }
  bool plain = !word.empty() && word.find_first_of(" \t\r\"\\") == std::string::npos;
  if (plain) {
    return word;
  }
  std::string out = "\"";
  for (char c : word) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

// ---------------------------------------------------------------------------
// Socket

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int msLeft(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<std::int64_t>(left, 0, 1 << 30));
}

std::string timeoutText(std::chrono::milliseconds t) {
  if (t.count() % 1000 == 0) {
    return fmt::format("{}s", t.count() / 1000);
  }
  return fmt::format("{}ms", t.count());
}

}  // namespace

std::string requestLine(const std::vector<std::string>& words) {
  std::string line;
  for (const std::string& w : words) {
    line += (line.empty() ? "" : " ") + quoteWord(w);
  }
  return line + "\n";
}

// "10s", "500ms", "2m", "1.5s", "3" (seconds) -> milliseconds.
std::optional<std::chrono::milliseconds> parseTimeout(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  if (i == 0) {
    return std::nullopt;
  }
  double value = 0;
  try {
    std::size_t used = 0;
    value = std::stod(text.substr(0, i), &used);
    if (used != i) {
      return std::nullopt;
    }
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string unit = text.substr(i);
  double ms = 0;
  if (unit.empty() || unit == "s") {
    ms = value * 1000;
  } else if (unit == "ms") {
    ms = value;
  } else if (unit == "m") {
    ms = value * 60'000;
  } else if (unit == "h") {
    ms = value * 3'600'000;
  } else {
    return std::nullopt;
  }
  if (!(ms > 0) || ms > 86'400'000.0) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(ms)));
}

// Sends `line`; returns an error text (and not a Failure) when Portico
// closed first, as it may have answered before reading (too many
// connections).
std::string sendRequest(const Fd& fd, const std::string& path, const std::string& line,
                        Clock::time_point deadline, std::chrono::milliseconds timeout) {
  std::size_t sent = 0;
  std::string send_error;
  while (sent < line.size()) {
    ssize_t n = ::send(fd.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd.get(), POLLOUT, 0};
      if (::poll(&p, 1, msLeft(deadline)) == 0) {
        throw Failure{
            fmt::format("{}: could not send the request within {}", path, timeoutText(timeout))};
      }
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      // Portico may have answered and closed before reading the request
      // (too many connections): show its answer if there is one.
      send_error = fmt::format("{}: sending the request failed: {}", path, std::strerror(errno));
      break;
    }
    throw Failure{fmt::format("{}: sending the request failed: {}", path, std::strerror(errno))};
  }
  return send_error;
}

// Sends `line` and returns the reply line (without its '\n').
std::string exchange(const std::string& path, const std::string& line,
                     std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Failure{fmt::format("cannot connect to {}: the socket path is {} (at most {} bytes)",
                              path, path.empty() ? "empty" : "too long",
                              sizeof(addr.sun_path) - 1)};
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) {
    throw Failure{fmt::format("cannot create a socket: {}", std::strerror(errno))};
  }
  // A Unix socket connects at once or fails; EAGAIN means the listen
  // backlog is full, so retry until the deadline.
  while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    if (err == EINTR) {
      continue;
    }
    if (err == EAGAIN && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    throw Failure{fmt::format("cannot connect to {}: {} (is Portico running? --socket?)", path,
                              std::strerror(err))};
  }

  const std::string send_error = sendRequest(fd, path, line, deadline, timeout);

  std::string reply;
  char buf[64 * 1024];
  for (;;) {
    auto nl = reply.find('\n');
    if (nl != std::string::npos) {
      reply.resize(nl);
      break;
    }
    pollfd p{fd.get(), POLLIN, 0};
    int rc = ::poll(&p, 1, msLeft(deadline));
    if (rc < 0 && errno == EINTR) {
      continue;
    }
    if (rc == 0) {
      throw Failure{
          fmt::format("no reply from {} within {} (--timeout)", path, timeoutText(timeout))};
    }
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      if (!send_error.empty() && reply.empty()) {
        throw Failure{send_error};
      }
      throw Failure{fmt::format("{}: reading the reply failed: {}", path, std::strerror(errno))};
    }
    if (n == 0) {
      if (reply.empty()) {
        throw Failure{!send_error.empty()
                          ? send_error
                          : fmt::format("{}: Portico closed the connection without a reply", path)};
      }
      break;  // a last line without '\n'
    }
    reply.append(buf, static_cast<std::size_t>(n));
    if (reply.size() > kMaxReply) {
      throw Failure{fmt::format("{}: reply longer than {} bytes", path, kMaxReply)};
    }
  }
  if (!reply.empty() && reply.back() == '\r') {
    reply.pop_back();
  }
  return reply;
}

}  // namespace portico::ctl
