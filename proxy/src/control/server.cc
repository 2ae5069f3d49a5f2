// The process: config, workers, and the control loop on the main thread
// (signals, the status endpoint, the admin socket, probes and monitors).
#include <signal.h>
#include <sys/resource.h>
#include <uv.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "config/config.h"
#include "control/control_loop.h"
#include "control/process.h"
#include "portico/logging.h"
#include "portico/proxy.h"
#include "runtime.h"
#include "worker.h"

namespace portico::proxy {

namespace {

Result<RuntimeConfigPtr> makeRuntime(Config config, BackendRegistry& registry) {
  std::vector<std::size_t> slots;
  for (const BackendConfig& b : config.backends) {
    std::size_t slot = registry.slot(b.name);
    if (slot >= kMaxBackends) {
      return Status::error(
          fmt::format("too many distinct backend names (at most {})", kMaxBackends));
    }
    slots.push_back(slot);
  }
  return buildRuntime(std::move(config), std::move(slots));
}

// Descriptors open now (listeners, loops, logs, ...); 0 if unknown.
std::uint64_t openDescriptors() {
  std::error_code ec;
  std::uint64_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return ec ? 0 : n;
}

// Headroom beyond what is open at start: health probe connections, admin
// and status clients, protocol log files, TLS files read on reload.
constexpr std::uint64_t kDescriptorHeadroom = 32;

// At the open-file limit new connections can only be answered with a BYE,
// so the soft limit goes up to the hard one at start (before anything is
// opened).
void raiseOpenFileLimit() {
  struct rlimit limit {};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) {
    return;
  }
  struct rlimit wanted = limit;
  wanted.rlim_cur = limit.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &wanted) == 0) {
    logging::log(logging::Level::kInfo, "main", "open-file limit raised from {} to {}",
                 static_cast<std::uint64_t>(limit.rlim_cur),
                 static_cast<std::uint64_t>(wanted.rlim_cur));
  } else {
    logging::log(logging::Level::kWarn, "main",
                 "cannot raise the open-file limit from {} to {}: {}",
                 static_cast<std::uint64_t>(limit.rlim_cur),
                 static_cast<std::uint64_t>(limit.rlim_max), std::strerror(errno));
  }
}

// An operator hears when the limit is below what max_connections needs:
// two descriptors per session (client and backend) on top of what is open
// now, plus headroom.
void checkOpenFileLimit(const Config& config) {
  struct rlimit limit {};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return;
  }
  const auto soft = static_cast<std::uint64_t>(limit.rlim_cur);
  const std::uint64_t open = openDescriptors();
  const std::uint64_t needed = 2ull * config.limits.max_connections + open + kDescriptorHeadroom;
  if (soft < needed) {
    logging::log(logging::Level::kWarn, "main",
                 "open-file limit {} (hard {}) is below the {} descriptors that "
                 "limits.max_connections = {} needs (2 per session, {} open now, {} spare): about "
                 "{} logged-in sessions fit, further connections get * BYE [UNAVAILABLE]; raise "
                 "the hard limit (LimitNOFILE= in systemd, ulimit -Hn) or lower max_connections",
                 soft, static_cast<std::uint64_t>(limit.rlim_max), needed,
                 config.limits.max_connections, open, kDescriptorHeadroom,
                 soft > open ? (soft - open) / 2 : 0);
  }
}

void applyConfiguredTrace(ControlLoop& c) {
  TraceSettings settings;
  settings.on = c.config->config.protocol_log.enabled;
  c.shared.trace.set(settings);
}

void beginShutdown(ControlLoop& c, const char* why) {
  if (c.stopping) {
    return;
  }
  c.stopping = true;
  notifyStopping(fmt::format("stopping ({}): closing sessions between commands", why));
  logging::log(logging::Level::kInfo, "main", "shutdown: {}; closing sessions between commands",
               why);
  if (c.view) {
    c.view->setListening(false);
  }
  for (auto& w : c.workers) {
    w->post([](Worker& worker) { worker.beginShutdown("Server shutting down."); });
  }
  if (c.fleet) {
    c.fleet->stop();
  }
  if (c.health) {
    c.health->stop([] {});
  }
  if (c.admin) {
    c.admin->stop();
  }
  uv_timer_stop(&c.trace_timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.trace_timer), nullptr);
  for (uv_signal_t* s : {&c.sigterm, &c.sigint, &c.sighup, &c.sigusr1}) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
  }
  c.tasks->close();
}

