// Session: construction, transport events, shutdown, tracing, timers, the end.
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

namespace {

constexpr const char* kStateNames[] = {
#define PORTICO_NAME(name) #name,
    PORTICO_SESSION_STATES(PORTICO_NAME)
#undef PORTICO_NAME
};
static_assert(sizeof(kStateNames) / sizeof(kStateNames[0]) ==
                  static_cast<std::size_t>(SessionState::kClosing) + 1,
              "a name for every session state");

}  // namespace

const char* sessionStateName(SessionState state) {
  return kStateNames[static_cast<std::size_t>(state)];
}

SessionState Session::state() const {
  if (state_ == SessionState::kPrelogin && dialogue_ && dialogue_->awaitingSasl()) {
    return SessionState::kAuthContinuation;
  }
  if (state_ != SessionState::kBackendGreeting || !login_ || !login_->backend_login) {
    return state_;
  }
  using LoginState = BackendLoginClient::State;
  switch (login_->backend_login->state()) {
    case LoginState::kGreeting:
      return SessionState::kBackendGreeting;
    case LoginState::kStarttls:
      return SessionState::kBackendStarttls;
    case LoginState::kTlsHandshake:
      return SessionState::kBackendTlsHandshake;
    case LoginState::kCapability:
    case LoginState::kReady:  // not seen by a session: it resumes a held login at once
      return SessionState::kBackendCapability;
    case LoginState::kId:
      return SessionState::kBackendId;
    case LoginState::kLogin:
    case LoginState::kDone:
      break;
  }
  return SessionState::kBackendLogin;
}

Session::Session(SessionHost& host, RuntimeConfigPtr config, Transport* client, std::uint64_t id)
    : host_(host),
      config_(std::move(config)),
      client_(client),
      accounting_(host),
      tap_(host),
      id_(id) {
  // The dialogue sees the session only as its PreloginOwner (a private base).
  PreloginOwner& owner = *this;
  dialogue_ = std::make_unique<PreloginDialogue>(owner, *config_, command_framer_);
  addObserver(&accounting_);
  addObserver(&tap_);
}

void Session::addObserver(SessionObserver* observer) {
  if (observer_count_ < observers_.size()) {
    observers_[observer_count_++] = observer;
  }
}

std::string Session::backendAddress() const {
  return backend_name_.empty() ? std::string()
                               : config_->config.backends[backend_index_].address.text();
}

Session::~Session() {
  wipeSecrets();
  login_.reset();  // a login still in progress: wiped again, its lookup cancelled
  // What was read before login goes with the dialogue (its destructor
  // wipes it). The command framer's copy of the last pre-login command
  // line: setLimits() zeroes its buffers in place (the session never
  // changes their sizes).
  dialogue_.reset();
  command_framer_.setLimits(parser::Limits{});
}

void Session::setListener(TlsMode mode, bool require_tls,
                          std::shared_ptr<const ServerTlsContext> tls, bool tls_active) {
  dialogue_->setListener(mode, require_tls, std::move(tls));
  client_tls_ = tls_active;
}

void Session::start() {
  const Config& cfg = config_->config;
  client_->setHandler(this);
  client_->setHighWatermark(cfg.limits.write_high_watermark);
  started_ = last_activity_ = host_.now();
  client_address_ = formatAddress(client_->peerAddress());
  client_sockaddr_ = client_->peerAddress();
  timer_ = host_.createTimer([this] { onTimer(); });
  host_.stats().connections_unauthenticated.add();

  command_framer_.setLimits(preloginLimits(cfg.limits));
  writeClient(fmt::format("* OK [CAPABILITY {}] {}\r\n", dialogue_->capabilities(), cfg.greeting));
  notify([&](SessionObserver& o) { o.onConnect(*this, cfg.greeting, client_tls_); });
  deadline_ = started_ + cfg.timeouts.prelogin;
  armTimer();
}

// ---------------------------------------------------------------------------
// Transport events.

void Session::onData(Transport* transport, Chunk chunk) {
  if (transport == client_) {
    (this->*client_reader_)(std::move(chunk));
  } else if (transport == backend_) {
    (this->*backend_reader_)(std::move(chunk));
  }
}

void Session::setState(SessionState state) {
  state_ = state;
  switch (state) {
    case SessionState::kLookup:
      client_reader_ = &Session::readDuringLookup;
      backend_reader_ = &Session::ignoreData;
      return;
    case SessionState::kBackendGreeting:  // the whole backend login (state())
      client_reader_ = &Session::readPrelogin;
      backend_reader_ = &Session::onBackendLoginData;
      return;
    case SessionState::kRelay:
      client_reader_ = &Session::readRelay;
      backend_reader_ = &Session::readRelayBackend;
      return;
    case SessionState::kClosing:
      client_reader_ = &Session::ignoreData;
      backend_reader_ = &Session::ignoreData;
      return;
    default:  // the pre-login dialogue; a connect in progress
      client_reader_ = &Session::readPrelogin;
      backend_reader_ = &Session::ignoreData;
      return;
  }
}

