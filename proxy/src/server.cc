// The process: config, workers, and the control loop on the main thread
// (signals, the status endpoint, the admin socket, probes and monitors).
#include <signal.h>
#include <uv.h>

#include <cstdio>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "config.h"
#include "control.h"
#include "portico/logging.h"
#include "portico/proxy.h"
#include "runtime.h"
#include "worker.h"

namespace portico::proxy {

namespace {

RuntimeConfigPtr makeRuntime(Config config, BackendRegistry& registry, std::string& error) {
  std::vector<std::size_t> slots;
  for (const BackendConfig& b : config.backends) {
    std::size_t slot = registry.slot(b.name);
    if (slot >= kMaxBackends) {
      error = fmt::format("too many distinct backend names (at most {})", kMaxBackends);
      return nullptr;
    }
    slots.push_back(slot);
  }
  return buildRuntime(std::move(config), std::move(slots), error);
}

void applyConfiguredTrace(Control& c) {
  TraceSettings settings;
  settings.on = c.config->config.protocol_log.enabled;
  c.shared.trace.set(settings);
}

void beginShutdown(Control& c, const char* why) {
  if (c.stopping) {
    return;
  }
  c.stopping = true;
  logging::log(logging::Level::kInfo, "main", "shutdown: {}; closing sessions between commands",
               why);
  if (c.view) {
    c.view->setListening(false);
  }
  for (auto& w : c.workers) {
    w->post([](Worker& worker) { worker.beginShutdown("Server shutting down."); });
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
  c.mailbox->close();
}

void onSignal(uv_signal_t* handle, int signum) {
  auto* c = static_cast<Control*>(handle->data);
  if (signum == SIGHUP) {
    std::string error;
    reloadConfig(*c, error);
  } else if (signum == SIGUSR1) {
    if (c->protocol_log) {
      c->protocol_log->reopen();
      logging::log(logging::Level::kInfo, "main", "protocol log reopened (SIGUSR1)");
    }
  } else {
    beginShutdown(*c, signum == SIGTERM ? "SIGTERM" : "SIGINT");
  }
}

}  // namespace

bool reloadConfig(Control& c, std::string& error) {
  ConfigResult result = loadConfig(c.config_path);
  if (!result.errors.empty()) {
    for (const std::string& e : result.errors) {
      logging::log(logging::Level::kError, "reload", "{}", e);
    }
    error = result.errors.front();
    logging::log(logging::Level::kError, "reload",
                 "reload: failed, keeping the running configuration");
    return false;
  }
  RuntimeConfigPtr next = makeRuntime(std::move(*result.config), c.registry, error);
  if (!next) {
    logging::log(logging::Level::kError, "reload",
                 "reload: failed: {}; keeping the running configuration", error);
    return false;
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
    std::string log_error;
    if (!ensureProtocolLog(c, log_error)) {
      logging::log(logging::Level::kError, "reload", "protocol log: {}", log_error);
    }
  }
  if (after.enabled != before.enabled) {
    applyConfiguredTrace(c);  // the file changed its mind; an operator's trace otherwise stays
    std::string log_error;
    if (after.enabled && !ensureProtocolLog(c, log_error)) {
      logging::log(logging::Level::kError, "reload", "protocol log: {}", log_error);
    }
  }
  if (c.health) {
    c.health->reconfigure(makeHealthConfig(next->config));
  }
  for (auto& w : c.workers) {
    w->post([next](Worker& worker) { worker.setConfig(next); });
  }
  logging::log(logging::Level::kInfo, "reload",
               "reload: done ({} backends; certificates re-read; listeners unchanged)",
               next->config.backends.size());
  return true;
}

bool ensureProtocolLog(Control& c, std::string& error) {
  if (c.protocol_log && c.protocol_log->enabled()) {
    return true;
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
  if (!c.protocol_log->start(options, error)) {
    return false;
  }
  c.shared.protocol_log.store(c.protocol_log.get(), std::memory_order_relaxed);
  return true;
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
  std::string error;
  if (!makeRuntime(*result.config, registry, error)) {
    std::fprintf(stderr, "%s: %s\n", config_path.c_str(), error.c_str());
    return 1;
  }
  std::printf("%s: configuration OK (%zu listeners, %zu backends)\n", config_path.c_str(),
              result.config->listen.size(), result.config->backends.size());
  return 0;
}

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
  // A protocol log file that reaches RLIMIT_FSIZE must fail its write with
  // EFBIG (dropped and counted like a full disk), not kill the process.
  signal(SIGXFSZ, SIG_IGN);
  auto control = std::make_unique<Control>();
  Control& c = *control;
  c.config_path = config_path;
  std::string error;
  c.config = makeRuntime(std::move(*result.config), c.registry, error);
  if (!c.config) {
    std::fprintf(stderr, "portico: not starting: %s\n", error.c_str());
    return 2;
  }
  std::size_t n = c.config->config.workers;
  if (n == 0) {
    n = std::max(1u, std::thread::hardware_concurrency());
  }
  for (std::size_t i = 0; i < n; ++i) {
    c.workers.push_back(std::make_unique<Worker>(i, c.config, c.shared, c.limiter));
    if (!c.workers.back()->bindListeners(error)) {
      std::fprintf(stderr, "portico: not starting: %s\n", error.c_str());
      std::_Exit(1);  // listeners half-bound on loops that never ran: nothing to tidy
    }
  }

  uv_loop_init(&c.loop);
  c.mailbox = std::make_unique<Mailbox>(&c.loop);
  for (uv_signal_t* s : {&c.sigterm, &c.sigint, &c.sighup, &c.sigusr1}) {
    uv_signal_init(&c.loop, s);
    s->data = &c;
  }
  uv_signal_start(&c.sigterm, &onSignal, SIGTERM);
  uv_signal_start(&c.sigint, &onSignal, SIGINT);
  uv_signal_start(&c.sighup, &onSignal, SIGHUP);
  uv_signal_start(&c.sigusr1, &onSignal, SIGUSR1);

  // Protocol log: the writer starts now if logging is on in the config, or
  // later when an operator switches it on.
  c.protocol_log = std::make_unique<logging::ProtocolLog>(n);
  applyConfiguredTrace(c);
  if (c.config->config.protocol_log.enabled && !ensureProtocolLog(c, error)) {
    std::fprintf(stderr, "portico: not starting: protocol log: %s\n", error.c_str());
    std::_Exit(1);
  }
  uv_timer_init(&c.loop, &c.trace_timer);
  c.trace_timer.data = &c;
  uv_timer_start(
      &c.trace_timer,
      [](uv_timer_t* t) {
        auto* ctl = static_cast<Control*>(t->data);
        if (ctl->shared.trace.expireIfDue(std::chrono::system_clock::now())) {
          logging::log(logging::Level::kInfo, "admin", "protocol-log trace ended: its TTL passed");
        }
      },
      250, 250);

  for (auto& w : c.workers) {
    w->start();
  }
  c.view =
      std::make_unique<WorkerProxyView>(c.workers, c.shared, c.registry, [&c] { return c.config; });
  c.view->setListening(true);
  c.health =
      std::make_unique<health::HealthService>(&c.loop, makeHealthConfig(c.config->config), *c.view);
  if (!c.health->start(error)) {
    std::fprintf(stderr, "portico: not starting: status endpoint: %s\n", error.c_str());
    std::_Exit(1);
  }
  c.admin = std::make_unique<AdminServer>(
      &c.loop, c.config->config.admin.socket, c.config->config.admin.group,
      [&c](const AdminRequest& request, AdminServer::Reply reply) {
        handleAdminCommand(c, request, std::move(reply));
      });
  if (!c.admin->start(error)) {
    std::fprintf(stderr, "portico: not starting: %s\n", error.c_str());
    std::_Exit(1);
  }

  std::string addresses;
  for (const ListenConfig& l : c.config->config.listen) {
    addresses += (addresses.empty() ? "" : ", ") + l.address.text();
  }
  logging::log(logging::Level::kInfo, "main",
               "ready: listening on {} with {} workers; status on http://{}; admin socket {}",
               addresses, n, c.config->config.status.listen.text(), c.config->config.admin.socket);

  uv_run(&c.loop, UV_RUN_DEFAULT);
  for (auto& w : c.workers) {
    w->join();
  }
  c.admin.reset();
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