void onSignal(uv_signal_t* handle, int signum) {
  auto* c = static_cast<ControlLoop*>(handle->data);
  if (signum == SIGHUP) {
    const Status done = reloadConfig(*c);
    if (c->health) {
      c->health->recordAction(
          health::ActionRecord{std::chrono::system_clock::now(), "operator", "reload",
                               "configuration", "SIGHUP (systemctl reload, kill -HUP)",
                               "signal SIGHUP", done.ok() ? "done" : "refused: " + done.message()});
    }
  } else if (signum == SIGUSR1) {
    if (c->protocol_log) {
      c->protocol_log->reopen();
      logging::log(logging::Level::kInfo, "main", "protocol log reopened (SIGUSR1)");
    }
  } else {
    beginShutdown(*c, signum == SIGTERM ? "SIGTERM" : "SIGINT");
  }
}

Status reloadConfigNow(ControlLoop& c);

}  // namespace

// Tells the service manager around the reload (RELOADING=1 ... READY=1):
// `systemctl reload` waits for it, and a refused reload leaves the
// service running with its old configuration, so READY=1 either way.
Status reloadConfig(ControlLoop& c) {
  notifyReloading();
  Status done = reloadConfigNow(c);
  notifyReady(done.ok() ? "ready: configuration reloaded"
                        : "ready: reload refused: " + done.message());
  return done;
}

namespace {

void logListenerChanges(const ListenerChanges& listeners, const RuntimeConfig& next) {
  for (const std::string& address : listeners.added) {
    const ListenConfig& entry = next.config.listen[next.listener_index.at(address)];
    logging::log(logging::Level::kInfo, "reload", "reload: listening on {} (tls {})", address,
                 tlsModeName(entry.tls));
  }
  for (const std::string& address : listeners.removed) {
    logging::log(logging::Level::kInfo, "reload",
                 "reload: closing listener {}; its open sessions go on", address);
  }
  for (const std::string& change : listeners.changed) {
    logging::log(logging::Level::kInfo, "reload",
                 "reload: listener {}: applies to new connections; open sessions keep theirs",
                 change);
  }
}

Status reloadConfigNow(ControlLoop& c) {
  ConfigResult result = loadConfig(c.config_path);
  if (!result.errors.empty()) {
    for (const std::string& e : result.errors) {
      logging::log(logging::Level::kError, "reload", "{}", e);
    }
    logging::log(logging::Level::kError, "reload",
                 "reload: failed, keeping the running configuration");
    return Status::error(result.errors.front());
  }
  Result<RuntimeConfigPtr> made = makeRuntime(std::move(*result.config), c.registry);
  if (!made.ok()) {
    logging::log(logging::Level::kError, "reload",
                 "reload: failed: {}; keeping the running configuration", made.message());
    return made.status();
  }
  RuntimeConfigPtr next = std::move(*made);
  // Listeners are matched by address. Every added address is bound for
  // every worker before anything changes: a reload that cannot listen
  // where the new file says is refused whole, and the running listeners
  // keep serving with their old, matching settings.
  ListenerChanges listeners = diffListeners(c.config->config, next->config);
  std::vector<ListenerUpdate> updates(c.workers.size());
  for (const std::string& address : listeners.added) {
    const ListenConfig& entry = next->config.listen[next->listener_index.at(address)];
    for (ListenerUpdate& update : updates) {
      Result<ListenSocket> socket = ListenSocket::open(entry.address);
      if (!socket.ok()) {
        logging::log(logging::Level::kError, "reload",
                     "reload: failed: new listener {}; keeping the running configuration",
                     socket.message());
        return socket.status();  // `updates` closes what was bound so far
      }
      update.added.emplace_back(address, std::move(*socket));
    }
  }
  for (ListenerUpdate& update : updates) {
    update.removed = listeners.removed;
  }
  logListenerChanges(listeners, *next);
  if (next->config.workers != c.config->config.workers) {
    logging::log(logging::Level::kWarn, "reload",
                 "reload: 'workers' changed; it takes effect at the next restart ({} running)",
                 c.workers.size());
  }
  if (next->config.fleet != c.config->config.fleet) {
    logging::log(logging::Level::kWarn, "reload",
                 "reload: [fleet] changed; it takes effect at the next restart");
  }
  if (next->config.limits.max_connections != c.config->config.limits.max_connections) {
    checkOpenFileLimit(next->config);
  }
  const ProtocolLogConfig before = c.config->config.protocol_log;
  c.config = next;
  const ProtocolLogConfig& after = next->config.protocol_log;
  if (c.protocol_log && c.protocol_log->enabled() &&
      (after.directory != before.directory || after.rollover != before.rollover ||
       after.max_file_size != before.max_file_size || after.retention != before.retention ||
       after.max_total_size != before.max_total_size)) {
    // New place or policy for the protocol log: restart the writer there
    // (what was submitted so far is written to the old files first).
    c.protocol_log->stop();
    if (Status log = ensureProtocolLog(c); !log.ok()) {
      logging::log(logging::Level::kError, "reload", "protocol log: {}", log.message());
    }
  }
  if (after.enabled != before.enabled) {
    applyConfiguredTrace(c);  // the file changed its mind; an operator's trace otherwise stays
    if (Status log = after.enabled ? ensureProtocolLog(c) : Status(); !log.ok()) {
      logging::log(logging::Level::kError, "reload", "protocol log: {}", log.message());
    }
  }
  if (c.health) {
    c.health->reconfigure(makeHealthConfig(next->config));
  }
  if (c.admin) {
    c.admin->setIdleTimeout(next->config.admin.idle_timeout);
  }
  setDumpable(next->config.process.dumpable);
  for (std::size_t i = 0; i < c.workers.size(); ++i) {
    // Shared: a posted task must be copyable. Sockets a stopped worker never
    // takes are closed with the last copy.
    auto update = std::make_shared<ListenerUpdate>(std::move(updates[i]));
    c.workers[i]->post(
        [next, update](Worker& worker) { worker.reconfigure(next, std::move(*update)); });
  }
  logging::log(logging::Level::kInfo, "reload",
               "reload: done ({} backends; certificates re-read; {})", next->config.backends.size(),
               listeners.summary());
  return Status();
}

}  // namespace