void Session::readPrelogin(Chunk chunk) {
  bytes_in_ += chunk.size();
  host_.stats().bytes_from_clients.add(chunk.size());
  dialogue_->append(chunk.view());  // may hold a password
  chunk.reset();                    // its block is wiped now
  processDialogue();
}

bool Session::dialogueOpen() const {
  return client_ != nullptr && state_ == SessionState::kPrelogin;
}

void Session::processDialogue() {
  dialogue_->process();
  if (retire_dialogue_ && !dialogue_->processing()) {
    retire_dialogue_ = false;
    dialogue_.reset();
  }
}

void Session::upgradeClientToTls(std::shared_ptr<const ServerTlsContext> context) {
  Transport* tls = host_.startServerTls(client_, std::move(context));
  if (tls == nullptr) {
    closeWithBye("* BYE TLS is not available.\r\n", EndReason::kTlsUnavailable);
    return;
  }
  client_ = tls;
  client_->setHandler(this);
  client_tls_ = true;
}

void Session::readDuringLookup(Chunk chunk) {
  bytes_in_ += chunk.size();
  host_.stats().bytes_from_clients.add(chunk.size());
  dialogue_->append(chunk.view());
  chunk.reset();
  // Read during a lookup only to notice a client that goes away; what it
  // pipelines waits, bounded like one pre-login command.
  if (dialogue_->holdingTooMuch()) {
    client_->pauseReading();
  }
}

void Session::readRelay(Chunk chunk) {
  bytes_in_ += chunk.size();
  host_.stats().bytes_from_clients.add(chunk.size());
  relay_->fromClient(std::move(chunk));
}

void Session::readRelayBackend(Chunk chunk) {
  relay_->fromBackend(std::move(chunk));
}

void Session::ignoreData(Chunk chunk) {
  (void)chunk;
}

void Session::onDrained(Transport* transport) {
  if (!relay_) {
    return;  // before the relay nothing pauses a side for the other
  }
  if (transport == backend_) {
    relay_->backendDrained();
  } else if (transport == client_) {
    relay_->clientDrained();
  }
}

void Session::onClosed(Transport* transport, std::string_view reason) {
  if (transport == client_) {
    client_ = nullptr;
    if (relay_ && relay_->logoutSeen()) {
      setEndReason(EndReason::kLogout);  // the client left after LOGOUT's answer
    } else {
      setEndReason(EndReason::kClientClosed, reason);
    }
    setState(SessionState::kClosing);
    if (backend_ != nullptr) {
      backend_->close();
    }
    finishIfClosed();
    return;
  }
  if (transport == backend_) {
    backend_ = nullptr;
    switch (state_) {
      case SessionState::kConnecting:
      case SessionState::kBackendGreeting:
        if (client_ == nullptr) {
          break;
        }
        if (login_->backend_pooled) {
          retryWithoutPool();
        } else if (!login_->backend_login || !login_->backend_login->loginSent()) {
          connectNext();
        } else {
          failLogin(fmt::format("{} NO [UNAVAILABLE] Mailbox server failed during login.\r\n",
                                login_->request.tag),
                    false);
        }
        return;
      case SessionState::kRelay:
        if (client_ != nullptr) {
          if (relay_->logoutSeen()) {
            closeWithBye("", EndReason::kLogout);
          } else {
            logging::log(logging::Level::kWarn, "session",
                         "id={:016x} backend {} closed the connection ({}); client={} user={}", id_,
                         backend_name_, reason, client_address_, user_);
            closeWithBye("* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n",
                         EndReason::kBackendClosed);
          }
        }
        break;
      default:
        break;
    }
    finishIfClosed();
    return;
  }
  auto orphan = std::find(orphans_.begin(), orphans_.end(), transport);
  if (orphan != orphans_.end()) {
    orphans_.erase(orphan);
    finishIfClosed();
  }
}

// ---------------------------------------------------------------------------
// Common.

void Session::requestBye(std::string_view text, EndReason end_reason) {
  shutdown_pending_ = true;
  shutdown_text_.assign(text);
  shutdown_end_reason_ = end_reason;
  switch (state_) {
    case SessionState::kPrelogin:  // an AUTHENTICATE continuation too
    case SessionState::kLoginDelay:
      closeWithBye(fmt::format("* BYE {}\r\n", text), end_reason);
      return;
    case SessionState::kRelay:
      relay_->requestBye();
      return;
    default:
      return;  // a login in progress finishes first; enterRelay() checks again
  }
}

