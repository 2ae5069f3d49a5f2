// PreloginDialogue: the commands a client may send before login, answered
// by Portico itself, and the client's login read for the session.
#include "prelogin.h"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

#include "portico/ascii.h"
#include "portico/proxy.h"
#include "session_internal.h"

namespace portico::proxy {

using namespace session_detail;  // NOLINT: the session's own helpers

namespace {

// Wipes a login's secrets and forgets the rest.
void wipeLogin(LoginRequest& login) {
  wipeAll(login.password);
  wipeAll(login.sasl);
  login.tag.clear();
  login.user.clear();
  login.mechanism.clear();
}

}  // namespace

PreloginDialogue::PreloginDialogue(PreloginOwner& owner, const RuntimeConfig& config,
                                   parser::CommandFramer& framer)
    : owner_(owner), config_(config), framer_(framer) {}

PreloginDialogue::~PreloginDialogue() {
  // What was read before login, spare capacity included.
  wipeAll(client_pending_);
  wipeLogin(login_);
}

void PreloginDialogue::setListener(TlsMode mode, bool require_tls,
                                   std::shared_ptr<const ServerTlsContext> tls) {
  listener_tls_ = mode;
  require_tls_ = require_tls;
  listener_tls_context_ = std::move(tls);
}

std::string PreloginDialogue::capabilities() const {
  if (listener_tls_ != TlsMode::kStarttls || owner_.clientTls()) {
    return config_.capabilities;
  }
  // Plaintext on a STARTTLS listener: offer STARTTLS; with require_tls,
  // hide every AUTH= mechanism and say LOGINDISABLED (RFC 9051 6.2).
  std::string out;
  for (std::string_view cap : parser::parseCapabilities(config_.capabilities)) {
    if (require_tls_ && startsWithIgnoreCase(cap, "AUTH=")) {
      continue;
    }
    out.append(out.empty() ? "" : " ").append(cap);
    if (startsWithIgnoreCase(cap, "IMAP4REV1")) {
      out.append(" STARTTLS");
      if (require_tls_) {
        out.append(" LOGINDISABLED");
      }
    }
  }
  return out;
}

void PreloginDialogue::append(std::string_view bytes) {
  appendWiping(client_pending_, bytes);  // may hold a password
}

bool PreloginDialogue::holdingTooMuch() const {
  return client_pending_.size() > preloginMaxCommand(config_.config.limits, framer_.currentName());
}

std::string PreloginDialogue::takePending() {
  std::string out = std::move(client_pending_);
  client_pending_ = std::string();
  pending_parsed_ = 0;
  return out;
}

std::string PreloginDialogue::takeHeldReply() {
  std::string reply = std::move(delayed_reply_);
  delayed_reply_.clear();
  return reply;
}

void PreloginDialogue::process() {
  if (processing_) {
    process_again_ = true;
    return;
  }
  processing_ = true;
  do {
    process_again_ = false;
    processOnce();
  } while (process_again_);
  processing_ = false;
}

// Drops the bytes the framer has consumed; `wipe_first` zeroes them first
// (they may hold a password) so no copy stays in the spare capacity.
void PreloginDialogue::dropConsumed(bool wipe_first) {
  if (wipe_first) {
    std::fill_n(client_pending_.begin(), pending_parsed_, '\0');
  }
  client_pending_.erase(0, pending_parsed_);
  pending_parsed_ = 0;
}

// One SASL response line; read here rather than by the framer so the
// payload never sits in the framer's head buffer. False: no whole line yet.
bool PreloginDialogue::readSaslLine() {
  auto lf = client_pending_.find('\n');
  if (lf == std::string::npos) {
    if (client_pending_.size() > config_.config.limits.prelogin_max_line) {
      owner_.closeWithBye("* BYE SASL response too long\r\n", EndReason::kSaslTooLong);
    }
    return false;
  }
  std::string line = client_pending_.substr(0, lf);
  if (!line.empty() && line.back() == '\r') {
    line.pop_back();
  }
  client_pending_.erase(0, lf + 1);
  handleAuthLine(line);
  wipe(line);
  return true;
}

void PreloginDialogue::processOnce() {
  const Limits& limits = config_.config.limits;
  while (owner_.dialogueOpen()) {
    if (awaiting_sasl_) {
      if (!readSaslLine()) {
        return;
      }
      continue;
    }
    if (pending_parsed_ >= client_pending_.size()) {
      return;
    }
    std::string_view rest(client_pending_.data() + pending_parsed_,
                          client_pending_.size() - pending_parsed_);
    parser::FeedResult r = framer_.feed(rest);
    pending_parsed_ += r.consumed;
    const parser::CommandEvent& ev = r.event;
    switch (ev.type) {
      case parser::CommandEventType::kNeedMore:
        if (client_pending_.size() > preloginMaxCommand(limits, framer_.currentName())) {
          owner_.writeClient("* BAD Command too long\r\n");
          owner_.closeWithBye("* BYE Command too long\r\n", EndReason::kCommandTooLong);
        }
        return;
      case parser::CommandEventType::kLiteral:
        if (parser::isSync(ev.literal_kind) && !refuseLiteral(ev)) {
          owner_.writeClient("+ Ready for literal data\r\n");
        }
        break;
      case parser::CommandEventType::kCommand: {
        // Before login Portico answers every command itself, and reads
        // AUTHENTICATE's SASL lines itself: whatever it answers (a refusal
        // above all), the client's next line is a command again, not DONE
        // or a SASL line.
        framer_.returnToCommandMode();
        std::size_t begin = pending_parsed_ - static_cast<std::size_t>(ev.bytes);
        std::string command = client_pending_.substr(begin, static_cast<std::size_t>(ev.bytes));
        dropConsumed(true);
        handleCommand(command);
        wipe(command);
        break;
      }
      case parser::CommandEventType::kAuthLine:
      case parser::CommandEventType::kIdleDone:
        // Not reachable before login: the framer is put back in command mode
        // after every command. Drop what was consumed.
        dropConsumed(false);
        break;
      case parser::CommandEventType::kError: {
        std::string tag = ev.tag.empty() ? std::string("*") : std::string(ev.tag);
        dropConsumed(false);
        owner_.stats().prelogin_bad_commands.add();
        if (ev.error.fatal || ev.error.code == parser::ErrorCode::kLineTooLong) {
          // The rest of the stream cannot be trusted (or is not worth
          // reading before login): answer, then end the session.
          owner_.writeClient(fmt::format("{} BAD {}\r\n", tag, ev.error.message));
          owner_.closeWithBye(fmt::format("* BYE {}\r\n", ev.error.message),
                              EndReason::kProtocolError, parser::errorCodeName(ev.error.code));
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
bool PreloginDialogue::refuseLiteral(const parser::CommandEvent& ev) {
  const std::string tag(ev.tag);
  const std::string_view name = ev.uid ? std::string_view() : ev.name;
  std::string no;
  const char* bad = nullptr;
  if (name == "LOGIN") {
    if (loginNeedsTls()) {
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
  framer_.returnToCommandMode();
  dropConsumed(true);  // may hold a user name
  if (!no.empty()) {
    owner_.writeClient(no);
    return true;
  }
  owner_.stats().prelogin_bad_commands.add();
  badCommand(tag, bad);
  return true;
}

std::string PreloginDialogue::privacyRequired(std::string_view tag) {
  return fmt::format("{} NO [PRIVACYREQUIRED] Use STARTTLS before logging in.\r\n", tag);
}

bool PreloginDialogue::loginNeedsTls() const {
  return require_tls_ && !owner_.clientTls();
}

bool PreloginDialogue::refusedUntilTls(std::string_view tag) {
  if (!loginNeedsTls()) {
    return false;
  }
  owner_.writeClient(privacyRequired(tag));
  return true;
}

void PreloginDialogue::badCommand(std::string_view tag, std::string_view message) {
  owner_.writeClient(fmt::format("{} BAD {}\r\n", tag, message));
  if (++bad_in_row_ >= config_.config.limits.max_bad_commands) {
    owner_.closeWithBye("* BYE Too many invalid commands\r\n", EndReason::kTooManyInvalidCommands);
  }
}

void PreloginDialogue::handleCommand(std::string_view bytes) {
  parser::PreloginResult result =
      parser::parsePrelogin(bytes, preloginLimits(config_.config.limits));
  parser::PreloginCommand& cmd = result.command;
  const std::string tag = cmd.tag.empty() ? std::string("*") : cmd.tag;
  if (!result.ok) {
    // Arguments of a command that did not parse are never logged: a
    // mistyped LOGIN could carry a password.
    owner_.notifyPrelogin(cmd, std::string_view(), std::string("BAD ") + result.error.message);
    owner_.stats().prelogin_bad_commands.add();
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
      owner_.writeClient(fmt::format("* CAPABILITY {}\r\n{} OK Pre-login capabilities listed.\r\n",
                                     capabilities(), tag));
      owner_.notifyPrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kNoop:
      owner_.writeClient(fmt::format("{} OK NOOP completed.\r\n", tag));
      owner_.notifyPrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kLogout:
      owner_.writeClient(fmt::format("* BYE Logging out\r\n{} OK Logout completed.\r\n", tag));
      owner_.notifyPrelogin(cmd, bytes, "OK");
      owner_.closeWithBye("", EndReason::kClientLogout);
      return;
    case parser::Verb::kId:
      client_id_ = std::move(cmd.id);
      owner_.writeClient(
          fmt::format("* ID (\"name\" \"Portico\" \"version\" \"{}\")\r\n{} OK ID completed.\r\n",
                      version(), tag));
      owner_.notifyPrelogin(cmd, bytes, "OK");
      return;
    case parser::Verb::kStarttls:
      handleStarttls(cmd, bytes);
      return;
    case parser::Verb::kLogin:
      if (!refusedUntilTls(tag)) {
        handleLogin(cmd, bytes);
      }
      return;
    case parser::Verb::kAuthenticate:
      if (!refusedUntilTls(tag)) {
        handleAuthenticate(cmd, bytes);
      }
      return;
    case parser::Verb::kOther:
      badCommand(tag, "Command not allowed before login");
      return;
  }
}

void PreloginDialogue::handleStarttls(const parser::PreloginCommand& cmd, std::string_view bytes) {
  const std::string tag = cmd.tag.empty() ? std::string("*") : cmd.tag;
  const bool tls = owner_.clientTls();
  owner_.notifyPrelogin(cmd, bytes, listener_tls_ == TlsMode::kStarttls && !tls ? "OK" : "BAD");
  if (listener_tls_ != TlsMode::kStarttls || tls) {
    owner_.writeClient(
        fmt::format("{} BAD {}\r\n", tag,
                    tls ? "TLS is already active." : "STARTTLS is not available on this port."));
    return;
  }
  owner_.writeClient(fmt::format("{} OK Begin TLS negotiation now.\r\n", tag));
  // Bytes pipelined after STARTTLS in plaintext are dropped, never run after
  // the handshake (the CVE-2011-0411 class of injection).
  wipe(client_pending_);
  pending_parsed_ = 0;
  framer_.reset();
  owner_.upgradeClientToTls(listener_tls_context_);
}

void PreloginDialogue::handleLogin(parser::PreloginCommand& cmd, std::string_view bytes) {
  wipeLogin(login_);
  login_.kind = LoginRequest::Kind::kLogin;
  login_.tag = cmd.tag;
  owner_.notifyLoginCommand(cmd, bytes);
  login_.user = std::move(cmd.user);
  login_.password = std::move(cmd.password);
  wipe(cmd.password);
  handOverLogin();
}

void PreloginDialogue::handleAuthenticate(parser::PreloginCommand& cmd, std::string_view bytes) {
  const std::string tag = cmd.tag.empty() ? std::string("*") : cmd.tag;
  if (!isSupportedMechanism(cmd.mechanism)) {
    owner_.writeClient(fmt::format("{} NO Unsupported authentication mechanism.\r\n", tag));
    return;
  }
  wipeLogin(login_);
  login_.tag = cmd.tag;
  login_.mechanism = cmd.mechanism;
  owner_.notifyLoginCommand(cmd, bytes);
  if (cmd.initial_response) {
    beginAuthenticate(*cmd.initial_response);
    wipe(*cmd.initial_response);
  } else {
    owner_.writeClient("+ \r\n");
    awaiting_sasl_ = true;
  }
}

void PreloginDialogue::handleAuthLine(std::string_view line) {
  awaiting_sasl_ = false;
  if (line == "*") {
    owner_.writeClient(fmt::format("{} BAD Authentication cancelled.\r\n", login_.tag));
    return;
  }
  beginAuthenticate(line);
}

void PreloginDialogue::beginAuthenticate(std::string_view initial_response) {
  std::optional<std::string> decoded = parser::decodeBase64(initial_response);
  if (!decoded) {
    owner_.writeClient(fmt::format("{} BAD Invalid base64 in SASL response.\r\n", login_.tag));
    return;
  }
  std::optional<std::string> user = parser::saslUser(login_.mechanism, *decoded);
  wipe(*decoded);
  if (!user || user->empty()) {
    owner_.refuseLogin(
        login_.tag,
        fmt::format("{} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", login_.tag));
    return;
  }
  login_.kind = LoginRequest::Kind::kAuthenticate;
  login_.user = std::move(*user);
  login_.sasl.assign(initial_response);
  handOverLogin();
}

void PreloginDialogue::handOverLogin() {
  owner_.startLogin(std::move(login_));
  wipeLogin(login_);  // what a move leaves behind (a short string's bytes)
}

}  // namespace portico::proxy
