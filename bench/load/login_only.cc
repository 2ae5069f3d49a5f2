// portico_load --login-only (login_only.h).
#include "login_only.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "cpu_usage.h"
#include "latency_histogram.h"

namespace portico::load {
namespace {

using Clock = std::chrono::steady_clock;

struct ClientStats {
  LatencyHistogram latency;  // ns
  std::uint64_t logins = 0;
  std::uint64_t failures = 0;
  std::string first_error;
};

// One connection: reads CRLF lines with a bounded buffer.
class Conn {
 public:
  explicit Conn(int fd) : fd_(fd) {}
  ~Conn() { ::close(fd_); }
  bool send(const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        return false;
      }
      off += static_cast<std::size_t>(n);
    }
    return true;
  }
  // The next line without CRLF; false on EOF, error or timeout.
  bool line(std::string& out) {
    for (;;) {
      auto eol = buf_.find("\r\n");
      if (eol != std::string::npos) {
        out = buf_.substr(0, eol);
        buf_.erase(0, eol + 2);
        return true;
      }
      if (buf_.size() > 64 * 1024) {
        return false;
      }
      char tmp[4096];
      ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n <= 0) {
        return false;
      }
      buf_.append(tmp, static_cast<std::size_t>(n));
    }
  }
  // Lines until one starting with `tag` + ' '; false if none.
  bool tagged(const std::string& tag, std::string& out) {
    while (line(out)) {
      if (out.compare(0, tag.size() + 1, tag + " ") == 0) {
        return true;
      }
    }
    return false;
  }

 private:
  int fd_;
  std::string buf_;
};

std::string oneLogin(const Options& o, const sockaddr_storage& address, const std::string& user,
                     ClientStats& stats) {
  int fd = ::socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return "socket failed";
  }
  Conn c(fd);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(o.timeout_ns / 1'000'000'000);
  tv.tv_usec = static_cast<suseconds_t>(o.timeout_ns % 1'000'000'000 / 1000);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  socklen_t len = address.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), len) != 0) {
    return "connect failed";
  }
  std::string l;
  if (!c.line(l) || l.compare(0, 4, "* OK") != 0) {
    return "no greeting: " + l.substr(0, 100);
  }
  auto t0 = Clock::now();
  if (!c.send(fmt::format("a1 LOGIN {} {}\r\n", quoteImap(user), quoteImap(o.password))) ||
      !c.tagged("a1", l)) {
    return "no answer to LOGIN";
  }
  auto t1 = Clock::now();
  if (l.compare(0, 5, "a1 OK") != 0) {
    return "LOGIN: " + l.substr(0, 100);
  }
  if (!c.send("a2 LOGOUT\r\n") || !c.tagged("a2", l)) {
    return "no answer to LOGOUT";
  }
  stats.latency.record(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
  ++stats.logins;
  return {};
}

}  // namespace