void Session::abort(EndReason reason) {
  setEndReason(reason);
  setState(SessionState::kClosing);
  if (client_ != nullptr) {
    client_->close();
  }
  if (backend_ != nullptr) {
    backend_->close();
  }
}

void Session::notifyPrelogin(const parser::PreloginCommand& command, std::string_view bytes,
                             std::string_view result) {
  notify([&](SessionObserver& o) { o.onPreloginCommand(*this, command, bytes, result); });
}

void Session::notifyLoginCommand(const parser::PreloginCommand& command, std::string_view bytes) {
  notify([&](SessionObserver& o) { o.onLoginCommand(*this, command, bytes); });
}

void Session::kick() {
  if (state_ == SessionState::kClosing) {
    return;  // already ending (a second kick, or a kick during shutdown): one BYE is enough
  }
  logging::log(logging::Level::kInfo, "session", "id={:016x} kicked by operator; client={} user={}",
               id_, client_address_, user_);
  closeWithBye("* BYE [UNAVAILABLE] Session ended by the administrator.\r\n", EndReason::kKicked);
}

bool Session::releaseIdleBuffers(Clock::time_point now, Clock::duration quiet) {
  if (now - last_activity_ < quiet) {
    return false;
  }
  if (state_ == SessionState::kRelay) {
    return relay_->releaseIdleBuffers();
  }
  if (state_ == SessionState::kPrelogin && dialogue_ && dialogue_->idle()) {
    return command_framer_.releaseBuffers();
  }
  return false;
}

SessionInfo Session::info(std::chrono::steady_clock::time_point now) const {
  SessionInfo out;
  out.id = id_;
  out.client = client_address_;
  out.user = user_;
  out.backend = logged_in_ ? backend_name_ : std::string();
  out.state = sessionStateName(state());
  if (relay_) {
    relay_->describe(out, now);
  }
  out.bytes_in = bytes_in_;
  out.bytes_out = bytes_out_;
  out.age_ms = duration_cast<milliseconds>(now - started_).count();
  return out;
}

bool SessionFilter::matches(const SessionInfo& info) const {
  if (id && *id != info.id) {
    return false;
  }
  if (!user.empty() && normaliseUser(info.user) != user) {
    return false;
  }
  if (!backend.empty() && info.backend != backend) {
    return false;
  }
  if (!ip.empty()) {
    auto colon = info.client.rfind(':');
    std::string host = info.client.substr(0, colon);
    if (!host.empty() && host.front() == '[') {
      host = host.substr(1, host.size() - 2);
    }
    if (host != ip) {
      return false;
    }
  }
  return true;
}

void Session::writeClient(std::string_view bytes) {
  if (client_ != nullptr && !bytes.empty()) {
    bytes_out_ += bytes.size();
    host_.stats().bytes_to_clients.add(bytes.size());
    client_->write(bytes);
  }
}

bool Session::clientMidResponse() const {
  // In relay the response framer has seen exactly what went to the client
  // (a failed framer is judged by its caller, which knows where it stopped).
  return state_ == SessionState::kRelay && relay_->midResponse();
}

void Session::noteCutResponse(std::string_view reason) {
  logging::log(logging::Level::kWarn, "session",
               "id={:016x} closing in the middle of a response from backend {} ({}): no BYE "
               "sent, the client sees the connection end; client={} user={}",
               id_, backend_name_, reason, client_address_, user_);
  backendStats()->responses_cut.add();
}

void Session::setEndReason(EndReason reason, std::string_view detail) {
  if (end_reason_set_) {
    return;
  }
  end_reason_set_ = true;
  end_reason_ = reason;
  end_detail_.assign(detail);
}

std::string_view Session::endReasonLogText() const {
  return end_detail_.empty() ? endReasonText(end_reason_) : std::string_view(end_detail_);
}

void Session::closeWithBye(std::string_view bye_line, EndReason reason, std::string_view detail) {
  setEndReason(reason, detail);
  if (!bye_line.empty() && clientMidResponse()) {
    // A response (a FETCH literal, say) is part-way to the client: a BYE
    // now would become part of the message. Closing is the only signal
    // that cannot be mistaken for message bytes.
    noteCutResponse(detail.empty() ? endReasonText(reason) : detail);
  } else {
    writeClient(bye_line);
  }
  setState(SessionState::kClosing);
  if (backend_ != nullptr) {
    backend_->close();
  }
  if (client_ != nullptr) {
    client_->pauseReading();
    client_->shutdown();
  }
}

void Session::updateClientReading() {
  if (client_ == nullptr) {
    return;
  }
  bool reading = (!relay_ || relay_->readsClient()) &&
                 (state_ == SessionState::kPrelogin || state_ == SessionState::kLookup ||
                  state_ == SessionState::kRelay);
  if (reading) {
    client_->resumeReading();
  } else {
    client_->pauseReading();
  }
}

