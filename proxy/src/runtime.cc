#include "runtime.h"

#include <sys/prctl.h>

#include "portico/proxy.h"

namespace portico::proxy {

bool setDumpable(bool dumpable) {
  return ::prctl(PR_SET_DUMPABLE, dumpable ? 1 : 0, 0, 0, 0) == 0;
}

namespace {
// What Portico itself offers before login. Post-login capabilities come
// from the backend (minus COMPRESS, which Portico does not relay).
constexpr const char* kPreloginCapabilities =
    "IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER";
}  // namespace

RuntimeConfig::RuntimeConfig(Config c, std::vector<std::size_t> slots)
    : config(std::move(c)),
      selector(config.backends, config.routing.map),
      stats_slot(std::move(slots)),
      capabilities(kPreloginCapabilities) {
  for (std::size_t i = 0; i < config.backends.size(); ++i) {
    if (!config.backends[i].probe_user.empty()) {
      probe_users[normaliseUser(config.backends[i].probe_user)] = i;
    }
  }
}

RuntimeConfigPtr buildRuntime(Config config, std::vector<std::size_t> slots, std::string& error) {
  auto runtime = std::make_shared<RuntimeConfig>(std::move(config), std::move(slots));
  for (const ListenConfig& listen : runtime->config.listen) {
    std::shared_ptr<const ServerTlsContext> tls;
    if (listen.tls != TlsMode::kNone) {
      tls = ServerTlsContext::create(listen, error);
      if (!tls) {
        error = "listener " + listen.address.text() + ": " + error;
        return nullptr;
      }
    }
    runtime->listener_tls.push_back(std::move(tls));
  }
  for (const BackendConfig& backend : runtime->config.backends) {
    std::shared_ptr<const ClientTlsContext> tls;
    if (backend.tls != TlsMode::kNone) {
      tls = ClientTlsContext::create(backend, error);
      if (!tls) {
        return nullptr;
      }
    }
    runtime->backend_tls.push_back(std::move(tls));
  }
  return runtime;
}

}  // namespace portico::proxy