int runLoginOnly(const Options& o, const sockaddr_storage& address, const std::string& target) {
  std::vector<ClientStats> stats(o.sessions);
  std::vector<std::thread> threads;
  const auto duration = std::chrono::nanoseconds(o.duration_ns);
  CpuSnapshot start = takeCpuSnapshot(o.pids, o.pgids);
  const auto t0 = Clock::now();
  const auto stop_at = t0 + duration;
  for (std::uint32_t i = 0; i < o.sessions; ++i) {
    threads.emplace_back([&, i] {
      std::uint32_t n = i;
      // --think-time paces the load: after each login the client pauses
      // for a random 0.5-1.5 times it, so the clients do not march in step
      // and the machine is left partly idle (an open-ish load, where a
      // login's latency is its own path, not the queue for the CPUs).
      std::mt19937_64 random(i + 1);
      std::uniform_real_distribution<double> spread(0.5, 1.5);
      while (Clock::now() < stop_at) {
        std::string user = formatUser(o.users, o.user_first + n++ % o.user_count);
        std::string error = oneLogin(o, address, user, stats[i]);
        if (!error.empty()) {
          ++stats[i].failures;
          if (stats[i].first_error.empty()) {
            stats[i].first_error = error;
          }
        }
        if (o.think_ns != 0) {
          auto pause = std::chrono::nanoseconds(
              static_cast<std::int64_t>(static_cast<double>(o.think_ns) * spread(random)));
          std::this_thread::sleep_until(std::min(Clock::now() + pause, stop_at));
        }
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  const double window = std::chrono::duration<double>(Clock::now() - t0).count();
  CpuSnapshot end = takeCpuSnapshot(o.pids, o.pgids);
  ClientStats all;
  for (const ClientStats& s : stats) {
    all.latency.merge(s.latency);
    all.logins += s.logins;
    all.failures += s.failures;
    if (all.first_error.empty()) {
      all.first_error = s.first_error;
    }
  }
  const double per = all.logins > 0 ? 1e6 / static_cast<double>(all.logins) : 0.0;
  using nlohmann::json;
  json cpu;
  cpu["load_tool_us_per_login"] = (end.self_s - start.self_s) * per;
  json pids = json::array();
  for (std::size_t i = 0; i < o.pids.size(); ++i) {
    pids.push_back({{"pid", o.pids[i]},
                    {"cpu_s", end.pid_s[i] - start.pid_s[i]},
                    {"us_per_login", (end.pid_s[i] - start.pid_s[i]) * per}});
  }
  cpu["pids"] = pids;
  json pgids = json::array();
  for (std::size_t i = 0; i < o.pgids.size(); ++i) {
    pgids.push_back({{"pgid", o.pgids[i]},
                     {"cpu_s", end.pgid_s[i] - start.pgid_s[i]},
                     {"us_per_login", (end.pgid_s[i] - start.pgid_s[i]) * per}});
  }
  cpu["pgids"] = pgids;
  const double busy = end.machine.busy_s - start.machine.busy_s;
  const double idle = end.machine.idle_s - start.machine.idle_s;
  cpu["machine_busy_pct"] = busy + idle > 0 ? 100.0 * busy / (busy + idle) : 0.0;
  auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
  json report = {{"scenario", "login-only"},
                 {"target", target},
                 {"label", o.label},
                 {"clients", o.sessions},
                 {"think_time_s", static_cast<double>(o.think_ns) / 1e9},
                 {"window_s", window},
                 {"logins", all.logins},
                 {"logins_per_s", static_cast<double>(all.logins) / window},
                 {"failures", all.failures},
                 {"first_error", all.first_error},
                 {"login_latency_us",
                  {{"p50", us(all.latency.percentile(50))},
                   {"p99", us(all.latency.percentile(99))},
                   {"max", us(all.latency.max())}}},
                 {"cpu", cpu}};
  if (o.json) {
    std::puts(report.dump(2).c_str());
  } else {
    std::printf(
        "%s login-only %s: %llu logins in %.1f s (%.0f/s), %llu failed; LOGIN p50 %.0f us "
        "p99 %.0f us\n",
        target.c_str(), o.label.c_str(), static_cast<unsigned long long>(all.logins), window,
        static_cast<double>(all.logins) / window, static_cast<unsigned long long>(all.failures),
        us(all.latency.percentile(50)), us(all.latency.percentile(99)));
    for (const auto& p : pids) {
      std::printf("  pid %d: %.0f us CPU per login\n", p["pid"].get<int>(),
                  p["us_per_login"].get<double>());
    }
    for (const auto& p : pgids) {
      std::printf("  pgid %d: %.0f us CPU per login\n", p["pgid"].get<int>(),
                  p["us_per_login"].get<double>());
    }
    std::printf("  load tool: %.0f us CPU per login; machine %.0f%% busy\n",
                cpu["load_tool_us_per_login"].get<double>(), cpu["machine_busy_pct"].get<double>());
  }
  std::fflush(stdout);
  return all.failures > 0 ? 1 : 0;
}

}  // namespace portico::load
