// Session: greeting, STARTTLS, ID and login replay at the backend, then the switch to relay.
#include "session.h"

#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include <fmt/format.h>

#include "portico/logging.h"
#include "portico/proxy.h"
#include "session_internal.h"

namespace portico::proxy {

using namespace session_detail;  // NOLINT: this file's own helpers

// ---------------------------------------------------------------------------
// Backend login.

void Session::onBackendLoginData(Chunk chunk) {
  backend_pending_.append(chunk.data(), chunk.size());
  if (backend_pending_.size() > kMaxBackendLoginBytes) {
    backendFailed("too much data during login");
    return;
  }
  while (backend_ != nullptr && backend_parsed_ < backend_pending_.size()) {
    std::string_view rest(backend_pending_.data() + backend_parsed_,
                          backend_pending_.size() - backend_parsed_);
    parser::ResponseFeedResult r = response_framer_.feed(rest);
    backend_parsed_ += r.consumed;
    if (r.event.type == parser::ResponseEventType::kNeedMore) {
      return;
    }
    std::string_view line(backend_pending_.data() + backend_parsed_ - r.event.bytes,
                          static_cast<std::size_t>(r.event.bytes));
    if (!handleBackendLine(r.event, line)) {
      return;
    }
  }
}

bool Session::handleBackendLine(const parser::ResponseEvent& ev, std::string_view line) {
  using parser::ResponseEventType;
  if (ev.type == ResponseEventType::kError && ev.error.fatal) {
    // A failed framer consumes nothing more: give up on this backend.
    backendFailed(fmt::format("unreadable response '{}'", excerpt(ev.head)));
    return false;
  }
  switch (state_) {
    case SessionState::kBackendGreeting:
      if (ev.type != ResponseEventType::kUntagged || ev.status != parser::Status::kOk) {
        backendFailed(fmt::format("unexpected greeting '{}'", excerpt(ev.head)));
        return false;
      }
      if (startsWithIgnoreCase(ev.code, "CAPABILITY ")) {
        backend_caps_.assign(ev.code.substr(11));
      }
      if (config_->config.backends[backend_index_].tls == TlsMode::kStarttls) {
        backend_->write(std::string_view("P0TLS STARTTLS\r\n"));
        state_ = SessionState::kBackendStarttls;
        return true;
      }
      afterBackendCapabilities();
      return backend_ != nullptr;
    case SessionState::kBackendStarttls: {
      if (ev.type != ResponseEventType::kTagged || ev.tag != "P0TLS") {
        return true;
      }
      if (ev.status != parser::Status::kOk) {
        backendFailed(fmt::format("STARTTLS refused '{}'", excerpt(ev.head)));
        return false;
      }
      // Anything after the OK was sent in plaintext: drop it, as the
      // client side does.
      backend_pending_.clear();
      backend_parsed_ = 0;
      response_framer_.reset();
      backend_caps_.clear();
      state_ = SessionState::kBackendTlsHandshake;
      Transport* plain = backend_;
      backend_ = backend_index_ < config_->backend_tls.size()
                     ? host_.startClientTls(plain, config_->backend_tls[backend_index_], this)
                     : nullptr;
      if (backend_ == nullptr) {
        orphans_.push_back(plain);
        plain->close();
        failLogin(
            fmt::format("{} NO [UNAVAILABLE] Mailbox server TLS unavailable.\r\n", login_tag_),
            false);
      }
      return false;
    }
    case SessionState::kBackendCapability:
      if (ev.type == ResponseEventType::kUntagged &&
          startsWithIgnoreCase(ev.head, "* CAPABILITY ")) {
        backend_caps_.assign(ev.head.substr(13));
      } else if (ev.type == ResponseEventType::kTagged && ev.tag == "P0CAP") {
        afterBackendCapabilities();
        return backend_ != nullptr;
      }
      return true;
    case SessionState::kBackendId:
      if (ev.type == ResponseEventType::kTagged && ev.tag == kForwardIdTag) {
        sendBackendLogin();  // a refused ID is not fatal: the login can go on
      }
      return backend_ != nullptr;
    case SessionState::kBackendLogin:
      switch (ev.type) {
        case ResponseEventType::kContinuation:
          if (login_kind_ == LoginKind::kAuthenticate && !sasl_sent_) {
            std::string response;
            response.reserve(sasl_.size() + 3);
            response.append(sasl_.empty() ? std::string_view("=") : std::string_view(sasl_));
            response.append("\r\n");
            backend_->write(response);
            wipe(response);
            sasl_sent_ = true;
          } else {
            // A SASL error challenge (XOAUTH2 sends one): answer empty to
            // get the final tagged NO.
            backend_->write(std::string_view("\r\n"));
          }
          return true;
        case ResponseEventType::kUntagged:
          if (ev.status == parser::Status::kBye) {
            backendFailed(fmt::format("BYE during login '{}'", excerpt(ev.head)));
            return false;
          }
          login_untagged_.append(clientCapabilityLine(line));
          return true;
        case ResponseEventType::kTagged:
          if (ev.tag != login_tag_) {
            return true;
          }
          if (ev.status == parser::Status::kOk) {
            std::size_t rest = backend_parsed_;
            writeClient(login_untagged_);
            writeClient(clientCapabilityLine(line));
            enterRelay(rest);
            return false;
          }
          backendStats()->login_failures.add();
          failLogin(line, true);
          return false;
        default:
          backendFailed(fmt::format("unexpected line during login '{}'", excerpt(ev.head)));
          return false;
      }
    default:
      return false;
  }
}

void Session::afterBackendCapabilities() {
  if (config_->config.backends[backend_index_].forward_id) {
    sendForwardId();
  } else {
    sendBackendLogin();
  }
}

void Session::sendBackendLogin() {
  // One buffer, reserved big enough up front, and no temporaries: the only
  // copies of the secret made here are `out` (and `plain`/`encoded`), each
  // wiped below, never a reallocated or temporary one.
  // The directory may name another user (Auth-User, destuser) for the backend.
  const std::string& user = backend_user_ ? *backend_user_ : user_;
  std::string out;
  out.reserve(login_tag_.size() + mechanism_.size() +
              2 * (user.size() + password_.size() + sasl_.size()) + 96);
  if (login_kind_ == LoginKind::kLogin || replay_as_login_) {
    if (quotable(user) && quotable(password_)) {
      out.append(login_tag_).append(" LOGIN ");
      appendQuoted(out, user);
      out.push_back(' ');
      appendQuoted(out, password_);
      out.append("\r\n");
    } else if (parser::hasCapability(backend_caps_, "AUTH=PLAIN") &&
               parser::hasCapability(backend_caps_, "SASL-IR")) {
      std::string plain;
      plain.reserve(user.size() + password_.size() + 2);
      plain.push_back('\0');
      plain.append(user).push_back('\0');
      plain.append(password_);
      std::string encoded = parser::encodeBase64(plain);
      out.append(login_tag_).append(" AUTHENTICATE PLAIN ").append(encoded).append("\r\n");
      wipe(plain);
      wipe(encoded);
    } else {
      // Unquotable bytes and no SASL-IR: LOGIN with non-synchronizing
      // literals needs LITERAL+.
      out.append(login_tag_).append(" LOGIN {").append(std::to_string(user.size()));
      out.append("+}\r\n").append(user).append(" {").append(std::to_string(password_.size()));
      out.append("+}\r\n").append(password_).append("\r\n");
    }
  } else if (parser::hasCapability(backend_caps_, "SASL-IR")) {
    out.append(login_tag_).append(" AUTHENTICATE ").append(mechanism_).push_back(' ');
    out.append(sasl_.empty() ? std::string_view("=") : std::string_view(sasl_)).append("\r\n");
    sasl_sent_ = true;
  } else {
    out.append(login_tag_).append(" AUTHENTICATE ").append(mechanism_).append("\r\n");
  }
  backend_->write(out);
  wipe(out);
  login_sent_ = true;
  state_ = SessionState::kBackendLogin;
}

void Session::sendForwardId() {
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
  backend_->write(fmt::format(
      "{} ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \"x-connected-ip\" \"{}\" "
      "\"x-connected-port\" \"{}\" \"x-session-id\" \"{:016x}\")\r\n",
      kForwardIdTag, cip, cport, lip, lport, id_));
  state_ = SessionState::kBackendId;
}

std::string Session::proxyHeader() const {
  // PROXY protocol v2 (HAProxy's proxy-protocol.txt, section 2.2).
  const sockaddr_storage& src = client_->peerAddress();
  const sockaddr_storage& dst = client_->localAddress();
  std::string header("\r\n\r\n\0\r\nQUIT\n", 12);
  header.push_back(static_cast<char>(0x21));  // version 2, PROXY
  auto put16 = [&header](std::uint16_t v) {
    header.push_back(static_cast<char>(v >> 8));
    header.push_back(static_cast<char>(v & 0xff));
  };
  if (src.ss_family == AF_INET && dst.ss_family == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(&src);
    const auto* d = reinterpret_cast<const sockaddr_in*>(&dst);
    header.push_back(static_cast<char>(0x11));  // TCP over IPv4
    put16(12);
    header.append(reinterpret_cast<const char*>(&s->sin_addr), 4);
    header.append(reinterpret_cast<const char*>(&d->sin_addr), 4);
    header.append(reinterpret_cast<const char*>(&s->sin_port), 2);  // network order already
    header.append(reinterpret_cast<const char*>(&d->sin_port), 2);
  } else if (src.ss_family == AF_INET6 && dst.ss_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&src);
    const auto* d = reinterpret_cast<const sockaddr_in6*>(&dst);
    header.push_back(static_cast<char>(0x21));  // TCP over IPv6
    put16(36);
    header.append(reinterpret_cast<const char*>(&s->sin6_addr), 16);
    header.append(reinterpret_cast<const char*>(&d->sin6_addr), 16);
    header.append(reinterpret_cast<const char*>(&s->sin6_port), 2);
    header.append(reinterpret_cast<const char*>(&d->sin6_port), 2);
  } else {
    header.push_back(static_cast<char>(0x00));  // UNSPEC: addresses unknown
    put16(0);
  }
  return header;
}

