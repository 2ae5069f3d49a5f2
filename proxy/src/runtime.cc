#include "runtime.h"

#include <sys/prctl.h>

#include <fmt/format.h>

#include "portico/proxy.h"

namespace portico::proxy {

bool setDumpable(bool dumpable) {
  return ::prctl(PR_SET_DUMPABLE, dumpable ? 1 : 0, 0, 0, 0) == 0;
}

namespace {
// What Portico itself offers before login. Post-login capabilities come
// from the backend, with its COMPRESS entries replaced by Portico's own
// COMPRESS=DEFLATE (compress.h).
constexpr const char* kPreloginCapabilities =
    "IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER";
}  // namespace

RuntimeConfig::RuntimeConfig(Config c, std::vector<std::size_t> slots)
    : config(std::move(c)),
      selector(config.backends, config.routing.map),
      stats_slot(std::move(slots)),
      capabilities(kPreloginCapabilities) {
  for (std::size_t i = 0; i < config.listen.size(); ++i) {
    listener_index.emplace(config.listen[i].address.text(), i);
  }
  for (std::size_t i = 0; i < config.backends.size(); ++i) {
    if (!config.backends[i].probe_user.empty()) {
      probe_users[normaliseUser(config.backends[i].probe_user)] = i;
    }
  }
}

namespace {

// The config's TLS keys in the network layer's terms.
ServerTlsSettings serverTlsSettings(const ListenConfig& listen) {
  ServerTlsSettings tls;
  tls.default_certificate = {"", listen.cert, listen.key};
  for (const CertificateConfig& c : listen.certificates) {
    tls.certificates.push_back({c.server_name, c.cert, c.key});
  }
  tls.min_version =
      listen.tls_min_version == "TLSv1.3" ? net::TlsVersion::kTls13 : net::TlsVersion::kTls12;
  return tls;
}

ClientTlsSettings clientTlsSettings(const BackendConfig& backend) {
  ClientTlsSettings tls;
  tls.label = "backend " + backend.name;
  tls.ca = backend.ca;
  tls.server_name = backend.server_name.empty() ? backend.address.host : backend.server_name;
  tls.verify = backend.verify;
  tls.pin_sha256 = backend.pin_sha256;
  tls.client_cert = backend.client_cert;
  tls.client_key = backend.client_key;
  return tls;
}

}  // namespace

Result<RuntimeConfigPtr> buildRuntime(Config config, std::vector<std::size_t> slots) {
  auto runtime = std::make_shared<RuntimeConfig>(std::move(config), std::move(slots));
  for (const ListenConfig& listen : runtime->config.listen) {
    std::shared_ptr<const ServerTlsContext> tls;
    if (listen.tls != TlsMode::kNone) {
      auto created = ServerTlsContext::create(serverTlsSettings(listen));
      if (!created.ok()) {
        return created.status().prefixed("listener " + listen.address.text());
      }
      tls = std::move(*created);
    }
    runtime->listener_tls.push_back(std::move(tls));
  }
  for (const BackendConfig& backend : runtime->config.backends) {
    std::shared_ptr<const ClientTlsContext> tls;
    if (backend.tls != TlsMode::kNone) {
      auto created = ClientTlsContext::create(clientTlsSettings(backend));
      if (!created.ok()) {
        return created.status();
      }
      tls = std::move(*created);
    }
    runtime->backend_tls.push_back(std::move(tls));
  }
  return RuntimeConfigPtr(std::move(runtime));
}

namespace {

// The differences between two entries for the same address that change how
// a new connection is served. Certificates are not listed: every reload
// re-reads them (the "reload: done" line says so).
std::string describeChange(const ListenConfig& a, const ListenConfig& b) {
  std::string out;
  auto add = [&out](const std::string& what) { out += (out.empty() ? "" : ", ") + what; };
  if (a.tls != b.tls) {
    add(fmt::format("tls {} -> {}", tlsModeName(a.tls), tlsModeName(b.tls)));
  }
  if (a.require_tls != b.require_tls) {
    add(fmt::format("require_tls {} -> {}", a.require_tls, b.require_tls));
  }
  if (a.compress != b.compress) {
    add(fmt::format("compress {} -> {}", a.compress, b.compress));
  }
  if (a.tls != TlsMode::kNone && b.tls != TlsMode::kNone &&
      a.tls_min_version != b.tls_min_version) {
    add(fmt::format("tls_min_version {} -> {}", a.tls_min_version, b.tls_min_version));
  }
  if (a.proxy_protocol != b.proxy_protocol) {
    add(fmt::format("proxy_protocol {} -> {}", a.proxy_protocol, b.proxy_protocol));
  }
  if (a.trusted_networks != b.trusted_networks) {
    auto list = [](const std::vector<Network>& networks) {
      std::string text;
      for (const Network& n : networks) {
        text += (text.empty() ? "" : " ") + n.text();
      }
      return "[" + text + "]";
    };
    add(fmt::format("trusted_networks {} -> {}", list(a.trusted_networks),
                    list(b.trusted_networks)));
  }
  return out;
}

}  // namespace

ListenerChanges diffListeners(const Config& before, const Config& after) {
  ListenerChanges changes;
  std::map<std::string, const ListenConfig*> old_by_address;
  for (const ListenConfig& l : before.listen) {
    old_by_address.emplace(l.address.text(), &l);
  }
  std::map<std::string, const ListenConfig*> new_by_address;
  for (const ListenConfig& l : after.listen) {
    std::string address = l.address.text();
    new_by_address.emplace(address, &l);
    auto old = old_by_address.find(address);
    if (old == old_by_address.end()) {
      changes.added.push_back(address);
    } else if (std::string what = describeChange(*old->second, l); !what.empty()) {
      changes.changed.push_back(address + " (" + what + ")");
    }
  }
  for (const ListenConfig& l : before.listen) {
    if (new_by_address.count(l.address.text()) == 0) {
      changes.removed.push_back(l.address.text());
    }
  }
  return changes;
}

std::string ListenerChanges::summary() const {
  if (empty()) {
    return "listeners unchanged";
  }
  std::string out;
  auto list = [&out](const char* what, const std::vector<std::string>& items) {
    if (items.empty()) {
      return;
    }
    out += out.empty() ? "listeners " : "; ";
    out += what;
    for (std::size_t i = 0; i < items.size(); ++i) {
      out += (i == 0 ? " " : ", ") + items[i];
    }
  };
  list("added", added);
  list("removed", removed);
  list("changed", changed);
  return out;
}

}  // namespace portico::proxy