Status ensureProtocolLog(ControlLoop& c) {
  if (c.protocol_log && c.protocol_log->enabled()) {
    return Status();
  }
  const ProtocolLogConfig& cfg = c.config->config.protocol_log;
  logging::ProtocolLog::Options options;
  options.directory = cfg.directory;
  options.rollover = cfg.rollover == "daily" ? logging::ProtocolLog::Options::Rollover::kDaily
                                             : logging::ProtocolLog::Options::Rollover::kHourly;
  options.max_file_size = cfg.max_file_size;
  options.max_age = std::chrono::duration_cast<std::chrono::hours>(cfg.retention);
  options.max_total_size = cfg.max_total_size;
  options.software_version = version();
  if (Status started = c.protocol_log->start(options); !started.ok()) {
    return started;
  }
  c.shared.protocol_log.store(c.protocol_log.get(), std::memory_order_relaxed);
  return Status();
}

int checkConfig(const std::string& config_path) {
  ConfigResult result = loadConfig(config_path);
  for (const std::string& e : result.errors) {
    std::fprintf(stderr, "%s\n", e.c_str());
  }
  if (!result.errors.empty()) {
    return 1;
  }
  BackendRegistry registry;
  if (Result<RuntimeConfigPtr> made = makeRuntime(*result.config, registry); !made.ok()) {
    std::fprintf(stderr, "%s: %s\n", config_path.c_str(), made.message().c_str());
    return 1;
  }
  if (Result<std::optional<Identity>> identity = resolveIdentity(result.config->process);
      !identity.ok()) {
    std::fprintf(stderr, "%s: %s\n", config_path.c_str(), identity.message().c_str());
    return 1;
  }
  std::printf("%s: configuration OK (%zu listeners, %zu backends)\n", config_path.c_str(),
              result.config->listen.size(), result.config->backends.size());
  return 0;
}