void Session::enterRelay(std::size_t backend_consumed) {
  const Config& cfg = config_->config;
  state_ = SessionState::kRelay;
  wipeSecrets();
  // The login is over: from here the transports relay without wiping.
  client_->setCarriesSecrets(false);
  backend_->setCarriesSecrets(false);
  host_.stats().connections_unauthenticated.sub();
  counted_unauthenticated_ = false;
  BackendStats* stats = backendStats();
  stats->sessions_current.add();
  stats->sessions_total.add();
  in_stats_ = true;
  logged_in_ = true;
  if (tracing()) {
    traceRecord(login_kind_ == LoginKind::kLogin ? "LOGIN" : "AUTHENTICATE", login_parameters_,
                fmt::format("R=OK;B={}", backend_name_),
                duration_cast<milliseconds>(host_.now() - login_started_).count(),
                login_request_bytes_, 0);
  }
  logging::log(logging::Level::kInfo, "session", "id={:016x} login user={} backend={} client={}",
               id_, user_, backend_name_, client_address_);

  parser::Limits limits;
  limits.max_line = cfg.limits.max_line;
  command_framer_.reset();
  command_framer_.setLimits(limits);
  response_framer_.reset();
  response_framer_.setLimits(limits);
  last_activity_ = host_.now();
  deadline_ = last_activity_ + cfg.timeouts.idle;
  armTimer();

  std::string backend_rest = backend_pending_.substr(backend_consumed);
  backend_pending_.clear();
  backend_pending_.shrink_to_fit();
  std::string client_rest = std::move(client_pending_);
  client_pending_ = std::string();
  pending_parsed_ = 0;
  if (!backend_rest.empty()) {
    relayFromBackend(Chunk::copyOf(backend_rest));
  }
  if (!client_rest.empty() && backend_ != nullptr) {
    relayFromClient(Chunk::copyOf(client_rest, true));
  }
  wipeAll(client_rest);  // the buffer the LOGIN was read into
  updateClientReading();
  maybeByeOnShutdown();
}

}  // namespace portico::proxy
