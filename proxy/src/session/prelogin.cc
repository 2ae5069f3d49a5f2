// Session: the pre-login dialogue, STARTTLS, and choosing and connecting a backend.
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
// Pre-login.

void Session::processPrelogin() {
  if (processing_) {
    process_again_ = true;
    return;
  }
  processing_ = true;
  do {
    process_again_ = false;
    processPreloginOnce();
  } while (process_again_);
  processing_ = false;
}

void Session::processPreloginOnce() {
  const Limits& limits = config_->config.limits;
  while (client_ != nullptr &&
         (state_ == SessionState::kPrelogin || state_ == SessionState::kAuthContinuation)) {
    if (state_ == SessionState::kAuthContinuation) {
      // One SASL response line; read here rather than by the framer so the
      // payload never sits in the framer's head buffer.
      auto lf = client_pending_.find('\n');
      if (lf == std::string::npos) {
        if (client_pending_.size() > limits.prelogin_max_line) {
          closeWithBye("* BYE SASL response too long\r\n", EndReason::kSaslTooLong);
        }
        return;
      }
      std::string line = client_pending_.substr(0, lf);
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      client_pending_.erase(0, lf + 1);
      handleAuthLine(line);
      wipe(line);
      continue;
    }
    if (pending_parsed_ >= client_pending_.size()) {
      return;
    }
    std::string_view rest(client_pending_.data() + pending_parsed_,
                          client_pending_.size() - pending_parsed_);
    parser::FeedResult r = command_framer_.feed(rest);
    pending_parsed_ += r.consumed;
    const parser::CommandEvent& ev = r.event;
    switch (ev.type) {
      case parser::CommandEventType::kNeedMore:
        if (client_pending_.size() > preloginMaxCommand(limits, command_framer_.currentName())) {
          writeClient("* BAD Command too long\r\n");
          closeWithBye("* BYE Command too long\r\n", EndReason::kCommandTooLong);
        }
        return;
      case parser::CommandEventType::kLiteral:
        if (parser::isSync(ev.literal_kind) && !refuseLiteral(ev)) {
          writeClient("+ Ready for literal data\r\n");
        }
        break;
      case parser::CommandEventType::kCommand: {
        // Before login the session answers every command itself, and reads
        // AUTHENTICATE's SASL lines itself: whatever it answers (a refusal
        // above all), the client's next line is a command again, not DONE
        // or a SASL line.
        command_framer_.returnToCommandMode();
        std::size_t begin = pending_parsed_ - static_cast<std::size_t>(ev.bytes);
        std::string command = client_pending_.substr(begin, static_cast<std::size_t>(ev.bytes));
        // Zero the command (it may hold a password) before the buffer is
        // compacted, so no copy of it stays behind in the spare capacity.
        std::fill_n(client_pending_.begin(), pending_parsed_, '\0');
        client_pending_.erase(0, pending_parsed_);
        pending_parsed_ = 0;
        handlePreloginCommand(command);
        wipe(command);
        break;
      }
      case parser::CommandEventType::kAuthLine:
      case parser::CommandEventType::kIdleDone:
        // Not reachable before login: the framer is put back in command mode
        // after every command. Drop what was consumed.
        client_pending_.erase(0, pending_parsed_);
        pending_parsed_ = 0;
        break;
      case parser::CommandEventType::kError: {
        std::string tag = ev.tag.empty() ? std::string("*") : std::string(ev.tag);
        client_pending_.erase(0, pending_parsed_);
        pending_parsed_ = 0;
        host_.stats().prelogin_bad_commands.add();
        if (ev.error.fatal || ev.error.code == parser::ErrorCode::kLineTooLong) {
          // The rest of the stream cannot be trusted (or is not worth
          // reading before login): answer, then end the session.
          writeClient(fmt::format("{} BAD {}\r\n", tag, ev.error.message));
          closeWithBye(fmt::format("* BYE {}\r\n", ev.error.message), EndReason::kProtocolError,
                       parser::errorCodeName(ev.error.code));
          return;
        }
        badCommand(tag, ev.error.message);
        break;
      }
    }
  }
}