void Session::armTimer() {
  auto now = host_.now();
  auto delay = deadline_ > now ? duration_cast<milliseconds>(deadline_ - now) : milliseconds(0);
  timer_->arm(delay + milliseconds(1));
}

void Session::onTimer() {
  const Config& cfg = config_->config;
  auto now = host_.now();
  if (now < deadline_) {
    armTimer();
    return;
  }
  switch (state_) {
    case SessionState::kPrelogin:  // an AUTHENTICATE continuation too
      closeWithBye("* BYE Disconnected for inactivity during login.\r\n",
                   EndReason::kPreloginTimeout);
      return;
    case SessionState::kLoginDelay: {
      setState(SessionState::kPrelogin);
      writeClient(dialogue_->takeHeldReply());
      deadline_ = std::max(now + milliseconds(1), started_ + cfg.timeouts.prelogin);
      armTimer();
      updateClientReading();
      processDialogue();
      return;
    }
    case SessionState::kLookup:
      // A backstop only: every directory query is bounded by its own timeout.
      login_->lookup.cancel();
      lookupUnavailable("no answer from the lookup stage within its bound");
      return;
    case SessionState::kConnecting:
      backendFailed("connect timeout");
      return;
    case SessionState::kBackendGreeting:
      pooledLoginDone();  // a slow backend, not a dead pooled connection: no retry
      backendFailed("login timeout");
      return;
    default:
      return;
    case SessionState::kRelay:
      if (now - last_activity_ >= cfg.timeouts.idle) {
        closeWithBye("* BYE Disconnected for inactivity.\r\n", EndReason::kIdleTimeout);
      } else {
        deadline_ = last_activity_ + cfg.timeouts.idle;
        armTimer();
      }
      return;
    case SessionState::kClosing:
      return;
  }
}

void Session::wipeSecrets() {
  if (login_) {
    login_->wipeSecrets();
  }
}

void Session::finishIfClosed() {
  if (client_ != nullptr || backend_ != nullptr || !orphans_.empty() || ended_) {
    return;
  }
  ended_ = true;
  if (timer_) {
    timer_->cancel();
  }
  auto duration = duration_cast<milliseconds>(host_.now() - started_);
  if (counted_unauthenticated_) {
    host_.stats().connections_unauthenticated.sub();
    counted_unauthenticated_ = false;
  }
  notify([&](SessionObserver& o) {
    o.onSessionEnd(*this, end_reason_, endReasonLogText(), duration);
  });
  logging::log(logging::Level::kInfo, "session",
               "session end id={:016x} client={} user={} backend={} duration_ms={} bytes_in={} "
               "bytes_out={} commands={} reason=\"{}\"",
               id_, client_address_, user_.empty() ? "-" : user_,
               logged_in_ ? backend_name_ : std::string("-"), duration.count(), bytes_in_,
               bytes_out_, relay_ ? relay_->commands() : 0, endReasonLogText());
  host_.sessionEnded(this);  // the host deletes this session: nothing may follow
}

BackendStats* Session::backendStats() {
  return &host_.stats().backend(config_->stats_slot[backend_index_]);
}

// ---------------------------------------------------------------------------
// RelayOwner: the relay phase's calls back into its session.

void Session::relayByeOnShutdown() {
  closeWithBye(fmt::format("* BYE {}\r\n", shutdown_text_), shutdown_end_reason_);
}

void Session::relayWarnBackend(std::string_view what) {
  logging::log(logging::Level::kWarn, "session", "id={:016x} backend {} {}; client={} user={}", id_,
               backend_name_, what, client_address_, user_);
}

bool Session::relayCompressClient(std::string_view ok_line) {
  Transport* compressed = host_.startCompression(client_);
  if (compressed == nullptr) {
    return false;
  }
  writeClient(ok_line);  // the last plain bytes on the client's connection
  client_ = compressed;
  client_->setHandler(this);
  logging::log(logging::Level::kDebug, "session", "id={:016x} COMPRESS=DEFLATE active", id_);
  return true;
}

void Session::relayCommandSent(const parser::CommandEvent& event, CommandId command) {
  notify([&](SessionObserver& o) { o.onCommandSent(*this, event, command); });
}

void Session::relayCommandCompleted(const CompletedCommand& command) {
  notify([&](SessionObserver& o) { o.onCommandCompleted(*this, command); });
}

void Session::relayLocalCommand(CommandId command, std::string_view parameters,
                                std::string_view result, parser::Status status,
                                std::uint64_t request_bytes, std::uint64_t response_bytes) {
  notify([&](SessionObserver& o) {
    o.onLocalCommand(*this, command, parameters, result, status, request_bytes, response_bytes);
  });
}

}  // namespace portico::proxy
