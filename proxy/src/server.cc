// The process: config, workers, and the control loop on the main thread
// (signals now; the status endpoint and admin socket run here too).
#include <signal.h>
#include <uv.h>

#include <cstdio>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "config.h"
#include "portico/logging.h"
#include "portico/proxy.h"
#include "runtime.h"
#include "worker.h"

namespace portico::proxy {

namespace {

struct Control {
  std::string config_path;
  BackendRegistry registry;
  SharedState shared;
  IpLimiter limiter;
  std::vector<std::unique_ptr<Worker>> workers;
  RuntimeConfigPtr config;
  uv_loop_t loop;
  uv_signal_t sigterm, sigint, sighup;
  bool stopping = false;
};

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

void reload(Control& c) {
  ConfigResult result = loadConfig(c.config_path);
  if (!result.errors.empty()) {
    for (const std::string& e : result.errors) {
      logging::log(logging::Level::kError, "reload", "{}", e);
    }
    logging::log(logging::Level::kError, "reload",
                 "reload: failed, keeping the running configuration");
    return;
  }
  std::string error;
  RuntimeConfigPtr next = makeRuntime(std::move(*result.config), c.registry, error);
  if (!next) {
    logging::log(logging::Level::kError, "reload", "reload: failed: {}", error);
    return;
  }
  c.config = next;
  for (auto& w : c.workers) {
    w->post([next](Worker& worker) { worker.setConfig(next); });
  }
  logging::log(logging::Level::kInfo, "reload", "reload: done ({} backends; listeners unchanged)",
               next->config.backends.size());
}

void beginShutdown(Control& c, const char* why) {
  if (c.stopping) {
    return;
  }
  c.stopping = true;
  logging::log(logging::Level::kInfo, "main", "shutdown: {}; closing sessions between commands",
               why);
  for (auto& w : c.workers) {
    w->post([](Worker& worker) { worker.beginShutdown("Server shutting down."); });
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&c.sigterm), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.sigint), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&c.sighup), nullptr);
}

void onSignal(uv_signal_t* handle, int signum) {
  auto* c = static_cast<Control*>(handle->data);
  if (signum == SIGHUP) {
    reload(*c);
  } else {
    beginShutdown(*c, signum == SIGTERM ? "SIGTERM" : "SIGINT");
  }
}

}  // namespace

int checkConfig(const std::string& config_path) {
  ConfigResult result = loadConfig(config_path);
  for (const std::string& e : result.errors) {
    std::fprintf(stderr, "%s\n", e.c_str());
  }
  if (!result.errors.empty()) {
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
  auto control = std::make_unique<Control>();
  Control& c = *control;
  c.config_path = config_path;
  std::string error;
  c.config = makeRuntime(std::move(*result.config), c.registry, error);
  if (!c.config) {
    std::fprintf(stderr, "portico: %s\n", error.c_str());
    return 2;
  }
  std::size_t n = c.config->config.workers;
  if (n == 0) {
    n = std::max(1u, std::thread::hardware_concurrency());
  }
  for (std::size_t i = 0; i < n; ++i) {
    c.workers.push_back(std::make_unique<Worker>(i, c.config, c.shared, c.limiter));
    if (!c.workers.back()->bindListeners(error)) {
      logging::log(logging::Level::kError, "main", "{}", error);
      std::fprintf(stderr, "portico: not starting: %s\n", error.c_str());
      std::_Exit(1);  // listeners half-bound on loops that never ran: nothing to tidy
    }
  }

  uv_loop_init(&c.loop);
  for (uv_signal_t* s : {&c.sigterm, &c.sigint, &c.sighup}) {
    uv_signal_init(&c.loop, s);
    s->data = &c;
  }
  uv_signal_start(&c.sigterm, &onSignal, SIGTERM);
  uv_signal_start(&c.sigint, &onSignal, SIGINT);
  uv_signal_start(&c.sighup, &onSignal, SIGHUP);

  for (auto& w : c.workers) {
    w->start();
  }
  std::string addresses;
  for (const ListenConfig& l : c.config->config.listen) {
    addresses += (addresses.empty() ? "" : ", ") + l.address.text();
  }
  logging::log(logging::Level::kInfo, "main", "ready: listening on {} with {} workers", addresses,
               n);

  uv_run(&c.loop, UV_RUN_DEFAULT);
  for (auto& w : c.workers) {
    w->join();
  }
  uv_loop_close(&c.loop);
  logging::log(logging::Level::kInfo, "main", "stopped");
  return 0;
}

}  // namespace portico::proxy
