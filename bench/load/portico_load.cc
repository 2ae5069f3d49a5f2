// portico_load: end-to-end IMAP load generator for Portico and its backends.
//
// Opens --sessions IMAP sessions (connect, greeting, LOGIN as users
// round-robin, SELECT), then, in the measured window, keeps --pipeline
// commands from --mix in flight per session and times each from send to its
// tagged reply (monotonic clock) until --duration or --max-commands, then
// LOGOUT. --seed-messages K first APPENDs messages until each user's mailbox
// holds at least K (so repeated runs do not grow it). Reports throughput,
// latency percentiles, errors, and the CPU that this tool, --pid processes,
// --pgid process groups and the whole machine used during the window.
//
// Bounded: every wait on the server has --timeout; the run hard-stops
// (exit 3) at --duration + 30 s after the sessions start to connect;
// seeding hard-stops after 120 s. Exit codes: 0 ok, 1 sessions lost during
// the run, 2 usage or setup failure, 3 hard stop.
#include <netdb.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cpu_usage.h"
#include "load_options.h"
#include "load_session.h"
#include "login_only.h"

namespace portico::load {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kSeedBudget = std::chrono::seconds(120);
constexpr auto kRunSlack = std::chrono::seconds(30);

// Kills the process (exit 3) if a phase overruns its deadline, whatever the
// loops are doing.
class Watchdog {
 public:
  Watchdog() : thread_([this] { watch(); }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void arm(Clock::time_point deadline, std::string what) {
    std::lock_guard lock(mu_);
    deadline_ = deadline;
    what_ = std::move(what);
    cv_.notify_all();
  }

 private:
  void watch() {
    std::unique_lock lock(mu_);
    while (!done_) {
      if (Clock::now() >= deadline_) {
        std::fprintf(stderr, "portico_load: hard stop: %s did not finish in time\n", what_.c_str());
        std::fflush(stderr);
        std::_Exit(3);
      }
      cv_.wait_until(lock, deadline_);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Clock::time_point deadline_ = Clock::time_point::max();
  std::string what_;
  std::thread thread_;
};

std::string resolve(const Options& o, sockaddr_storage& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(o.port);
  int rc = getaddrinfo(o.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return fmt::format("cannot resolve {}: {}", o.host, gai_strerror(rc));
  }
  std::memcpy(&out, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return {};
}

void raiseFileLimit(std::uint32_t sessions) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < sessions + 64) {
    std::fprintf(stderr, "portico_load: warning: open-files limit %llu is low for %u sessions\n",
                 static_cast<unsigned long long>(rl.rlim_cur), sessions);
  }
}

std::string makeSeedMessage(std::uint32_t size) {
  std::string m =
      "From: Portico Load <load@example.net>\r\n"
      "To: Someone <someone@example.net>\r\n"
      "Subject: portico_load seed message\r\n"
      "Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
      "Message-ID: <seed@portico-load.test>\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=us-ascii\r\n"
      "\r\n";
  static constexpr std::string_view kLine =
      "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopq\r\n";
  while (m.size() + kLine.size() <= size) {
    m += kLine;
  }
  return m;
}

std::string userOf(const Options& o, std::uint32_t session) {
  return formatUser(o.users, o.user_first + session % o.user_count);
}

void waitFor(RunShared& shared, auto pred) {
  std::unique_lock lock(shared.mu);
  shared.cv.wait(lock, [&] { return pred(); });
}

void printErrors(const RunShared& shared, std::uint32_t total, const char* what) {
  std::fprintf(stderr, "portico_load: %s failed for %u of %u sessions; first errors:\n", what,
               shared.setup_failed, total);
  for (const std::string& e : shared.errors) {
    std::fprintf(stderr, "  %s\n", e.c_str());
  }
}

// Seeds each user's mailbox, one session per user. Returns false on failure.
bool seed(const Options& o, const sockaddr_storage& address, const std::string& target,
          Watchdog& watchdog) {
  std::uint32_t users = std::min(o.sessions, o.user_count);
  RunShared shared(o);
  shared.address = address;
  shared.target = target;
  shared.seed_message = makeSeedMessage(o.message_size);
  std::vector<LoadLoop::SessionSpec> specs;
  for (std::uint32_t i = 0; i < users; ++i) {
    specs.push_back({i, userOf(o, i)});
  }
  watchdog.arm(Clock::now() + kSeedBudget, "seeding the mailboxes");
  auto started = Clock::now();
  LoadLoop loop(shared, LoadLoop::Mode::kSeed, std::move(specs));
  loop.run();
  if (shared.setup_failed > 0) {
    printErrors(shared, users, "seeding");
    return false;
  }
  double secs = std::chrono::duration<double>(Clock::now() - started).count();
  std::fprintf(
      stderr, "portico_load: seeded %u mailboxes to >= %u messages (%llu appended, %.1f s)\n",
      users, o.seed_messages, static_cast<unsigned long long>(loop.stats().appended), secs);
  return true;
}

double us(std::uint64_t ns) {
  return static_cast<double>(ns) / 1000.0;
}

nlohmann::json latencyJson(const LatencyHistogram& h) {
  return {{"count", h.count()},
          {"p50", us(h.percentile(50))},
          {"p90", us(h.percentile(90))},
          {"p99", us(h.percentile(99))},
          {"p999", us(h.percentile(99.9))},
          {"max", us(h.max())},
          {"mean", h.mean() / 1000.0}};
}

struct Result {
  std::uint32_t sessions_ok = 0;
  double window_s = 0;
  LoopStats stats;
  std::vector<ProcessMemory> memory_before_setup;  // per --pid
  CpuSnapshot cpu_start;
  CpuSnapshot cpu_end;
};

// The mix's latency and answers, per command and over all of them.
struct CommandTotals {
  LatencyHistogram all;
  std::uint64_t no = 0;
  std::uint64_t bad = 0;
  nlohmann::json per_command = nlohmann::json::object();
};

CommandTotals commandTotals(const Options& o, const Result& r) {
  using nlohmann::json;
  CommandTotals t;
  for (std::size_t i = 0; i < o.mix.size(); ++i) {
    const CommandStats& c = r.stats.commands[i];
    t.all.merge(c.latency);
    t.no += c.no;
    t.bad += c.bad;
    json j = latencyJson(c.latency);
    j["text"] = o.mix[i].text;
    j["weight"] = o.mix[i].weight;
    j["no"] = c.no;
    j["bad"] = c.bad;
    t.per_command[o.mix[i].name] = j;
  }
  return t;
}

// The report's "cpu": the load tool, each --pid (with its RSS) and --pgid over
// the window, per command of the `commands` answered in it, and the machine.
nlohmann::json cpuReport(const Options& o, const Result& r, std::uint64_t commands) {
  using nlohmann::json;
  double per_cmd = commands ? 1e6 / static_cast<double>(commands) : 0;
  auto cpuEntry = [&](double start, double end) {
    json j;
    if (start < 0 || end < 0) {
      j["cpu_s"] = nullptr;
      j["error"] = "not readable in /proc at the start or end of the window";
      return j;
    }
    j["cpu_s"] = end - start;
    j["cpu_us_per_command"] = (end - start) * per_cmd;
    j["cores_busy"] = r.window_s > 0 ? (end - start) / r.window_s : 0;
    return j;
  };
  json cpu;
  cpu["load_tool"] = cpuEntry(r.cpu_start.self_s, r.cpu_end.self_s);
  json pids = json::array();
  for (std::size_t i = 0; i < o.pids.size(); ++i) {
    json j = cpuEntry(r.cpu_start.pid_s[i], r.cpu_end.pid_s[i]);
    j["pid"] = o.pids[i];
    j["comm"] = processName(o.pids[i]);
    // RSS before any session connected, with every session logged in and
    // selected (window start), at the window's end, and the peak.
    const long before = r.memory_before_setup[i].rss_kib;
    const long ready = r.cpu_start.pid_memory[i].rss_kib;
    j["rss_kib"] = {{"before_setup", before},
                    {"window_start", ready},
                    {"window_end", r.cpu_end.pid_memory[i].rss_kib},
                    {"peak", r.cpu_end.pid_memory[i].peak_kib}};
    if (before >= 0 && ready >= 0 && r.sessions_ok > 0) {
      j["rss_kib_per_session"] = static_cast<double>(ready - before) / r.sessions_ok;
    }
    pids.push_back(j);
  }
  cpu["pids"] = pids;
  json pgids = json::array();
  for (std::size_t i = 0; i < o.pgids.size(); ++i) {
    json j = cpuEntry(r.cpu_start.pgid_s[i], r.cpu_end.pgid_s[i]);
    j["pgid"] = o.pgids[i];
    j["comm"] = processName(o.pgids[i]);
    pgids.push_back(j);
  }
  cpu["pgids"] = pgids;
  const MachineTimes& m0 = r.cpu_start.machine;
  const MachineTimes& m1 = r.cpu_end.machine;
  double busy = m1.busy_s - m0.busy_s;
  double idle = m1.idle_s - m0.idle_s;
  cpu["machine"] = {{"cores", m1.cores},
                    {"busy_s", busy},
                    {"idle_s", idle},
                    {"busy_pct", busy + idle > 0 ? 100.0 * busy / (busy + idle) : 0}};
  return cpu;
}

nlohmann::json buildReport(const Options& o, const std::string& target, const Result& r) {
  using nlohmann::json;
  CommandTotals totals = commandTotals(o, r);
  std::uint64_t commands = totals.all.count();

  json report;
  report["label"] = o.label;
  report["target"] = target;
  report["options"] = {{"sessions", o.sessions},
                       {"threads", o.threads},
                       {"pipeline", o.pipeline},
                       {"active_percent", o.active_percent},
                       {"think_time_s", static_cast<double>(o.think_ns) / 1e9},
                       {"duration_s", static_cast<double>(o.duration_ns) / 1e9},
                       {"max_commands", o.max_commands},
                       {"mix", o.mix_spec},
                       {"users", o.users},
                       {"user_count", o.user_count},
                       {"seed_messages", o.seed_messages},
                       {"message_size", o.message_size}};
  std::uint64_t lost = r.stats.disconnects + r.stats.timeouts + r.stats.protocol_errors;
  report["sessions"] = {{"requested", o.sessions},
                        {"ok", r.sessions_ok},
                        {"failed_setup", 0},
                        {"lost", lost},
                        {"logged_out", r.stats.logouts}};
  report["window_s"] = r.window_s;
  report["commands"] = commands;
  report["commands_per_s"] = r.window_s > 0 ? static_cast<double>(commands) / r.window_s : 0;
  report["latency_us"] = latencyJson(totals.all);
  report["per_command"] = totals.per_command;
  report["errors"] = {{"no", totals.no},
                      {"bad", totals.bad},
                      {"disconnects", r.stats.disconnects},
                      {"timeouts", r.stats.timeouts},
                      {"protocol", r.stats.protocol_errors}};
  report["late_replies"] = r.stats.late_replies;
  report["empty_mailboxes"] = r.stats.empty_mailboxes;
  report["bytes"] = {{"in", r.stats.bytes_in},
                     {"out", r.stats.bytes_out},
                     {"reads", r.stats.reads},
                     {"literal", r.stats.literal_bytes}};
  report["cpu"] = cpuReport(o, r, commands);
  return report;
}

void printHuman(const nlohmann::json& j) {
  auto line = [](std::string_view name, const nlohmann::json& l) {
    fmt::print("  {:<12} {:>10} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f}\n", name,
               l["count"].get<std::uint64_t>(), l["p50"].get<double>(), l["p90"].get<double>(),
               l["p99"].get<double>(), l["p999"].get<double>(), l["max"].get<double>(),
               l["mean"].get<double>());
  };
  fmt::print(
      "portico_load -> {}{}\n", j["target"].get<std::string>(),
      j["label"].get<std::string>().empty() ? "" : " (" + j["label"].get<std::string>() + ")");
  const auto& s = j["sessions"];
  const auto& e = j["errors"];
  fmt::print("sessions: {} ok of {}, {} lost (disconnects {}, timeouts {}, protocol errors {})\n",
             s["ok"].get<std::uint32_t>(), s["requested"].get<std::uint32_t>(),
             s["lost"].get<std::uint64_t>(), e["disconnects"].get<std::uint64_t>(),
             e["timeouts"].get<std::uint64_t>(), e["protocol"].get<std::uint64_t>());
  fmt::print("window: {:.2f} s, commands: {} ({:.1f}/s), NO {}, BAD {}\n",
             j["window_s"].get<double>(), j["commands"].get<std::uint64_t>(),
             j["commands_per_s"].get<double>(), e["no"].get<std::uint64_t>(),
             e["bad"].get<std::uint64_t>());
  fmt::print("latency (us)  {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n", "count", "p50", "p90",
             "p99", "p99.9", "max", "mean");
  line("all", j["latency_us"]);
  for (const auto& [name, l] : j["per_command"].items()) {
    line(name, l);
  }
  fmt::print("CPU during the window:\n");
  auto cpu = [](const std::string& who, const nlohmann::json& c) {
    if (c["cpu_s"].is_null()) {
      fmt::print("  {}: unreadable\n", who);
      return;
    }
    fmt::print("  {}: {:.2f} s ({:.1f} us/command, {:.2f} cores)\n", who, c["cpu_s"].get<double>(),
               c["cpu_us_per_command"].get<double>(), c["cores_busy"].get<double>());
  };
  cpu("load tool", j["cpu"]["load_tool"]);
  for (const auto& p : j["cpu"]["pids"]) {
    cpu(fmt::format("pid {} ({})", p["pid"].get<int>(), p["comm"].get<std::string>()), p);
    const auto& m = p["rss_kib"];
    fmt::print("    RSS KiB: {} before setup, {} ready, {} at the end, {} peak",
               m["before_setup"].get<long>(), m["window_start"].get<long>(),
               m["window_end"].get<long>(), m["peak"].get<long>());
    if (p.contains("rss_kib_per_session")) {
      fmt::print(" ({:.2f} KiB per session)", p["rss_kib_per_session"].get<double>());
    }
    fmt::print("\n");
  }
  for (const auto& p : j["cpu"]["pgids"]) {
    cpu(fmt::format("pgid {} ({} and children)", p["pgid"].get<int>(),
                    p["comm"].get<std::string>()),
        p);
  }
  const auto& m = j["cpu"]["machine"];
  fmt::print("  machine: {} cores, busy {:.2f} s, idle {:.2f} s ({:.0f}% busy)\n",
             m["cores"].get<int>(), m["busy_s"].get<double>(), m["idle_s"].get<double>(),
             m["busy_pct"].get<double>());
}

int run(Options& o, std::string target, const sockaddr_storage& address) {
  Watchdog watchdog;
  if (o.seed_messages > 0 && !seed(o, address, target, watchdog)) {
    return 2;
  }
  if (o.seed_only) {
    return 0;
  }
  watchdog.arm(Clock::now() + std::chrono::nanoseconds(o.duration_ns) + kRunSlack, "the load run");

  RunShared shared(o);
  shared.address = address;
  shared.target = target;
  std::vector<std::vector<LoadLoop::SessionSpec>> per_loop(o.threads);
  for (std::uint32_t i = 0; i < o.sessions; ++i) {
    per_loop[i % o.threads].push_back({i, userOf(o, i)});
  }
  std::vector<std::unique_ptr<LoadLoop>> loops;
  for (auto& specs : per_loop) {
    loops.push_back(std::make_unique<LoadLoop>(shared, LoadLoop::Mode::kLoad, std::move(specs)));
  }
  Result r;
  for (int pid : o.pids) {
    ProcessMemory m;
    readProcessMemory(pid, m);
    r.memory_before_setup.push_back(m);
  }
  std::vector<std::thread> threads;
  for (auto& loop : loops) {
    threads.emplace_back([l = loop.get()] { l->run(); });
  }
  auto setPhase = [&](Phase p) {
    shared.phase.store(static_cast<int>(p));
    for (auto& loop : loops) {
      loop->wake();
    }
  };
  auto joinAll = [&] {
    for (std::thread& t : threads) {
      t.join();
    }
  };

  auto setup_started = Clock::now();
  waitFor(shared, [&] { return shared.ready + shared.setup_failed >= o.sessions; });
  if (shared.setup_failed > 0) {
    setPhase(Phase::kAbort);
    joinAll();
    printErrors(shared, o.sessions, "setup (connect, greeting, LOGIN, SELECT)");
    return 2;
  }
  std::fprintf(stderr, "portico_load: %u sessions ready in %.2f s; running\n", o.sessions,
               std::chrono::duration<double>(Clock::now() - setup_started).count());

  r.sessions_ok = shared.ready;
  r.cpu_start = takeCpuSnapshot(o.pids, o.pgids);
  auto t0 = Clock::now();
  // The window and the LOGOUTs after it get the whole slack, however long
  // the setup of many sessions took.
  watchdog.arm(t0 + std::chrono::nanoseconds(o.duration_ns) + kRunSlack, "the load run");
  setPhase(Phase::kRun);
  {
    std::unique_lock lock(shared.mu);
    shared.cv.wait_until(lock, t0 + std::chrono::nanoseconds(o.duration_ns),
                         [&] { return shared.finished >= shared.ready; });
  }
  auto t1 = Clock::now();
  r.cpu_end = takeCpuSnapshot(o.pids, o.pgids);
  setPhase(Phase::kStop);
  joinAll();
  std::fprintf(stderr, "portico_load: window closed, every session logged out in %.2f s\n",
               std::chrono::duration<double>(Clock::now() - t1).count());
  r.window_s = std::chrono::duration<double>(t1 - t0).count();
  for (auto& loop : loops) {
    r.stats.merge(loop->stats());
  }
  nlohmann::json report = buildReport(o, target, r);
  if (o.json) {
    std::puts(report.dump(2).c_str());
  } else {
    printHuman(report);
  }
  std::fflush(stdout);
  bool lost = r.stats.disconnects + r.stats.timeouts + r.stats.protocol_errors > 0;
  return lost ? 1 : 0;
}

}  // namespace
}  // namespace portico::load

int main(int argc, char** argv) {
  using namespace portico::load;
  Options o;
  std::string duration = "10s";
  std::string timeout = "10s";
  std::string think = "0";
  CLI::App app{"portico_load: end-to-end IMAP load generator (see bench/load/README.md)"};
  app.add_option("--host", o.host, "server address")->capture_default_str();
  app.add_option("--port", o.port, "server port")->required();
  app.add_option("--sessions", o.sessions, "concurrent sessions")->capture_default_str();
  app.add_option("--threads", o.threads, "event loops (threads)")->capture_default_str();
  app.add_option("--duration", duration, "measured window, e.g. 10s, 500ms, 2m")
      ->capture_default_str();
  app.add_option("--max-commands", o.max_commands,
                 "stop after this many commands in total (0: none)")
      ->capture_default_str();
  app.add_option("--users", o.users, "user-name pattern, printf-like with one %d")
      ->capture_default_str();
  app.add_option("--user-count", o.user_count, "distinct users, used round-robin")
      ->capture_default_str();
  app.add_option("--user-first", o.user_first, "index of the first user")->capture_default_str();
  app.add_option("--password", o.password, "password of every user")->required();
  app.add_option("--mailbox", o.mailbox, "mailbox to SELECT")->capture_default_str();
  app.add_option("--mix", o.mix_spec,
                 "weighted command mix NAME:WEIGHT,...; built-ins:\n" + builtinCommandHelp() +
                     "(%n: a message number)")
      ->capture_default_str();
  app.add_option("--define", o.defines, "extra mix command NAME=TEXT (repeatable)");
  app.add_option("--pipeline", o.pipeline, "commands in flight per session")->capture_default_str();
  app.add_option("--active-percent", o.active_percent,
                 "percent of the sessions that send commands; the rest stay logged in, silent")
      ->capture_default_str();
  app.add_option("--think-time", think,
                 "pause of an active session between reply and next command (--login-only: "
                 "0.5-1.5x it after each login)")
      ->capture_default_str();
  app.add_option("--seed-messages", o.seed_messages,
                 "APPEND until each user's mailbox holds this many messages")
      ->capture_default_str();
  app.add_option("--message-size", o.message_size, "size of a seeded message, bytes")
      ->capture_default_str();
  app.add_option("--timeout", timeout, "limit on every wait for the server")->capture_default_str();
  app.add_option("--setup-concurrency", o.setup_concurrency,
                 "sessions in setup at once, per thread")
      ->capture_default_str();
  app.add_option("--pid", o.pids, "report this process's CPU in the window (repeatable)");
  app.add_option("--pgid", o.pgids, "report this process group's CPU in the window (repeatable)");
  app.add_option("--label", o.label, "free text copied into the report");
  app.add_flag("--json", o.json, "print the report as JSON on stdout");
  app.add_flag("--seed-only", o.seed_only, "seed the mailboxes (--seed-messages), then exit");
  app.add_flag("--login-only", o.login_only,
               "each session repeats connect, LOGIN, LOGOUT, close; reports LOGIN latency and "
               "CPU per login");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  std::string error = parseDuration(duration, o.duration_ns);
  if (error.empty()) {
    error = parseDuration(timeout, o.timeout_ns);
  }
  if (error.empty()) {
    error = parseDuration(think, o.think_ns);
  }
  if (error.empty() && o.seed_only && o.seed_messages == 0) {
    error = "--seed-only needs --seed-messages";
  }
  if (error.empty() && o.duration_ns == 0) {
    error = "--duration must be positive (it bounds --max-commands runs too)";
  }
  if (error.empty()) {
    error = finishOptions(o);
  }
  sockaddr_storage address{};
  if (error.empty()) {
    error = resolve(o, address);
  }
  if (!error.empty()) {
    std::fprintf(stderr, "portico_load: %s\n", error.c_str());
    return 2;
  }
  o.threads = std::min(o.threads, o.sessions);
  raiseFileLimit(o.sessions);
  std::string target = o.host.find(':') != std::string::npos
                           ? fmt::format("[{}]:{}", o.host, o.port)
                           : fmt::format("{}:{}", o.host, o.port);
  if (o.login_only) {
    return runLoginOnly(o, address, target);
  }
  return run(o, target, address);
}
