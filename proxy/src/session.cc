#include "session.h"

#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include <fmt/format.h>

#include "portico/logging.h"
#include "portico/proxy.h"

namespace portico::proxy {

namespace {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr const char* kStateNames[] = {
#define PORTICO_NAME(name) #name,
    PORTICO_SESSION_STATES(PORTICO_NAME)
#undef PORTICO_NAME
};
static_assert(sizeof(kStateNames) / sizeof(kStateNames[0]) ==
                  static_cast<std::size_t>(SessionState::kClosing) + 1,
              "a name for every session state");

constexpr std::size_t kMaxBackendLoginBytes = 64 * 1024;
constexpr const char* kForwardIdTag = "P0ID";

bool quotable(std::string_view s) {
  for (unsigned char c : s) {
    if (c == '\r' || c == '\n' || c == '\0' || c >= 0x80) {
      return false;
    }
  }
  return true;
}

std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

// Overwrites a secret before its memory is released or reused.
void wipe(std::string& s) {
  volatile char* p = s.data();
  for (std::size_t i = 0; i < s.size(); ++i) {
    p[i] = 0;
  }
  s.clear();
}

bool startsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) {
    return false;
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(s[i])) != prefix[i]) {
      return false;
    }
  }
  return true;
}

// Printable, bounded excerpt of a peer's line for an operator's log.
std::string excerpt(std::string_view line) {
  std::string out;
  for (char c : line.substr(0, 120)) {
    out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return out;
}

bool isSupportedMechanism(std::string_view mechanism) {
  return mechanism == "PLAIN" || mechanism == "XOAUTH2" || mechanism == "OAUTHBEARER";
}

}  // namespace

const char* sessionStateName(SessionState state) {
  return kStateNames[static_cast<std::size_t>(state)];
}

Session::Session(SessionHost& host, RuntimeConfigPtr config, Transport* client, std::uint64_t id)
    : host_(host), config_(std::move(config)), client_(client), id_(id) {}

Session::~Session() {
  wipeSecrets();
}

void Session::setListener(TlsMode mode, bool require_tls,
                          std::shared_ptr<const ServerTlsContext> tls, bool tls_active) {
  listener_tls_ = mode;
  require_tls_ = require_tls;
  listener_tls_context_ = std::move(tls);
  client_tls_ = tls_active;
}

std::string Session::capabilities() const {
  if (listener_tls_ != TlsMode::kStarttls || client_tls_) {
    return config_->capabilities;
  }
  // Plaintext on a STARTTLS listener: offer STARTTLS; with require_tls,
  // hide every AUTH= mechanism and say LOGINDISABLED (RFC 9051 6.2).
  std::string out;
  for (std::string_view cap : parser::parseCapabilities(config_->capabilities)) {
    if (require_tls_ && startsWithNoCase(cap, "AUTH=")) {
      continue;
    }
    out.append(out.empty() ? "" : " ").append(cap);
    if (startsWithNoCase(cap, "IMAP4REV1")) {
      out.append(" STARTTLS");
      if (require_tls_) {
        out.append(" LOGINDISABLED");
      }
    }
  }
  return out;
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

  parser::Limits limits;
  limits.max_line = cfg.limits.prelogin_max_line;
  limits.max_literal = cfg.limits.prelogin_max_literal;
  command_framer_.setLimits(limits);
  writeClient(fmt::format("* OK [CAPABILITY {}] {}\r\n", capabilities(), cfg.greeting));
  if (tracing()) {
    traceRecord("Connect", "",
                fmt::format("R=OK {};tls={}", cfg.greeting, client_tls_ ? "yes" : "no"), 0, 0, 0);
  }
  deadline_ = started_ + cfg.timeouts.prelogin;
  armTimer();
}

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
  const std::size_t max_pending =
      2 * static_cast<std::size_t>(limits.prelogin_max_line) + 2 * limits.prelogin_max_literal;
  while (client_ != nullptr &&
         (state_ == SessionState::kPrelogin || state_ == SessionState::kAuthContinuation)) {
    if (state_ == SessionState::kAuthContinuation) {
      // One SASL response line; read here rather than by the framer so the
      // payload never sits in the framer's head buffer.
      auto lf = client_pending_.find('\n');
      if (lf == std::string::npos) {
        if (client_pending_.size() > limits.prelogin_max_line) {
          closeWithBye("* BYE SASL response too long\r\n", "sasl response too long");
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
        if (client_pending_.size() > max_pending) {
          writeClient("* BAD Command too long\r\n");
          closeWithBye("* BYE Command too long\r\n", "command too long");
        }
        return;
      case parser::CommandEventType::kLiteral:
        if (parser::isSync(ev.literal_kind)) {
          writeClient("+ Ready for literal data\r\n");
        }
        break;
      case parser::CommandEventType::kCommand: {
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
        // Not reachable before login: AUTHENTICATE lines are read above and
        // IDLE is refused. Drop what was consumed.
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
          closeWithBye(fmt::format("* BYE {}\r\n", ev.error.message),
                       parser::errorCodeName(ev.error.code));
          return;
        }
        badCommand(tag, ev.error.message);
        break;
      }
    }
  }
}