// A synchronizing literal is invited only where a pre-login command can take
// one: LOGIN's user name and password and ID's strings. Anything else is
// refused at the literal's header, before its body is sent (a server may
// answer it with a tagged BAD or NO instead of `+`), and so is a LOGIN that
// must wait for TLS, before a password crosses the wire in the clear. The
// framer drops the refused command; the client's next line is a new one.
bool Session::refuseLiteral(const parser::CommandEvent& ev) {
  const std::string tag(ev.tag);
  const std::string_view name = ev.uid ? std::string_view() : ev.name;
  std::string no;
  const char* bad = nullptr;
  if (name == "LOGIN") {
    if (require_tls_ && !client_tls_) {
      no = privacyRequired(tag);
    }
  } else if (name == "ID") {
    if (ev.literal_size > parser::kIdMaxValueBytes) {
      bad = "ID field value too long";
    }
  } else if (name == "AUTHENTICATE") {
    bad = "SASL mechanism and initial response must be atoms";
  } else if (name == "CAPABILITY" || name == "NOOP" || name == "LOGOUT" || name == "STARTTLS") {
    bad = "Extra arguments";
  } else {
    bad = "Command not allowed before login";
  }
  if (bad == nullptr && no.empty()) {
    return false;
  }
  command_framer_.returnToCommandMode();
  std::fill_n(client_pending_.begin(), pending_parsed_, '\0');  // may hold a user name
  client_pending_.erase(0, pending_parsed_);
  pending_parsed_ = 0;
  if (!no.empty()) {
    writeClient(no);
    return true;
  }
  host_.stats().prelogin_bad_commands.add();
  badCommand(tag, bad);
  return true;
}

std::string Session::privacyRequired(std::string_view tag) {
  return fmt::format("{} NO [PRIVACYREQUIRED] Use STARTTLS before logging in.\r\n", tag);
}

bool Session::refusedUntilTls(std::string_view tag) {
  if (!require_tls_ || client_tls_) {
    return false;
  }
  writeClient(privacyRequired(tag));
  return true;
}

void Session::badCommand(std::string_view tag, std::string_view message) {
  writeClient(fmt::format("{} BAD {}\r\n", tag, message));
  if (++bad_in_row_ >= config_->config.limits.max_bad_commands) {
    closeWithBye("* BYE Too many invalid commands\r\n", EndReason::kTooManyInvalidCommands);
  }
}

void Session::handlePreloginCommand(std::string_view bytes) {
  parser::PreloginResult result =
      parser::parsePrelogin(bytes, preloginLimits(config_->config.limits));
  parser::PreloginCommand& cmd = result.command;
  const std::string tag = cmd.tag.empty() ? std::string("*") : cmd.tag;
  if (!result.ok) {
    // Arguments of a command that did not parse are never logged: a
    // mistyped LOGIN could carry a password.
    notifyPrelogin(cmd, std::string_view(), std::string("BAD ") + result.error.message);
    host_.stats().prelogin_bad_commands.add();
    if (result.error.code == parser::ErrorCode::kUnknownCommand) {
      badCommand(tag, "Command not allowed before login");
    } else {
      badCommand(tag, result.error.message);
    }
    wipe(cmd.password);
    return;
  }
  bad_in_row_ = 0;
  switch (cmd.verb) {
    case parser::Verb::kCapability:
      writeClient(fmt::format("* CAPABILITY {}\r\n{} OK Pre-login capabilities listed.\r\n",
                              capabilities(), tag));
      notifyPrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kNoop:
      writeClient(fmt::format("{} OK NOOP completed.\r\n", tag));
      notifyPrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kLogout:
      writeClient(fmt::format("* BYE Logging out\r\n{} OK Logout completed.\r\n", tag));
      notifyPrelogin(cmd, bytes, "OK");
      closeWithBye("", EndReason::kClientLogout);
      return;
    case parser::Verb::kId:
      client_id_ = std::move(cmd.id);
      writeClient(
          fmt::format("* ID (\"name\" \"Portico\" \"version\" \"{}\")\r\n{} OK ID completed.\r\n",
                      version(), tag));
      notifyPrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kStarttls:
      notifyPrelogin(cmd, bytes,
                     listener_tls_ == TlsMode::kStarttls && !client_tls_ ? "OK" : "BAD");
      if (listener_tls_ != TlsMode::kStarttls || client_tls_) {
        writeClient(fmt::format(
            "{} BAD {}\r\n", tag,
            client_tls_ ? "TLS is already active." : "STARTTLS is not available on this port."));
        return;
      }
      startClientStarttls(tag);
      return;
    case parser::Verb::kLogin:
      if (refusedUntilTls(tag)) {
        return;
      }
      login_kind_ = LoginKind::kLogin;
      login_tag_ = cmd.tag;
      notify([&](SessionObserver& o) { o.onLoginCommand(*this, cmd, bytes); });
      user_ = std::move(cmd.user);
      password_ = std::move(cmd.password);
      wipe(cmd.password);
      startLogin();
      return;
    case parser::Verb::kAuthenticate:
      if (refusedUntilTls(tag)) {
        return;
      }
      if (!isSupportedMechanism(cmd.mechanism)) {
        writeClient(fmt::format("{} NO Unsupported authentication mechanism.\r\n", tag));
        return;
      }
      login_tag_ = cmd.tag;
      mechanism_ = cmd.mechanism;
      notify([&](SessionObserver& o) { o.onLoginCommand(*this, cmd, bytes); });
      if (cmd.initial_response) {
        beginAuthenticate(*cmd.initial_response);
        wipe(*cmd.initial_response);
      } else {
        writeClient("+ \r\n");
        setState(SessionState::kAuthContinuation);
      }
      return;
    case parser::Verb::kOther:
      badCommand(tag, "Command not allowed before login");
      return;
  }
}