namespace {

// One worker per configured thread (or per core), each with its listeners
// bound; start-up ends here if one cannot bind.
std::size_t makeWorkers(ControlLoop& c) {
  std::size_t n = c.config->config.workers;
  if (n == 0) {
    n = std::max(1u, std::thread::hardware_concurrency());
  }
  for (std::size_t i = 0; i < n; ++i) {
    c.workers.push_back(std::make_unique<Worker>(i, c.config, c.shared, c.limiter));
    if (Status bound = c.workers.back()->bindListeners(); !bound.ok()) {
      std::fprintf(stderr, "portico: not starting: %s\n", bound.message().c_str());
      std::_Exit(1);  // listeners half-bound on loops that never ran: nothing to tidy
    }
  }
  return n;
}

// The health service and its status endpoint, over the workers' view.
void startHealth(ControlLoop& c) {
  c.view =
      std::make_unique<WorkerProxyView>(c.workers, c.shared, c.registry, [&c] { return c.config; });
  c.view->setListening(true);
  c.view->setProtocolLogStatus([&c] { return protocolLogStatusText(c); });
  c.health =
      std::make_unique<health::HealthService>(&c.loop, makeHealthConfig(c.config->config), *c.view);
  if (Status started = c.health->start(); !started.ok()) {
    std::fprintf(stderr, "portico: not starting: status endpoint: %s\n", started.message().c_str());
    std::_Exit(1);
  }
}

// The control loop, its task queue and the signals it handles.
void initControlLoop(ControlLoop& c) {
  uv_loop_init(&c.loop);
  c.tasks = std::make_unique<TaskQueue>(&c.loop);
  for (uv_signal_t* s : {&c.sigterm, &c.sigint, &c.sighup, &c.sigusr1}) {
    uv_signal_init(&c.loop, s);
    s->data = &c;
  }
  uv_signal_start(&c.sigterm, &onSignal, SIGTERM);
  uv_signal_start(&c.sigint, &onSignal, SIGINT);
  uv_signal_start(&c.sighup, &onSignal, SIGHUP);
  uv_signal_start(&c.sigusr1, &onSignal, SIGUSR1);
}

// Drops root for the configured user (the admin socket, and its directory
// when start-up made it, handed over to it), or warns about running as root.
void becomeConfiguredUser(ControlLoop& c, const std::optional<Identity>& identity,
                          const std::string& admin_socket, const std::string& created_socket_dir) {
  if (identity) {
    const bool admin_group = !c.config->config.admin.group.empty();
    std::vector<Handover> handover{{admin_socket, admin_group}};
    if (!created_socket_dir.empty()) {
      handover.push_back({created_socket_dir, admin_group});
    }
    if (Status dropped = dropPrivileges(*identity, handover); !dropped.ok()) {
      std::fprintf(stderr, "portico: not starting: cannot drop privileges: %s\n",
                   dropped.message().c_str());
      std::_Exit(1);
    }
    // setuid() resets the dumpable flag to the system default: set it again.
    setDumpable(c.config->config.process.dumpable);
    logging::log(logging::Level::kInfo, "main", "running as user {} (uid {}), group {} (gid {})",
                 identity->user, identity->uid, identity->group, identity->gid);
  } else if (::geteuid() == 0) {
    logging::log(logging::Level::kWarn, "main",
                 "running as root: set [process] user (or the unit's User=) to drop privileges");
  }
}

// Every 250 ms: a protocol-log trace past its TTL ends, and the workers'
// directory answers reach DirectoryLookupMonitor.
void startTraceTimer(ControlLoop& c) {
  uv_timer_init(&c.loop, &c.trace_timer);
  c.trace_timer.data = &c;
  uv_timer_start(
      &c.trace_timer,
      [](uv_timer_t* t) {
        auto* ctl = static_cast<ControlLoop*>(t->data);
        if (ctl->shared.trace.expireIfDue(std::chrono::system_clock::now())) {
          logging::log(logging::Level::kInfo, "admin", "protocol-log trace ended: its TTL passed");
        }
        // The workers' directory answers, for DirectoryLookupMonitor.
        for (const LookupHealthFeed::Observation& o : ctl->shared.lookup.health.drain()) {
          ctl->health->recordDirectoryResult(o.ok, o.error);
        }
      },
      250, 250);
}

void announceReady(ControlLoop& c, std::size_t n) {
  checkOpenFileLimit(c.config->config);
  std::string addresses;
  for (const ListenConfig& l : c.config->config.listen) {
    addresses += (addresses.empty() ? "" : ", ") + l.address.text();
  }
  logging::log(logging::Level::kInfo, "main",
               "ready: listening on {} with {} workers; status on http://{}; admin socket {}",
               addresses, n, c.config->config.status.listen.text(), c.config->config.admin.socket);
  notifyReady(fmt::format("ready: listening on {} with {} workers", addresses, n));
}

}  // namespace

