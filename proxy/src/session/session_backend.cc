// Session: greeting, STARTTLS, ID and login replay at the backend, then the switch to relay.
#include "session.h"

#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include <fmt/format.h>

#include "login_phase.h"
#include "portico/logging.h"
#include "portico/proxy.h"
#include "session_internal.h"

namespace portico::proxy {

using namespace session_detail;  // NOLINT: this file's own helpers

// ---------------------------------------------------------------------------
// Connecting a backend.

void Session::connectNext() {
  const RuntimeConfig& rc = *config_;
  LoginPhase& login = *login_;
  if (login.candidate_pos >= login.candidates.size() ||
      login.candidate_pos > rc.config.routing.connect_retries) {
    failLogin(fmt::format("{} NO [UNAVAILABLE] Mailbox server unavailable, try again later.\r\n",
                          login.request.tag),
              false);
    return;
  }
  backend_index_ = login.candidates[login.candidate_pos++];
  const BackendConfig& backend = rc.config.backends[backend_index_];
  backend_name_ = backend.name;
  setState(SessionState::kConnecting);
  updateClientReading();
  login.backend_login.reset();
  if (!pool_declined_) {
    if (std::optional<PooledBackend> pooled = host_.takePooledBackend(rc, backend_index_, this)) {
      usePooledBackend(std::move(*pooled));
      return;
    }
  }
  deadline_ = host_.now() + login.connect_timeout.value_or(rc.config.timeouts.backend_connect);
  armTimer();
  if (backend.tls == TlsMode::kImplicit) {
    // The PROXY header goes in the clear before the ClientHello, as HAProxy
    // and nginx send it; inside TLS the backend would refuse the connection.
    backend_ = backend_index_ < rc.backend_tls.size()
                   ? host_.connectBackendTls(
                         backend, rc.backend_tls[backend_index_], this,
                         backend.proxy_protocol
                             ? proxyV2Header(client_->peerAddress(), client_->localAddress())
                             : "")
                   : nullptr;
  } else {
    backend_ = host_.connectBackend(backend, this);
  }
  if (backend_ == nullptr) {
    backendStats()->connect_failures.add();
    connectNext();
  }
}

void Session::onConnected(Transport* transport, bool ok, std::string_view error) {
  if (transport != backend_) {
    return;
  }
  if (!ok) {
    backendStats()->connect_failures.add();
    logging::log(logging::Level::kWarn, "session",
                 "id={:016x} backend {} ({}) connect failed: {}; client={} user={}", id_,
                 backend_name_, config_->config.backends[backend_index_].address.text(), error,
                 client_address_, user_);
    return;  // onClosed follows and tries the next candidate
  }
  if (login_->backend_login &&
      login_->backend_login->state() == BackendLoginClient::State::kTlsHandshake) {
    login_->backend_login->tlsEstablished();  // capabilities may differ under TLS: ask again
    flushBackendLogin();
    return;
  }
  backend_->setHighWatermark(config_->config.limits.write_high_watermark);
  setState(SessionState::kBackendGreeting);
  startBackendLogin();
  deadline_ = host_.now() + config_->config.timeouts.backend_login;
  armTimer();
  const BackendConfig& backend = config_->config.backends[backend_index_];
  if (backend.proxy_protocol && backend.tls != TlsMode::kImplicit) {
    // The first bytes on the connection, before the greeting is read (and
    // before STARTTLS); implicit TLS sent it ahead of the handshake.
    backend_->write(proxyV2Header(client_->peerAddress(), client_->localAddress()));
  }
}

void Session::backendFailed(std::string_view why) {
  if (login_->backend_pooled && backend_ != nullptr) {
    backend_->close();  // onClosed: retryWithoutPool()
    return;
  }
  logging::log(logging::Level::kWarn, "session",
               "id={:016x} backend {} failed while {}: {}; client={} user={}", id_, backend_name_,
               sessionStateName(state()), why, client_address_, user_);
  backendStats()->connect_failures.add();
  if (backend_ != nullptr) {
    backend_->close();  // onClosed decides: next candidate or NO [UNAVAILABLE]
  }
}

// ---------------------------------------------------------------------------
// Backend login: the session runs the transport, BackendLoginClient the
// IMAP dialogue (portico/backend_login.h).

BackendLoginParams Session::backendLoginParams() {
  const BackendConfig& backend = config_->config.backends[backend_index_];
  const LoginPhase& login = *login_;
  BackendLoginParams params;
  params.method = login.request.kind == LoginRequest::Kind::kLogin || login.replay_as_login
                      ? BackendLoginMethod::kLogin
                      : BackendLoginMethod::kAuthenticate;
  params.tag = login.request.tag;
  // The directory may name another user (Auth-User, destuser) for the backend.
  params.user =
      login.backend_user ? std::string_view(*login.backend_user) : std::string_view(user_);
  params.password = login.request.password;
  params.mechanism = login.request.mechanism;
  params.sasl = login.request.sasl;
  params.starttls = backend.tls == TlsMode::kStarttls;
  if (backend.forward_id) {
    params.id_command = forwardIdCommand();
  }
  return params;
}

void Session::startBackendLogin() {
  login_->untagged.clear();
  login_->backend_login = std::make_unique<BackendLoginClient>(backendLoginParams());
}

void Session::usePooledBackend(PooledBackend pooled) {
  backend_ = pooled.transport;
  login_->backend_pooled = true;
  backend_->setHighWatermark(config_->config.limits.write_high_watermark);
  setState(SessionState::kBackendGreeting);
  login_->untagged.clear();
  login_->backend_login = std::move(pooled.login);
  login_->backend_login->resumeLogin(backendLoginParams());
  deadline_ = host_.now() + config_->config.timeouts.backend_login;
  armTimer();
  flushBackendLogin();
}

void Session::pooledLoginDone() {
  if (login_->backend_pooled) {
    login_->backend_pooled = false;
    host_.pooledLoginDone(*config_, backend_index_);
  }
}

void Session::retryWithoutPool() {
  logging::log(logging::Level::kDebug, "session",
               "id={:016x} pooled connection to backend {} failed before the login's answer; "
               "connecting afresh",
               id_, backend_name_);
  backendStats()->pool_stale.add();
  pooledLoginDone();
  pool_declined_ = true;
  --login_->candidate_pos;  // the same backend again
  connectNext();
}

void Session::flushBackendLogin() {
  BackendLoginClient& login = *login_->backend_login;
  if (backend_ != nullptr && !login.output().empty()) {
    backend_->write(std::string_view(login.output()));
  }
  login.clearOutput();
}

void Session::onBackendLoginData(Chunk chunk) {
  BackendLoginClient& login = *login_->backend_login;
  login.feed(chunk.view());
  while (backend_ != nullptr) {
    BackendLoginEvent ev = login.next();
    flushBackendLogin();
    switch (ev.type) {
      case BackendLoginEventType::kNeedMore:
        return;
      case BackendLoginEventType::kUntagged:
        login_->untagged.append(clientCapabilityLine(ev.line));
        continue;
      case BackendLoginEventType::kStartTls:
        startBackendTls();
        return;
      case BackendLoginEventType::kLoggedIn:
        writeClient(login_->untagged);
        writeClient(clientCapabilityLine(ev.line));
        pooledLoginDone();
        enterRelay();
        return;
      case BackendLoginEventType::kRefused:
        pooledLoginDone();
        backendStats()->login_failures.add();
        failLogin(ev.line, true);
        return;
      case BackendLoginEventType::kFailed:
        backendFailed(ev.why);
        return;
      case BackendLoginEventType::kStep:
      case BackendLoginEventType::kReady:
        continue;  // the probes' profile only
    }
  }
}

void Session::startBackendTls() {
  Transport* plain = backend_;
  backend_ = backend_index_ < config_->backend_tls.size()
                 ? host_.startClientTls(plain, config_->backend_tls[backend_index_], this)
                 : nullptr;
  if (backend_ == nullptr) {
    orphans_.push_back(plain);
    plain->close();
    failLogin(
        fmt::format("{} NO [UNAVAILABLE] Mailbox server TLS unavailable.\r\n", login_->request.tag),
        false);
  }
}

std::string Session::forwardIdCommand() const {
  std::string client = formatAddress(client_->peerAddress());
  std::string local = formatAddress(client_->localAddress());
  auto split = [](const std::string& hostport) {
    auto colon = hostport.rfind(':');
    std::string host = hostport.substr(0, colon);
    if (!host.empty() && host.front() == '[') {
      host = host.substr(1, host.size() - 2);
    }
    return std::make_pair(host, hostport.substr(colon + 1));
  };
  auto [cip, cport] = split(client);
  auto [lip, lport] = split(local);
  return fmt::format(
      "{} ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \"x-connected-ip\" \"{}\" "
      "\"x-connected-port\" \"{}\" \"x-session-id\" \"{:016x}\")\r\n",
      kForwardIdTag, cip, cport, lip, lport, id_);
}

void Session::enterRelay() {
  const Config& cfg = config_->config;
  setState(SessionState::kRelay);
  wipeSecrets();
  // The login is over: from here the transports relay without wiping.
  client_->setCarriesSecrets(false);
  backend_->setCarriesSecrets(false);
  host_.stats().connections_unauthenticated.sub();
  counted_unauthenticated_ = false;
  logged_in_ = true;
  LoginOutcome outcome;
  outcome.ok = true;
  outcome.result = "OK";
  outcome.backend = backendStats();
  notify([&](SessionObserver& o) { o.onLoginDone(*this, outcome); });
  logging::log(logging::Level::kInfo, "session", "id={:016x} login user={} backend={} client={}",
               id_, user_, backend_name_, client_address_);

  relay_.emplace(static_cast<RelayOwner&>(*this), host_, *config_, backend_index_,
                 RelayLinks{&client_, &backend_, &command_framer_, &bytes_out_, &last_activity_},
                 shutdown_pending_);
  last_activity_ = host_.now();
  deadline_ = last_activity_ + cfg.timeouts.idle;
  armTimer();

  std::string backend_rest(login_->backend_login->rest());
  // The login phase is over (its secrets were wiped above): a logged-in
  // session carries none of its state.
  login_.reset();
  std::string client_rest = dialogue_->takePending();
  // A logged-in session carries no pre-login state. The dialogue goes now,
  // or after its own call returns if the login finished inside one.
  if (dialogue_->processing()) {
    retire_dialogue_ = true;
  } else {
    dialogue_.reset();
  }
  if (!backend_rest.empty()) {
    relay_->fromBackend(Chunk::copyOf(backend_rest));
  }
  if (!client_rest.empty() && backend_ != nullptr) {
    relay_->fromClient(Chunk::copyOf(client_rest, true));
  }
  wipeAll(client_rest);  // the buffer the LOGIN was read into
  updateClientReading();
  if (shutdown_pending_) {
    relay_->requestBye();  // asked for during the login: now, if between commands
  }
}

}  // namespace portico::proxy