void Session::startClientStarttls(const std::string& tag) {
  writeClient(fmt::format("{} OK Begin TLS negotiation now.\r\n", tag));
  // Bytes pipelined after STARTTLS in plaintext are dropped, never run after
  // the handshake (the CVE-2011-0411 class of injection).
  wipe(client_pending_);
  pending_parsed_ = 0;
  command_framer_.reset();
  Transport* tls = host_.startServerTls(client_, listener_tls_context_);
  if (tls == nullptr) {
    closeWithBye("* BYE TLS is not available.\r\n", EndReason::kTlsUnavailable);
    return;
  }
  client_ = tls;
  client_->setHandler(this);
  client_tls_ = true;
}

void Session::handleAuthLine(std::string_view line) {
  setState(SessionState::kPrelogin);
  if (line == "*") {
    writeClient(fmt::format("{} BAD Authentication cancelled.\r\n", login_tag_));
    return;
  }
  beginAuthenticate(line);
}

void Session::beginAuthenticate(std::string_view initial_response) {
  std::optional<std::string> decoded = parser::decodeBase64(initial_response);
  if (!decoded) {
    writeClient(fmt::format("{} BAD Invalid base64 in SASL response.\r\n", login_tag_));
    return;
  }
  std::optional<std::string> user = parser::saslUser(mechanism_, *decoded);
  wipe(*decoded);
  if (!user || user->empty()) {
    failLogin(fmt::format("{} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", login_tag_),
              true);
    return;
  }
  login_kind_ = LoginKind::kAuthenticate;
  user_ = std::move(*user);
  sasl_.assign(initial_response);
  startLogin();
}

void Session::startLogin() {
  const RuntimeConfig& rc = *config_;
  ++login_attempts_;
  backend_user_.reset();
  replay_as_login_ = false;
  connect_timeout_.reset();
  std::string user = normaliseUser(user_);
  if (auto probe = rc.probe_users.find(user); probe != rc.probe_users.end()) {
    // A probe account's backend pin wins over the directory: it is never asked.
    candidates_ = {probe->second};
    candidate_pos_ = 0;
    connectNext();
    return;
  }
  // Fleet mode: a user held for a mailbox move, or Redis away with
  // on_redis_down = "refuse" (one relaxed load when neither).
  if (std::optional<std::string> refusal = host_.shared().fleet_gate.refusal(user, host_.now())) {
    failLogin(fmt::format("{} NO {}\r\n", login_tag_, *refusal), false);
    return;
  }
  if (std::optional<std::string> refusal =
          host_.shared().login_penalties.refusal(fleet::clientIp(client_address_), user)) {
    failLogin(fmt::format("{} NO {}\r\n", login_tag_, *refusal), false);
    return;
  }
  if (const std::uint32_t limit = rc.config.limits.max_sessions_per_user;
      !host_.shared().user_sessions.acquire(user, limit, user_slot_)) {
    failLogin(fmt::format("{} NO [LIMIT] Too many sessions for this user (at most {}).\r\n",
                          login_tag_, limit),
              false);
    return;
  }
  if (std::shared_ptr<LookupStage> stage = host_.lookupStage()) {
    startLookup(std::move(stage));  // session_lookup.cc
    return;
  }
  routeByHash();
}

