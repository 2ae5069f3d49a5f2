#include "control/worker_proxy_view.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "control/metrics.h"
#include "portico/logging.h"

namespace portico::proxy {

namespace {

health::Endpoint toEndpoint(const HostPort& hp) {
  return health::Endpoint{hp.host, hp.port, hp.ipv6};
}

// Probes of Portico's own listener go to loopback when it listens on all
// addresses.
health::Endpoint probeAddress(const HostPort& listen) {
  health::Endpoint e = toEndpoint(listen);
  if (e.host == "0.0.0.0") {
    e.host = "127.0.0.1";
  } else if (e.host == "::") {
    e.host = "::1";
  }
  return e;
}

// Whether a proxy_protocol listener takes a connection from its own probe:
// a local connection's source is the address it dials.
bool trustsItsProbe(const ListenConfig& listen) {
  health::Endpoint e = probeAddress(listen.address);
  sockaddr_storage address{};
  address.ss_family = e.ipv6 ? AF_INET6 : AF_INET;
  void* bytes = e.ipv6 ? static_cast<void*>(&reinterpret_cast<sockaddr_in6*>(&address)->sin6_addr)
                       : static_cast<void*>(&reinterpret_cast<sockaddr_in*>(&address)->sin_addr);
  return ::inet_pton(address.ss_family, e.host.c_str(), bytes) == 1 &&
         networksContain(listen.trusted_networks, address);
}

// The listener the proxy test and CTP probes dial: the first that clients
// reach directly; else the first behind a load balancer that trusts the
// probe's own address (the probe then sends a PROXY v2 LOCAL header, so its
// session keeps that address); else the first, with a warning.
const ListenConfig& probedListener(const Config& config) {
  for (const ListenConfig& l : config.listen) {
    if (!l.proxy_protocol) {
      return l;
    }
  }
  for (const ListenConfig& l : config.listen) {
    if (trustsItsProbe(l)) {
      return l;
    }
  }
  const ListenConfig& first = config.listen.front();
  logging::log(logging::Level::kWarn, "health",
               "every [[listen]] has proxy_protocol and none trusts its own address: "
               "ImapProxyTestProbe of {} will be refused; add {} to its trusted_networks",
               first.address.text(), probeAddress(first.address).host);
  return first;
}

std::optional<std::string> readSecret(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string secret = text.str();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) {
    secret.pop_back();
  }
  return secret;
}

}  // namespace

health::HealthConfig makeHealthConfig(const Config& config) {
  health::HealthConfig h;
  h.directory = config.lookup.serviceText();  // "" for kind = "none": no monitor
  h.fleet = config.fleet.enabled() ? "redis " + config.fleet.redis : "";
  auto toProbeTls = [](TlsMode mode) {
    switch (mode) {
      case TlsMode::kStarttls:
        return health::ProbeTls::kStartTls;
      case TlsMode::kImplicit:
        return health::ProbeTls::kImplicit;
      case TlsMode::kNone:
        break;
    }
    return health::ProbeTls::kNone;
  };
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) {
    h.server_name = host;
  }
  if (!config.listen.empty()) {
    const ListenConfig& listen = probedListener(config);
    h.proxy_listener = probeAddress(listen.address);
    if (listen.proxy_protocol) {
      h.proxy_listener_preamble = std::string("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", 16);
    }
    // Our own listener: its certificate chain file is the trust anchor
    // (partial chain, so a leaf or intermediate in it will do); no name
    // check, as the probe does not know which name the certificate carries
    // and sends no SNI (it dials an IP), so it gets the default certificate.
    h.proxy_listener_tls.mode = toProbeTls(listen.tls);
    h.proxy_listener_tls.ca = listen.cert;
    h.proxy_listener_tls.verify = true;
    h.proxy_listener_tls.verify_name = false;
    h.proxy_listener_tls.partial_chain = true;
  }
  for (const BackendConfig& b : config.backends) {
    health::BackendTarget target;
    target.name = b.name;
    target.address = toEndpoint(b.address);
    // The probes talk to a backend as the proxy does.
    target.tls.mode = toProbeTls(b.tls);
    target.tls.ca = b.ca;
    target.tls.server_name = b.server_name;  // "" -> the address, as for the proxy
    target.tls.verify = b.verify;
    target.tls.pin_sha256 = b.pin_sha256;
    target.tls.client_cert = b.client_cert;
    target.tls.client_key = b.client_key;
    if (!b.probe_user.empty()) {
      if (auto secret = readSecret(b.probe_password_file)) {
        target.probe_user = b.probe_user;
        target.probe_password = std::move(*secret);
      } else {
        logging::log(logging::Level::kError, "health",
                     "backend {}: cannot read probe_password_file {}; login probes disabled for it",
                     b.name, b.probe_password_file);
      }
    }
    h.backends.push_back(std::move(target));
  }
  for (const auto& [name, p] : config.probes) {
    health::ProbeSettings s = health::defaultProbeSettings(name);
    if (p.interval)
      s.interval = *p.interval;
    if (p.timeout)
      s.timeout = *p.timeout;
    if (p.retries)
      s.retries = *p.retries;
    h.probes[name] = s;
  }
  for (const auto& [name, m] : config.monitors) {
    health::MonitorSettings s = health::defaultMonitorSettings(name);
    if (m.unhealthy_after)
      s.unhealthy_after = *m.unhealthy_after;
    if (m.samples)
      s.unhealthy_after = *m.samples;  // sampled monitors: samples in a row
    if (m.healthy_after)
      s.healthy_after = *m.healthy_after;
    if (m.threshold)
      s.threshold = *m.threshold;
    if (m.interval)
      s.sample_interval = *m.interval;
    h.monitors[name] = s;
  }
  h.responders.hook = config.health.hook;
  h.responders.hook_timeout = config.health.hook_timeout;
  h.responders.move_sessions = config.health.move_sessions;
  h.responders.dry_run = config.health.responders_dry_run;
  h.action_history = config.health.action_history;
  h.status_listen = toEndpoint(config.status.listen);
  h.status_token = config.status.token;
  return h;
}

