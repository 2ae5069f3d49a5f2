// Session: the directory lookup between pre-login and backend login
// (issue 10, docs/lookup.md). The client's credentials go to the worker's
// LookupStage (http or redis, behind the positive-answer cache); its answer
// picks the backend, may replace the user and password replayed there, or
// refuses the login. The client is not read while the lookup runs.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include <fmt/format.h>

#include "login_phase.h"
#include "lookup/lookup_stage.h"
#include "portico/logging.h"
#include "session.h"
#include "session_internal.h"

namespace portico::proxy {

using namespace session_detail;  // NOLINT: this file's own helpers

namespace {

// "1.2.3.4" / "::1" and the port of a socket address.
std::pair<std::string, std::uint16_t> ipAndPort(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (address.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    return {text, ntohs(a->sin_port)};
  }
  if (address.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&address);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
    return {text, ntohs(a->sin6_port)};
  }
  return {"", 0};
}

// Same IP address, whatever its spelling ("::1" and "0::1").
bool sameIp(const std::string& a, const std::string& b, bool ipv6) {
  unsigned char x[16] = {0};
  unsigned char y[16] = {0};
  const int family = ipv6 ? AF_INET6 : AF_INET;
  return inet_pton(family, a.c_str(), x) == 1 && inet_pton(family, b.c_str(), y) == 1 &&
         std::memcmp(x, y, ipv6 ? 16 : 4) == 0;
}

// The longest a lookup may take in the stage (HTTP WAIT rounds included),
// plus a second: the session's backstop if the stage ever failed to answer.
std::chrono::milliseconds lookupBackstop(const LookupConfig& config) {
  return config.timeout * 11 + std::chrono::milliseconds(61'000);
}

}  // namespace

LookupRequest Session::lookupRequest() {
  LoginRequest& login = login_->request;
  LookupRequest request;
  request.user = user_;
  request.attempt = login_attempts_;
  if (login.kind == LoginRequest::Kind::kLogin) {
    request.method = LookupAuthMethod::kPlain;
    request.password = login.password;
  } else if (login.mechanism == "PLAIN") {
    // authzid NUL authcid NUL passwd (RFC 4616): the directory sees the
    // password, as nginx's "plain"; kept in the login's password (a wiped secret) in
    // case the answer replaces the user or password and the login is
    // replayed as LOGIN.
    request.method = LookupAuthMethod::kPlain;
    if (std::optional<std::string> decoded = parser::decodeBase64(login.sasl)) {
      auto second = decoded->find('\0', decoded->find('\0') + 1);
      if (decoded->find('\0') != std::string::npos && second != std::string::npos) {
        wipe(login.password);
        login.password.assign(*decoded, second + 1);
        request.password = login.password;
      }
      wipe(*decoded);
    }
  } else {
    request.method = LookupAuthMethod::kNone;  // XOAUTH2, OAUTHBEARER: passed through
  }
  auto [client_ip, client_port] = ipAndPort(client_sockaddr_);
  request.client_ip = std::move(client_ip);
  request.client_port = client_port;
  request.tls = client_tls_;
  if (client_tls_ && client_ != nullptr) {
    auto [protocol, cipher] = client_->tlsProtocolAndCipher();
    request.tls_protocol = std::move(protocol);
    request.tls_cipher = std::move(cipher);
  }
  if (client_ != nullptr) {
    auto [local_ip, local_port] = ipAndPort(client_->localAddress());
    request.local_ip = std::move(local_ip);
    request.local_port = local_port;
  }
  request.session_id = id_;
  return request;
}

void Session::startLookup(std::shared_ptr<LookupStage> stage) {
  auto now = host_.now();
  if (now < retry_after_) {
    // Auth-Wait from the last refusal: the session stays usable, but a login
    // before the pause is over is not asked of the directory.
    const auto left = std::chrono::ceil<std::chrono::seconds>(retry_after_ - now).count();
    failLogin(fmt::format("{} NO [UNAVAILABLE] Login refused for now: retry in {} second{}.\r\n",
                          login_->request.tag, left, left == 1 ? "" : "s"),
              false);
    return;
  }
  setState(SessionState::kLookup);
  updateClientReading();  // pipelined commands wait for the answer
  deadline_ = now + lookupBackstop(config_->config.lookup);
  armTimer();
  LookupRequest request = lookupRequest();
  login_->lookup_stage = std::move(stage);
  // The stage never calls back from inside lookup() (lookup.h), so the
  // assignment completes before onLookupAnswer can run. The phase holding
  // the lookup is the session's login_ until the answer: ending it cancels
  // the lookup.
  login_->lookup =
      PendingLookup::start(*login_->lookup_stage, request, [this](LookupResult result) {
        login_->lookup.done();
        onLookupAnswer(std::move(result));
      });
  wipeSecret(request.password);
}

void Session::onLookupAnswer(LookupResult result) {
  if (state_ != SessionState::kLookup) {
    // Kicked or shut down while asking: the answer is not needed.
    if (result.backend_password) {
      wipeSecret(*result.backend_password);
    }
    return;
  }
  if (!result.from_cache) {
    host_.shared().lookup.health.record(result.outcome != LookupOutcome::kUnavailable,
                                        result.error);
  }
  switch (result.outcome) {
    case LookupOutcome::kRoute:
      routeFromDirectory(result);
      break;
    case LookupOutcome::kRefuse:
      lookupRefused(result);
      break;
    case LookupOutcome::kNoEntry:
      if (config_->config.lookup.fallback == LookupFallback::kHash) {
        routeByHash();
      } else {
        failLogin(fmt::format("{} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
                              login_->request.tag),
                  true);
      }
      break;
    case LookupOutcome::kUnavailable:
      lookupUnavailable(result.error);
      break;
  }
  if (result.backend_password) {
    wipeSecret(*result.backend_password);
  }
}

void Session::routeFromDirectory(LookupResult& result) {
  const RuntimeConfig& rc = *config_;
  const LookupRoute& route = result.route;
  std::optional<std::size_t> index;
  for (std::size_t i = 0; i < rc.config.backends.size() && !index; ++i) {
    const BackendConfig& b = rc.config.backends[i];
    if (route.backend.empty() ? (b.address.port == route.port && b.address.ipv6 == route.ipv6 &&
                                 sameIp(b.address.host, route.host, route.ipv6))
                              : b.name == route.backend) {
      index = i;
    }
  }
  auto refuseRoute = [&](const std::string& why) {
    logging::log(logging::Level::kWarn, "lookup",
                 "id={:016x} directory route for user={} refused: {}; client={}", id_, user_, why,
                 client_address_);
    failLogin(fmt::format("{} NO [UNAVAILABLE] Mailbox server unavailable, try again later.\r\n",
                          login_->request.tag),
              false);
  };
  if (!index) {
    refuseRoute(fmt::format("{} is not a configured [[backend]] (name or address)", route.text()));
    return;
  }
  const BackendConfig& backend = rc.config.backends[*index];
  // ssl / starttls from the directory: never silently weaker than asked.
  if ((result.backend_tls == LookupBackendTls::kImplicit && backend.tls != TlsMode::kImplicit) ||
      (result.backend_tls == LookupBackendTls::kStarttls && backend.tls != TlsMode::kStarttls)) {
    refuseRoute(fmt::format("the directory asks for backend TLS {} but backend {} has tls = {}",
                            lookupBackendTlsName(result.backend_tls), backend.name,
                            tlsModeName(backend.tls)));
    return;
  }
  LoginPhase& login = *login_;
  if (result.backend_user || result.backend_password) {
    if (login.request.kind == LoginRequest::Kind::kAuthenticate &&
        login.request.mechanism != "PLAIN") {
      refuseRoute("the directory replaces the user or password of a " + login.request.mechanism +
                  " login, which passes through unchanged");
      return;
    }
    // AUTHENTICATE PLAIN (the only one allowed here) is replayed as LOGIN.
    login.replay_as_login = login.request.kind == LoginRequest::Kind::kAuthenticate;
    if (result.backend_user) {
      login.backend_user = *result.backend_user;
    }
    if (result.backend_password) {
      wipe(login.request.password);
      login.request.password = *result.backend_password;
    }
  }
  login.connect_timeout = result.proxy_timeout;
  login.candidates = {*index};
  login.candidate_pos = 0;
  connectNext();
}

void Session::lookupRefused(const LookupResult& result) {
  const std::string reason = result.reason.empty() ? "Authentication failed." : result.reason;
  const std::string line =
      fmt::format("{} NO [AUTHENTICATIONFAILED] {}\r\n", login_->request.tag, reason);
  if (result.wait_seconds) {
    // nginx's Auth-Wait: the client keeps its connection and may try
    // again once the pause is over.
    retry_after_ = host_.now() + std::chrono::seconds(*result.wait_seconds);
  } else if (!result.nologin) {
    // nginx ends the connection after a refusal without Auth-Wait;
    // Dovecot's nologin keeps it (a failed login like any other).
    login_->bye_after_failure = true;
  }
  failLogin(line, true);  // ends the login phase, and its bye_after_failure with it
}

void Session::lookupUnavailable(std::string_view error) {
  std::uint64_t count = host_.shared().lookup.unavailable_log.event(host_.now());
  if (count > 0) {
    logging::log(logging::Level::kWarn, "lookup",
                 "directory lookup failed: {} ({}; {} {}; last id={:016x} user={} client={})",
                 error, config_->config.lookup.serviceText(), count,
                 count == 1 ? "login" : "logins since the last report", id_, user_,
                 client_address_);
  }
  failLogin(fmt::format("{} NO [UNAVAILABLE] Directory service unavailable, try again later.\r\n",
                        login_->request.tag),
            false);
}

}  // namespace portico::proxy