int runProxy(const std::string& config_path) {
  ConfigResult result = loadConfig(config_path);
  if (!result.errors.empty()) {
    for (const std::string& e : result.errors) {
      std::fprintf(stderr, "%s\n", e.c_str());
    }
    std::fprintf(stderr, "portico: not starting: the configuration has errors\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  setDumpable(result.config->process.dumpable);
  raiseOpenFileLimit();
  // A protocol log file that reaches RLIMIT_FSIZE must fail its write with
  // EFBIG (dropped and counted like a full disk), not kill the process.
  signal(SIGXFSZ, SIG_IGN);
  auto control = std::make_unique<ControlLoop>();
  ControlLoop& c = *control;
  c.config_path = config_path;
  Result<RuntimeConfigPtr> made = makeRuntime(std::move(*result.config), c.registry);
  if (!made.ok()) {
    std::fprintf(stderr, "portico: not starting: %s\n", made.message().c_str());
    return 2;
  }
  c.config = std::move(*made);
  // Who to become once every socket is bound: checked before binding
  // anything, so a missing user stops start-up at once.
  Result<std::optional<Identity>> resolved = resolveIdentity(c.config->config.process);
  if (!resolved.ok()) {
    std::fprintf(stderr, "portico: not starting: %s\n", resolved.message().c_str());
    return 2;
  }
  const std::optional<Identity> identity = std::move(*resolved);
  const std::size_t n = makeWorkers(c);

  initControlLoop(c);

  // The protocol log writer is created now and started (if the config
  // switches it on) after the privilege switch, so its files belong to the
  // user Portico runs as.
  c.protocol_log = std::make_unique<logging::ProtocolLog>(n);
  applyConfiguredTrace(c);

  startHealth(c);
  const std::string& admin_socket = c.config->config.admin.socket;
  // AdminServer::start() creates the socket's directory when it is missing;
  // one it created goes to the user Portico switches to, with the socket.
  const std::filesystem::path socket_dir = std::filesystem::path(admin_socket).parent_path();
  std::error_code ec;
  const bool created_socket_dir = !socket_dir.empty() && !std::filesystem::exists(socket_dir, ec);
  c.admin = std::make_unique<AdminServer>(
      &c.loop, admin_socket, c.config->config.admin.group,
      [&c](const AdminRequest& request, AdminServer::Reply reply) {
        handleAdminCommand(c, request, std::move(reply));
      },
      c.config->config.admin.idle_timeout);
  if (Status started = c.admin->start(); !started.ok()) {
    std::fprintf(stderr, "portico: not starting: %s\n", started.message().c_str());
    std::_Exit(1);
  }

  // Every privileged socket is bound: become the configured user for good,
  // before any worker runs or any file is written.
  becomeConfiguredUser(c, identity, admin_socket, created_socket_dir ? socket_dir.string() : "");

  if (Status log = c.config->config.protocol_log.enabled ? ensureProtocolLog(c) : Status();
      !log.ok()) {
    std::fprintf(stderr, "portico: not starting: protocol log: %s\n", log.message().c_str());
    std::_Exit(1);
  }
  startTraceTimer(c);

  startFleet(c);  // fleet/fleet_control.cc; nothing without [fleet] redis
  for (auto& w : c.workers) {
    w->start();
  }

  announceReady(c, n);

  uv_run(&c.loop, UV_RUN_DEFAULT);
  for (auto& w : c.workers) {
    w->join();
  }
  c.admin.reset();
  c.fleet.reset();
  c.health.reset();
  uv_run(&c.loop, UV_RUN_DEFAULT);  // close callbacks of what was just freed
  uv_loop_close(&c.loop);
  if (c.protocol_log) {
    c.protocol_log->stop();
  }
  logging::log(logging::Level::kInfo, "main", "stopped");
  return 0;
}

}  // namespace portico::proxy