StatsSnapshot WorkerProxyView::snapshotNow() const {
  std::vector<const WorkerStats*> stats;
  for (const auto& w : workers_) {
    stats.push_back(&w->workerStats());
  }
  return snapshot(stats);
}

std::vector<health::BackendLoad> WorkerProxyView::backendLoad() {
  RuntimeConfigPtr config = config_();
  StatsSnapshot s = snapshotNow();
  std::vector<health::BackendLoad> out;
  for (std::size_t i = 0; i < config->config.backends.size(); ++i) {
    std::size_t slot = config->stats_slot[i];
    health::BackendLoad load;
    load.name = config->config.backends[i].name;
    load.drained_by_responder = shared_.drained_by_responder[slot].load(std::memory_order_relaxed);
    load.drained_by_operator = shared_.drained_by_operator[slot].load(std::memory_order_relaxed);
    load.drained_by_fleet = shared_.drained_by_fleet[slot].load(std::memory_order_relaxed);
    load.weight = config->config.backends[i].weight;
    if (slot < s.backends.size()) {
      const StatsSnapshot::Backend& b = s.backends[slot];
      load.sessions = b.sessions_current;
      load.queued = b.commands_in_flight;
      load.average_processing_ms = b.averageProcessingMs();
      load.recent_commands = b.recent_count;
    }
    out.push_back(std::move(load));
  }
  return out;
}

void WorkerProxyView::setDrainedByResponder(const std::string& backend, bool drained,
                                            bool move_sessions) {
  std::size_t slot = registry_.slot(backend);
  if (slot >= kMaxBackends) {
    return;
  }
  shared_.drained_by_responder[slot].store(drained, std::memory_order_relaxed);
  logging::log(logging::Level::kWarn, "health", "backend {} {} by responder{}", backend,
               drained ? "drained" : "restored",
               drained && move_sessions ? ", moving its sessions" : "");
  if (drained && move_sessions) {
    moveSessions(backend);
  }
  if (on_responder_change_) {
    on_responder_change_();
  }
}

void WorkerProxyView::setDrainedByFleet(const std::string& backend, bool drained,
                                        bool move_sessions) {
  std::size_t slot = registry_.slot(backend);
  if (slot >= kMaxBackends) {
    return;
  }
  shared_.drained_by_fleet[slot].store(drained, std::memory_order_relaxed);
  if (drained && move_sessions) {
    moveSessions(backend);
  }
}

std::vector<std::string> WorkerProxyView::drainedByResponder() {
  RuntimeConfigPtr config = config_();
  std::vector<std::string> out;
  for (std::size_t i = 0; i < config->config.backends.size(); ++i) {
    if (shared_.drained_by_responder[config->stats_slot[i]].load(std::memory_order_relaxed)) {
      out.push_back(config->config.backends[i].name);
    }
  }
  return out;
}

bool WorkerProxyView::setDrainedByOperator(const std::string& backend, bool drained,
                                           bool move_sessions) {
  RuntimeConfigPtr config = config_();
  for (std::size_t i = 0; i < config->config.backends.size(); ++i) {
    if (config->config.backends[i].name == backend) {
      shared_.drained_by_operator[config->stats_slot[i]].store(drained, std::memory_order_relaxed);
      logging::log(logging::Level::kWarn, "admin", "backend {} {} by operator{}", backend,
                   drained ? "drained" : "enabled",
                   drained && move_sessions ? ", moving its sessions" : "");
      if (drained && move_sessions) {
        moveSessions(backend);
      }
      return true;
    }
  }
  return false;
}

void WorkerProxyView::moveSessions(const std::string& backend) {
  for (const auto& w : workers_) {
    w->post([backend](Worker& worker) { worker.moveSessions(backend); });
  }
}

std::string WorkerProxyView::proxyMetrics() {
  return renderProxyMetrics(snapshotNow(), *config_(), shared_);
}

std::string WorkerProxyView::commandsJson() {
  return renderCommandsJson(snapshotNow(), *config_());
}

}  // namespace portico::proxy