void Session::routeByHash() {
  const RuntimeConfig& rc = *config_;
  std::vector<bool> enabled(rc.config.backends.size(), true);
  for (std::size_t i = 0; i < enabled.size(); ++i) {
    enabled[i] = !host_.shared().drained(rc.stats_slot[i]);
  }
  candidates_ = rc.selector.candidates(normaliseUser(user_), enabled);
  candidate_pos_ = 0;
  if (candidates_.empty()) {
    failLogin(fmt::format("{} NO [UNAVAILABLE] No mailbox server is available.\r\n", login_tag_),
              false);
    return;
  }
  connectNext();
}

void Session::connectNext() {
  const RuntimeConfig& rc = *config_;
  if (candidate_pos_ >= candidates_.size() || candidate_pos_ > rc.config.routing.connect_retries) {
    failLogin(fmt::format("{} NO [UNAVAILABLE] Mailbox server unavailable, try again later.\r\n",
                          login_tag_),
              false);
    return;
  }
  backend_index_ = candidates_[candidate_pos_++];
  const BackendConfig& backend = rc.config.backends[backend_index_];
  backend_name_ = backend.name;
  setState(SessionState::kConnecting);
  updateClientReading();
  backend_login_.reset();
  if (!pool_declined_) {
    if (std::optional<PooledBackend> pooled = host_.takePooledBackend(rc, backend_index_, this)) {
      usePooledBackend(std::move(*pooled));
      return;
    }
  }
  deadline_ = host_.now() + connect_timeout_.value_or(rc.config.timeouts.backend_connect);
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
  if (backend_login_ && backend_login_->state() == BackendLoginClient::State::kTlsHandshake) {
    backend_login_->tlsEstablished();  // capabilities may differ under TLS: ask again
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
  if (backend_pooled_ && backend_ != nullptr) {
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

void Session::failLogin(std::string_view client_line, bool count_failure) {
  user_slot_.reset();
  if (count_failure && config_->config.fleet.enabled() && config_->config.limits.loginPenalties()) {
    host_.shared().login_penalties.record(fleet::clientIp(client_address_), normaliseUser(user_));
  }
  (count_failure ? host_.stats().logins_rejected : host_.stats().logins_unavailable).add();
  if (backend_ != nullptr) {
    orphans_.push_back(backend_);
    backend_->close();
    backend_ = nullptr;
  }
  wipeSecrets();
  LoginOutcome outcome;
  outcome.result = client_line.substr(std::min(client_line.size(), login_tag_.size() + 1));
  while (!outcome.result.empty() &&
         (outcome.result.back() == '\n' || outcome.result.back() == '\r')) {
    outcome.result.remove_suffix(1);
  }
  outcome.response_bytes = client_line.size();
  notify([&](SessionObserver& o) { o.onLoginDone(*this, outcome); });
  setState(SessionState::kPrelogin);
  if (client_ == nullptr) {
    finishIfClosed();
    return;
  }
  if (shutdown_pending_) {
    // requestBye() came while the login was in progress: its answer was
    // the command to wait for, so the BYE follows it now.
    writeClient(client_line);
    closeWithBye(fmt::format("* BYE {}\r\n", shutdown_text_), shutdown_end_reason_);
    return;
  }
  const Config& cfg = config_->config;
  if (count_failure) {
    ++login_failures_;
    if (bye_after_failure_) {
      // The directory refused without Auth-Wait: nginx ends the connection.
      writeClient(client_line);
      closeWithBye("* BYE Login refused.\r\n", EndReason::kDirectoryRefused);
      return;
    }
    if (login_failures_ >= cfg.limits.max_login_failures) {
      writeClient(client_line);
      closeWithBye("* BYE Too many failed login attempts.\r\n", EndReason::kTooManyFailedLogins);
      return;
    }
    // Growing delay before the answer: slows password guessing without
    // holding anything but a timer.
    auto delay = milliseconds(cfg.limits.login_failure_delay.count()
                              << std::min<std::uint32_t>(login_failures_ - 1, 6));
    delayed_reply_.assign(client_line);
    setState(SessionState::kLoginDelay);
    updateClientReading();
    deadline_ = host_.now() + delay;
    armTimer();
    return;
  }
  writeClient(client_line);
  deadline_ = started_ + cfg.timeouts.prelogin;
  armTimer();
  updateClientReading();
  processPrelogin();
}

}  // namespace portico::proxy
