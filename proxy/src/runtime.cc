#include "runtime.h"

namespace portico::proxy {

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
      capabilities(kPreloginCapabilities) {}

}  // namespace portico::proxy