void Session::badCommand(std::string_view tag, std::string_view message) {
  writeClient(fmt::format("{} BAD {}\r\n", tag, message));
  if (++bad_in_row_ >= config_->config.limits.max_bad_commands) {
    closeWithBye("* BYE Too many invalid commands\r\n", "too many invalid commands");
  }
}

void Session::handlePreloginCommand(std::string_view bytes) {
  parser::Limits limits;
  limits.max_line = config_->config.limits.prelogin_max_line;
  limits.max_literal = config_->config.limits.prelogin_max_literal;
  parser::PreloginResult result = parser::parsePrelogin(bytes, limits);
  parser::PreloginCommand& cmd = result.command;
  const std::string tag = cmd.tag.empty() ? std::string("*") : cmd.tag;
  if (!result.ok) {
    // Arguments of a command that did not parse are never logged: a
    // mistyped LOGIN could carry a password.
    tracePrelogin(cmd, std::string_view(), std::string("BAD ") + result.error.message);
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
      tracePrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kNoop:
      writeClient(fmt::format("{} OK NOOP completed.\r\n", tag));
      tracePrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kLogout:
      writeClient(fmt::format("* BYE Logging out\r\n{} OK Logout completed.\r\n", tag));
      tracePrelogin(cmd, bytes, "OK");
      closeWithBye("", "client logout");
      return;
    case parser::Verb::kId:
      client_id_ = std::move(cmd.id);
      writeClient(
          fmt::format("* ID (\"name\" \"Portico\" \"version\" \"{}\")\r\n{} OK ID completed.\r\n",
                      version(), tag));
      tracePrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kStarttls:
      tracePrelogin(cmd, bytes, listener_tls_ == TlsMode::kStarttls && !client_tls_ ? "OK" : "BAD");
      if (listener_tls_ != TlsMode::kStarttls || client_tls_) {
        writeClient(fmt::format(
            "{} BAD {}\r\n", tag,
            client_tls_ ? "TLS is already active." : "STARTTLS is not available on this port."));
        return;
      }
      startClientStarttls(tag);
      return;
    case parser::Verb::kLogin:
      if (require_tls_ && !client_tls_) {
        writeClient(
            fmt::format("{} NO [PRIVACYREQUIRED] Use STARTTLS before logging in.\r\n", tag));
        return;
      }
      login_kind_ = LoginKind::kLogin;
      login_tag_ = cmd.tag;
      noteLoginParameters(cmd, bytes);
      user_ = std::move(cmd.user);
      trace_generation_ = 0;  // the user is known now: re-evaluate tracing
      password_ = std::move(cmd.password);
      wipe(cmd.password);
      startLogin();
      return;
    case parser::Verb::kAuthenticate:
      command_framer_.endAuthentication();  // the SASL lines are read by the session
      if (require_tls_ && !client_tls_) {
        writeClient(
            fmt::format("{} NO [PRIVACYREQUIRED] Use STARTTLS before logging in.\r\n", tag));
        return;
      }
      if (!isSupportedMechanism(cmd.mechanism)) {
        writeClient(fmt::format("{} NO Unsupported authentication mechanism.\r\n", tag));
        return;
      }
      login_tag_ = cmd.tag;
      mechanism_ = cmd.mechanism;
      noteLoginParameters(cmd, bytes);
      if (cmd.initial_response) {
        beginAuthenticate(*cmd.initial_response);
        wipe(*cmd.initial_response);
      } else {
        writeClient("+ \r\n");
        state_ = SessionState::kAuthContinuation;
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
    closeWithBye("* BYE TLS is not available.\r\n", "tls unavailable");
    return;
  }
  client_ = tls;
  client_->setHandler(this);
  client_tls_ = true;
}

void Session::handleAuthLine(std::string_view line) {
  state_ = SessionState::kPrelogin;
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
  trace_generation_ = 0;
  sasl_.assign(initial_response);
  startLogin();
}

void Session::noteLoginParameters(const parser::PreloginCommand& command, std::string_view bytes) {
  std::string_view line = bytes.substr(0, bytes.find_first_of("\r\n"));
  for (int words = 2; words > 0 && !line.empty(); --words) {
    auto sp = line.find(' ');
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  }
  login_parameters_ = logging::redactCommandParameters(command.name, line);
  login_request_bytes_ = bytes.size();
  login_started_ = host_.now();
}

void Session::startLogin() {
  const RuntimeConfig& rc = *config_;
  std::vector<bool> enabled(rc.config.backends.size(), true);
  for (std::size_t i = 0; i < enabled.size(); ++i) {
    enabled[i] = !host_.shared().drained(rc.stats_slot[i]);
  }
  std::string user = normaliseUser(user_);
  if (auto probe = rc.probe_users.find(user); probe != rc.probe_users.end()) {
    candidates_ = {probe->second};
  } else {
    candidates_ = rc.selector.candidates(user, enabled);
  }
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
  state_ = SessionState::kConnecting;
  updateClientReading();
  login_sent_ = false;
  sasl_sent_ = false;
  backend_caps_.clear();
  backend_pending_.clear();
  backend_parsed_ = 0;
  login_untagged_.clear();
  response_framer_.reset();
  deadline_ = host_.now() + rc.config.timeouts.backend_connect;
  armTimer();
  if (backend.tls == TlsMode::kImplicit) {
    backend_ = backend_index_ < rc.backend_tls.size()
                   ? host_.connectBackendTls(backend, rc.backend_tls[backend_index_], this)
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
  if (state_ == SessionState::kBackendTlsHandshake) {
    // STARTTLS done: capabilities may differ under TLS, so ask again.
    backend_->write(std::string_view("P0CAP CAPABILITY\r\n"));
    state_ = SessionState::kBackendCapability;
    return;
  }
  backend_->setHighWatermark(config_->config.limits.write_high_watermark);
  state_ = SessionState::kBackendGreeting;
  deadline_ = host_.now() + config_->config.timeouts.backend_login;
  armTimer();
  if (config_->config.backends[backend_index_].proxy_protocol) {
    sendProxyHeader();
  }
}

void Session::backendFailed(std::string_view why) {
  logging::log(logging::Level::kWarn, "session",
               "id={:016x} backend {} failed while {}: {}; client={} user={}", id_, backend_name_,
               sessionStateName(state_), why, client_address_, user_);
  backendStats()->connect_failures.add();
  if (backend_ != nullptr) {
    backend_->close();  // onClosed decides: next candidate or NO [UNAVAILABLE]
  }
}

void Session::failLogin(std::string_view client_line, bool count_failure) {
  if (backend_ != nullptr) {
    orphans_.push_back(backend_);
    backend_->close();
    backend_ = nullptr;
  }
  wipeSecrets();
  if (tracing()) {
    std::string_view result =
        client_line.substr(std::min(client_line.size(), login_tag_.size() + 1));
    while (!result.empty() && (result.back() == '\n' || result.back() == '\r')) {
      result.remove_suffix(1);
    }
    traceRecord(login_kind_ == LoginKind::kLogin ? "LOGIN" : "AUTHENTICATE", login_parameters_,
                fmt::format("R={};B={}", result, backend_name_.empty() ? "-" : backend_name_),
                duration_cast<milliseconds>(host_.now() - login_started_).count(),
                login_request_bytes_, client_line.size());
  }
  state_ = SessionState::kPrelogin;
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
    if (login_failures_ >= cfg.limits.max_login_failures) {
      writeClient(client_line);
      closeWithBye("* BYE Too many failed login attempts.\r\n", "too many failed logins");
      return;
    }
    // Growing delay before the answer: slows password guessing without
    // holding anything but a timer.
    auto delay = milliseconds(cfg.limits.login_failure_delay.count()
                              << std::min<std::uint32_t>(login_failures_ - 1, 6));
    delayed_reply_.assign(client_line);
    state_ = SessionState::kLoginDelay;
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
      if (startsWithNoCase(ev.code, "CAPABILITY ")) {
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
      if (ev.type == ResponseEventType::kUntagged && startsWithNoCase(ev.head, "* CAPABILITY ")) {
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
            std::string response = sasl_.empty() ? std::string("=") : sasl_;
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
          login_untagged_.append(parser::editCapabilities(line, {"COMPRESS="}, {}));
          return true;
        case ResponseEventType::kTagged:
          if (ev.tag != login_tag_) {
            return true;
          }
          if (ev.status == parser::Status::kOk) {
            std::size_t rest = backend_parsed_;
            writeClient(login_untagged_);
            writeClient(parser::editCapabilities(line, {"COMPRESS="}, {}));
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
  std::string out;
  if (login_kind_ == LoginKind::kLogin) {
    if (quotable(user_) && quotable(password_)) {
      out = fmt::format("{} LOGIN {} {}\r\n", login_tag_, quote(user_), quote(password_));
    } else if (parser::hasCapability(backend_caps_, "AUTH=PLAIN") &&
               parser::hasCapability(backend_caps_, "SASL-IR")) {
      std::string plain;
      plain.push_back('\0');
      plain.append(user_).push_back('\0');
      plain.append(password_);
      out = fmt::format("{} AUTHENTICATE PLAIN {}\r\n", login_tag_, parser::encodeBase64(plain));
      wipe(plain);
    } else {
      // Unquotable bytes and no SASL-IR: LOGIN with non-synchronizing
      // literals needs LITERAL+.
      out = fmt::format("{} LOGIN {{{}+}}\r\n{} {{{}+}}\r\n{}\r\n", login_tag_, user_.size(), user_,
                        password_.size(), password_);
    }
  } else if (parser::hasCapability(backend_caps_, "SASL-IR")) {
    out = fmt::format("{} AUTHENTICATE {} {}\r\n", login_tag_, mechanism_,
                      sasl_.empty() ? std::string("=") : sasl_);
    sasl_sent_ = true;
  } else {
    out = fmt::format("{} AUTHENTICATE {}\r\n", login_tag_, mechanism_);
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

void Session::sendProxyHeader() {
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
  backend_->write(header);
}

void Session::enterRelay(std::size_t backend_consumed) {
  const Config& cfg = config_->config;
  state_ = SessionState::kRelay;
  wipeSecrets();
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
    relayFromClient(Chunk::copyOf(client_rest));
  }
  updateClientReading();
  maybeByeOnShutdown();
}

// ---------------------------------------------------------------------------
// Relay.

void Session::relayFromClient(Chunk chunk) {
  const auto now = host_.now();
  last_activity_ = now;
  bytes_in_ += chunk.size();
  host_.stats().bytes_from_clients.add(chunk.size());
  BackendStats* stats = backendStats();
  std::string_view view = chunk.view();
  std::size_t pos = 0;
  std::size_t forward_from = 0;
  constexpr std::size_t kUnknown = static_cast<std::size_t>(-1);
  std::size_t command_start = kUnknown;
  while (pos < view.size()) {
    if (command_framer_.atCommandStart()) {
      command_start = pos;
    }
    parser::FeedResult r = command_framer_.feed(view.substr(pos));
    pos += r.consumed;
    if (r.event.type == parser::CommandEventType::kNeedMore) {
      break;
    }
    if (r.event.type == parser::CommandEventType::kError && r.event.error.fatal) {
      // A literal that cannot be skipped: the stream cannot be
      // resynchronised, and a failed framer consumes nothing more.
      closeWithBye(fmt::format("* BYE {}\r\n", r.event.error.message),
                   parser::errorCodeName(r.event.error.code));
      return;
    }
    if (r.event.type != parser::CommandEventType::kCommand) {
      continue;  // literals, DONE, malformed lines: the backend answers them
    }
    ++commands_;
    CommandId command = commandId(r.event.name);
    if (command == CommandId::kCOMPRESS) {
      // Portico relays plain bytes; a compressed stream would blind the
      // framers. Refuse it here instead of passing it on.
      std::string tag(r.event.tag);
      if (command_start == kUnknown) {
        closeWithBye("* BYE [UNAVAILABLE] COMPRESS is not supported.\r\n", "compress refused");
        return;
      }
      if (command_start > forward_from) {
        stats->bytes_to_backend.add(command_start - forward_from);
        backend_->write(chunk.slice(forward_from, command_start - forward_from));
      }
      forward_from = pos;
      writeClient(fmt::format("{} NO [CANNOT] COMPRESS is not supported by this proxy.\r\n", tag));
      continue;
    }
    InFlight& f = inflight_.emplace_back();
    f.tag.assign(r.event.tag);
    f.command = command;
    f.idle = command == CommandId::kIDLE;
    f.sent = now;
    f.request_bytes = r.event.bytes;
    if (tracing()) {
      // Parameters: the head after "tag [UID ]NAME ".
      std::string_view head = r.event.head;
      for (int words = r.event.uid ? 3 : 2; words > 0 && !head.empty(); --words) {
        auto sp = head.find(' ');
        head = sp == std::string_view::npos ? std::string_view() : head.substr(sp + 1);
      }
      f.traced = true;
      f.name = r.event.uid ? "UID " + std::string(r.event.name) : std::string(r.event.name);
      f.parameters = logging::redactCommandParameters(r.event.name, head);
    }
    stats->commands_in_flight.add();
  }
  if (forward_from < view.size() && backend_ != nullptr) {
    std::size_t n = view.size() - forward_from;
    stats->bytes_to_backend.add(n);
    backend_->write(forward_from == 0 ? std::move(chunk) : chunk.slice(forward_from, n));
    if (backend_->queuedBytes() > config_->config.limits.write_high_watermark) {
      client_paused_ = true;
      updateClientReading();
    }
  }
}

void Session::relayFromBackend(Chunk chunk) {
  if (command_framer_.idling()) {
    last_activity_ = host_.now();  // keep-alives during IDLE keep the session
  }
  bytes_out_ += chunk.size();
  BackendStats* stats = backendStats();
  stats->bytes_from_backend.add(chunk.size());
  std::string_view view = chunk.view();
  std::size_t pos = 0;
  std::size_t forward_from = 0;
  constexpr std::size_t kUnknown = static_cast<std::size_t>(-1);
  std::size_t response_start = kUnknown;
  while (pos < view.size()) {
    if (response_framer_.atResponseStart()) {
      response_start = pos;
    }
    parser::ResponseFeedResult r = response_framer_.feed(view.substr(pos));
    pos += r.consumed;
    const parser::ResponseEvent& ev = r.event;
    if (ev.type == parser::ResponseEventType::kNeedMore) {
      break;
    }
    if (ev.type == parser::ResponseEventType::kError && ev.error.fatal) {
      // As for the client: nothing after an unskippable literal can be read.
      logging::log(logging::Level::kWarn, "session",
                   "id={:016x} backend {} sent an unreadable response ({}); client={} user={}", id_,
                   backend_name_, parser::errorCodeName(ev.error.code), client_address_, user_);
      closeWithBye("* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n",
                   "backend protocol error");
      return;
    }
    if (ev.type == parser::ResponseEventType::kTagged) {
      completeCommand(ev);
    } else if (!inflight_.empty()) {
      inflight_.front().response_bytes += ev.bytes;  // untagged data: the oldest command's
    }
    if (ev.type != parser::ResponseEventType::kUntagged &&
        ev.type != parser::ResponseEventType::kTagged) {
      continue;
    }
    if (ev.type == parser::ResponseEventType::kUntagged && ev.status == parser::Status::kBye) {
      logout_seen_ = true;  // the backend says goodbye itself: no second BYE
    }
    // Capability lists (untagged, or a [CAPABILITY ...] code in any status
    // response) lose COMPRESS: Portico relays plain bytes. Only these rare
    // lines are copied; everything else passes untouched.
    bool capability_list =
        startsWithNoCase(ev.head, "* CAPABILITY ") || startsWithNoCase(ev.code, "CAPABILITY ");
    if (capability_list && response_start != kUnknown &&
        (ev.head.find("COMPRESS=") != std::string_view::npos ||
         ev.head.find("compress=") != std::string_view::npos)) {
      if (response_start > forward_from) {
        host_.stats().bytes_to_clients.add(response_start - forward_from);
        client_->write(chunk.slice(forward_from, response_start - forward_from));
      }
      bytes_out_ -= pos - response_start;  // writeClient counts the edited line instead
      writeClient(parser::editCapabilities(view.substr(response_start, pos - response_start),
                                           {"COMPRESS="}, {}));
      forward_from = pos;
    }
  }
  if (forward_from < view.size() && client_ != nullptr) {
    std::size_t n = view.size() - forward_from;
    host_.stats().bytes_to_clients.add(n);
    client_->write(forward_from == 0 ? std::move(chunk) : chunk.slice(forward_from, n));
    if (backend_ != nullptr &&
        client_->queuedBytes() > config_->config.limits.write_high_watermark) {
      backend_paused_ = true;
      backend_->pauseReading();
    }
  }
  maybeByeOnShutdown();
}

void Session::completeCommand(const parser::ResponseEvent& ev) {
  auto it = std::find_if(inflight_.begin(), inflight_.end(),
                         [&ev](const InFlight& f) { return f.tag == ev.tag; });
  if (it == inflight_.end()) {
    return;  // a tag we did not see sent (e.g. inside a malformed line)
  }
  auto time = duration_cast<microseconds>(host_.now() - it->sent);
  BackendStats* stats = backendStats();
  if (it->idle) {
    stats->recordIdle(time);
  } else {
    stats->recordCommand(it->command, ev.status, time);
  }
  stats->commands_in_flight.sub();
  if (it->traced) {
    std::string_view result = ev.head.substr(std::min(ev.head.size(), ev.tag.size() + 1));
    traceRecord(it->name, it->parameters, fmt::format("R={};B={}", result, backend_name_),
                duration_cast<milliseconds>(time).count(), it->request_bytes,
                it->response_bytes + ev.bytes);
  }
  if (it->command == CommandId::kLOGOUT) {
    logout_seen_ = true;
  }
  if (it->command == CommandId::kAUTHENTICATE && command_framer_.authenticating()) {
    command_framer_.endAuthentication();
  }
  if (it->idle && command_framer_.idling()) {
    // IDLE answered before DONE (refused, say): no DONE follows, so the
    // client's next line is a command again.
    command_framer_.endIdle();
  }
  inflight_.erase(it);
}

void Session::maybeByeOnShutdown() {
  if (!shutdown_pending_ || state_ != SessionState::kRelay || client_ == nullptr) {
    return;
  }
  bool only_idle =
      std::all_of(inflight_.begin(), inflight_.end(), [](const InFlight& f) { return f.idle; });
  bool between_commands = command_framer_.atCommandStart() || command_framer_.idling();
  if (only_idle && between_commands) {
    closeWithBye(fmt::format("* BYE {}\r\n", shutdown_text_), shutdown_end_reason_);
  }
}

// ---------------------------------------------------------------------------
// Transport events.

void Session::onData(Transport* transport, Chunk chunk) {
  if (transport == client_) {
    if (state_ == SessionState::kRelay) {
      relayFromClient(std::move(chunk));
      return;
    }
    if (state_ == SessionState::kClosing) {
      return;
    }
    bytes_in_ += chunk.size();
    host_.stats().bytes_from_clients.add(chunk.size());
    client_pending_.append(chunk.data(), chunk.size());
    processPrelogin();
    return;
  }
  if (transport == backend_) {
    switch (state_) {
      case SessionState::kRelay:
        relayFromBackend(std::move(chunk));
        return;
      case SessionState::kBackendGreeting:
      case SessionState::kBackendStarttls:
      case SessionState::kBackendCapability:
      case SessionState::kBackendId:
      case SessionState::kBackendLogin:
        onBackendLoginData(std::move(chunk));
        return;
      default:
        return;
    }
  }
}

void Session::onDrained(Transport* transport) {
  if (transport == backend_ && client_paused_) {
    client_paused_ = false;
    updateClientReading();
  } else if (transport == client_ && backend_paused_ && backend_ != nullptr) {
    backend_paused_ = false;
    backend_->resumeReading();
  }
}

void Session::onClosed(Transport* transport, std::string_view reason) {
  if (transport == client_) {
    client_ = nullptr;
    if (end_reason_.empty()) {
      end_reason_.assign(reason);
    }
    state_ = SessionState::kClosing;
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
      case SessionState::kBackendStarttls:
      case SessionState::kBackendTlsHandshake:
      case SessionState::kBackendCapability:
      case SessionState::kBackendId:
      case SessionState::kBackendLogin:
        if (client_ == nullptr) {
          break;
        }
        if (!login_sent_) {
          connectNext();
        } else {
          failLogin(fmt::format("{} NO [UNAVAILABLE] Mailbox server failed during login.\r\n",
                                login_tag_),
                    false);
        }
        return;
      case SessionState::kRelay:
        if (client_ != nullptr) {
          if (logout_seen_) {
            closeWithBye("", "logout");
          } else {
            logging::log(logging::Level::kWarn, "session",
                         "id={:016x} backend {} closed the connection ({}); client={} user={}", id_,
                         backend_name_, reason, client_address_, user_);
            closeWithBye("* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n",
                         "backend closed");
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

void Session::requestBye(std::string_view text, std::string_view end_reason) {
  shutdown_pending_ = true;
  shutdown_text_.assign(text);
  shutdown_end_reason_.assign(end_reason);
  switch (state_) {
    case SessionState::kPrelogin:
    case SessionState::kAuthContinuation:
    case SessionState::kLoginDelay:
      closeWithBye(fmt::format("* BYE {}\r\n", text), end_reason);
      return;
    case SessionState::kRelay:
      maybeByeOnShutdown();
      return;
    default:
      return;  // a login in progress finishes first; enterRelay() checks again
  }
}

void Session::abort(std::string_view reason) {
  if (end_reason_.empty()) {
    end_reason_.assign(reason);
  }
  state_ = SessionState::kClosing;
  if (client_ != nullptr) {
    client_->close();
  }
  if (backend_ != nullptr) {
    backend_->close();
  }
}

bool Session::tracing() {
  SharedState& shared = host_.shared();
  std::uint64_t generation = shared.trace.generation();  // the one load when off
  if (generation != trace_generation_) {
    trace_generation_ = generation;
    trace_on_ = shared.trace.matches(normaliseUser(user_), client_sockaddr_);
  }
  return trace_on_ && shared.protocol_log.load(std::memory_order_relaxed) != nullptr;
}

void Session::traceRecord(std::string_view command, std::string_view parameters,
                          std::string_view context, std::int64_t duration_ms,
                          std::uint64_t request_bytes, std::uint64_t response_bytes) {
  logging::ProtocolRecord r;
  r.time_ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  r.session_id = id_;
  r.seq = trace_seq_++;
  std::string server;
  if (!backend_name_.empty()) {
    server = config_->config.backends[backend_index_].address.text();
  }
  r.server_address = server;
  r.client_address = client_address_;
  r.user = user_;
  r.duration_ms = duration_ms;
  r.request_bytes = request_bytes;
  r.response_bytes = response_bytes;
  r.command = command;
  r.parameters = parameters;
  r.context = context;
  std::string line;
  logging::formatRecord(r, line);
  host_.shared().protocol_log.load(std::memory_order_relaxed)->submit(host_.index(), line);
}

void Session::tracePrelogin(const parser::PreloginCommand& command, std::string_view bytes,
                            std::string_view result) {
  if (!tracing()) {
    return;
  }
  // Parameters: the first line after "tag NAME", redacted (LOGIN keeps the
  // user, AUTHENTICATE the mechanism).
  std::string_view line = bytes.substr(0, bytes.find_first_of("\r\n"));
  for (int words = 2; words > 0 && !line.empty(); --words) {
    auto sp = line.find(' ');
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  }
  traceRecord(command.name, logging::redactCommandParameters(command.name, line),
              fmt::format("R={}", result), 0, bytes.size(), 0);
}

void Session::kick() {
  logging::log(logging::Level::kInfo, "session", "id={:016x} kicked by operator; client={} user={}",
               id_, client_address_, user_);
  closeWithBye("* BYE [UNAVAILABLE] Session ended by the administrator.\r\n", "kicked");
}

SessionInfo Session::info(std::chrono::steady_clock::time_point now) const {
  SessionInfo out;
  out.id = id_;
  out.client = client_address_;
  out.user = user_;
  out.backend = logged_in_ ? backend_name_ : std::string();
  out.state = sessionStateName(state_);
  if (!inflight_.empty()) {
    out.command = commandName(inflight_.front().command);
    out.command_ms = duration_cast<milliseconds>(now - inflight_.front().sent).count();
  }
  out.commands_in_flight = inflight_.size();
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

void Session::closeWithBye(std::string_view bye_line, std::string_view reason) {
  if (end_reason_.empty()) {
    end_reason_.assign(reason);
  }
  writeClient(bye_line);
  state_ = SessionState::kClosing;
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
  bool reading = !client_paused_ &&
                 (state_ == SessionState::kPrelogin || state_ == SessionState::kAuthContinuation ||
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
    case SessionState::kPrelogin:
    case SessionState::kAuthContinuation:
      closeWithBye("* BYE Disconnected for inactivity during login.\r\n", "prelogin timeout");
      return;
    case SessionState::kLoginDelay: {
      state_ = SessionState::kPrelogin;
      std::string reply = std::move(delayed_reply_);
      delayed_reply_.clear();
      writeClient(reply);
      deadline_ = std::max(now + milliseconds(1), started_ + cfg.timeouts.prelogin);
      armTimer();
      updateClientReading();
      processPrelogin();
      return;
    }
    case SessionState::kConnecting:
      backendFailed("connect timeout");
      return;
    case SessionState::kBackendGreeting:
    case SessionState::kBackendStarttls:
    case SessionState::kBackendTlsHandshake:
    case SessionState::kBackendCapability:
    case SessionState::kBackendId:
    case SessionState::kBackendLogin:
      backendFailed("login timeout");
      return;
    case SessionState::kRelay:
      if (now - last_activity_ >= cfg.timeouts.idle) {
        closeWithBye("* BYE Disconnected for inactivity.\r\n", "idle timeout");
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
  wipe(password_);
  wipe(sasl_);
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
  if (in_stats_) {
    BackendStats* stats = backendStats();
    stats->sessions_current.sub();
    stats->commands_in_flight.sub(inflight_.size());
    in_stats_ = false;
  }
  if (tracing()) {
    traceRecord("Disconnect", "",
                fmt::format("reason={}", end_reason_.empty() ? "closed" : end_reason_),
                duration.count(), bytes_in_, bytes_out_);
  }
  logging::log(logging::Level::kInfo, "session",
               "session end id={:016x} client={} user={} backend={} duration_ms={} bytes_in={} "
               "bytes_out={} commands={} reason=\"{}\"",
               id_, client_address_, user_.empty() ? "-" : user_,
               logged_in_ ? backend_name_ : std::string("-"), duration.count(), bytes_in_,
               bytes_out_, commands_, end_reason_.empty() ? "closed" : end_reason_);
  host_.sessionEnded(this);  // deletes this session: nothing may follow
}

BackendStats* Session::backendStats() {
  return &host_.stats().backend(config_->stats_slot[backend_index_]);
}

}  // namespace portico::proxy
