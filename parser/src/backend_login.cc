// BackendLoginClient: the backend login as a state machine over bytes.
#include "portico/backend_login.h"

#include <netinet/in.h>

#include "portico/ascii.h"
#include "portico/imap_output.h"

namespace portico::parser {

namespace {

constexpr const char* kStateNames[] = {
#define PORTICO_NAME(name) #name,
    PORTICO_BACKEND_LOGIN_STATES(PORTICO_NAME)
#undef PORTICO_NAME
};
static_assert(sizeof(kStateNames) / sizeof(kStateNames[0]) ==
                  static_cast<std::size_t>(BackendLoginClient::State::kDone) + 1,
              "a name for every backend login state");

constexpr const char* kEventNames[] = {"NeedMore", "Untagged", "StartTls", "LoggedIn",
                                       "Refused",  "Failed",   "Step",     "Ready"};
static_assert(sizeof(kEventNames) / sizeof(kEventNames[0]) ==
                  static_cast<std::size_t>(BackendLoginEventType::kReady) + 1,
              "a name for every backend login event");

BackendLoginEvent event(BackendLoginEventType type, std::string_view line = {}) {
  BackendLoginEvent out;
  out.type = type;
  out.line = line;
  return out;
}

// A response line after its tag (or `*`): "NO [AUTHENTICATIONFAILED] ...".
std::string afterTag(std::string_view head) {
  const std::size_t space = head.find(' ');
  return std::string(space == std::string_view::npos ? std::string_view() : head.substr(space + 1));
}

// The capability list an untagged response carries, in a code or as
// `* CAPABILITY ...`; empty if none.
std::string_view capabilityList(const ResponseEvent& ev) {
  if (startsWithIgnoreCase(ev.code, "CAPABILITY ")) {
    return ev.code.substr(11);
  }
  if (startsWithIgnoreCase(ev.text, "CAPABILITY ")) {
    return ev.text.substr(11);
  }
  return {};
}

// LOGIN's arguments as a probe quotes them: anything but CR, LF and NUL
// (the probe refuses those before sending).
bool quotableAs8bit(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

}  // namespace

const char* backendLoginEventTypeName(BackendLoginEventType type) {
  return kEventNames[static_cast<std::size_t>(type)];
}

const char* BackendLoginClient::stateName(State state) {
  return kStateNames[static_cast<std::size_t>(state)];
}

BackendLoginClient::BackendLoginClient(BackendLoginParams params)
    : params_(std::move(params)), tag_count_(params_.tag_count) {}

BackendLoginClient::~BackendLoginClient() {
  wipeAll(output_);
}

void BackendLoginClient::clearOutput() {
  wipe(output_);
}

void BackendLoginClient::feed(std::string_view bytes) {
  if (pending_.size() + bytes.size() > kMaxBytes) {
    overflow_ = true;
    return;
  }
  pending_.append(bytes);
}

std::string_view BackendLoginClient::rest() const {
  return std::string_view(pending_).substr(parsed_);
}

BackendLoginEvent BackendLoginClient::failed(std::string why) {
  BackendLoginEvent out;
  out.type = BackendLoginEventType::kFailed;
  out.why = std::move(why);
  return out;
}

BackendLoginEvent BackendLoginClient::next() {
  if (overflow_) {
    return failed("too much data during login");
  }
  while (state_ != State::kDone && state_ != State::kTlsHandshake && parsed_ < pending_.size()) {
    ResponseFeedResult r = framer_.feed(std::string_view(pending_).substr(parsed_));
    parsed_ += r.consumed;
    if (r.event.type == ResponseEventType::kNeedMore) {
      break;
    }
    std::string_view line(pending_.data() + parsed_ - r.event.bytes,
                          static_cast<std::size_t>(r.event.bytes));
    BackendLoginEvent out = handle(r.event, line);
    if (out.type != BackendLoginEventType::kNeedMore) {
      return out;
    }
  }
  return event(BackendLoginEventType::kNeedMore);
}

BackendLoginEvent BackendLoginClient::handle(const ResponseEvent& ev, std::string_view line) {
  if (params_.profile == BackendLoginProfile::kProbe) {
    return handleProbe(ev, line);
  }
  if (ev.type == ResponseEventType::kError && ev.error.fatal) {
    // A failed framer consumes nothing more: give up on this backend.
    return failed("unreadable response '" + excerpt(ev.head) + "'");
  }
  switch (state_) {
    case State::kGreeting:
      if (ev.type != ResponseEventType::kUntagged || ev.status != Status::kOk) {
        return failed("unexpected greeting '" + excerpt(ev.head) + "'");
      }
      if (startsWithIgnoreCase(ev.code, "CAPABILITY ")) {
        caps_.assign(ev.code.substr(11));
      }
      if (params_.starttls) {
        send("STARTTLS", "P0TLS");
        state_ = State::kStarttls;
        return event(BackendLoginEventType::kNeedMore);
      }
      return afterCapabilities();
    case State::kStarttls:
      if (ev.type != ResponseEventType::kTagged || ev.tag != "P0TLS") {
        return event(BackendLoginEventType::kNeedMore);
      }
      if (ev.status != Status::kOk) {
        return failed("STARTTLS refused '" + excerpt(ev.head) + "'");
      }
      return startTlsAccepted();
    case State::kCapability:
      if (ev.type == ResponseEventType::kUntagged &&
          startsWithIgnoreCase(ev.head, "* CAPABILITY ")) {
        caps_.assign(ev.head.substr(13));
      } else if (ev.type == ResponseEventType::kTagged && ev.tag == "P0CAP") {
        return afterCapabilities();
      }
      return event(BackendLoginEventType::kNeedMore);
    case State::kId:
      if (ev.type == ResponseEventType::kTagged && ev.tag == kForwardIdTag) {
        sendLogin();  // a refused ID is not fatal: the login can go on
      }
      return event(BackendLoginEventType::kNeedMore);
    case State::kLogin:
      return handleLogin(ev, line);
    case State::kReady:  // a held connection must stay silent until used
      return failed("unexpected line while held '" + excerpt(ev.head) + "'");
    case State::kTlsHandshake:
    case State::kDone:
      break;
  }
  return event(BackendLoginEventType::kNeedMore);
}

BackendLoginEvent BackendLoginClient::handleLogin(const ResponseEvent& ev, std::string_view line) {
  switch (ev.type) {
    case ResponseEventType::kContinuation:
      if (params_.method == BackendLoginMethod::kAuthenticate && !sasl_sent_) {
        output_.append(params_.sasl.empty() ? std::string_view("=") : params_.sasl);
        output_.append("\r\n");
        sasl_sent_ = true;
      } else {
        // A SASL error challenge (XOAUTH2 sends one): answer empty to get
        // the final tagged NO.
        output_.append("\r\n");
      }
      return event(BackendLoginEventType::kNeedMore);
    case ResponseEventType::kUntagged:
      if (ev.status == Status::kBye) {
        return failed("BYE during login '" + excerpt(ev.head) + "'");
      }
      return event(BackendLoginEventType::kUntagged, line);
    case ResponseEventType::kTagged:
      if (ev.tag != params_.tag) {
        return event(BackendLoginEventType::kNeedMore);
      }
      state_ = State::kDone;
      return event(ev.status == Status::kOk ? BackendLoginEventType::kLoggedIn
                                            : BackendLoginEventType::kRefused,
                   line);
    default:
      return failed("unexpected line during login '" + excerpt(ev.head) + "'");
  }
}

void BackendLoginClient::tlsEstablished() {
  // Capabilities may differ under TLS, so ask again.
  tls_established_ = true;
  send("CAPABILITY", "P0CAP");
  state_ = State::kCapability;
}

void BackendLoginClient::resumeLogin(BackendLoginParams params) {
  if (state_ != State::kReady) {
    return;
  }
  params.hold_before_login = false;
  params_ = std::move(params);
  (void)afterCapabilities();
}

BackendLoginEvent BackendLoginClient::afterCapabilities() {
  if (params_.hold_before_login) {
    state_ = State::kReady;
  } else if (!params_.id_command.empty()) {
    output_.append(params_.id_command);
    state_ = State::kId;
  } else {
    sendLogin();
  }
  return event(BackendLoginEventType::kNeedMore);
}

BackendLoginEvent BackendLoginClient::startTlsAccepted() {
  // Anything after the OK was sent in plaintext: drop it, as the client
  // side does.
  plaintext_after_starttls_ = parsed_ < pending_.size();
  pending_.clear();
  parsed_ = 0;
  framer_.reset();
  caps_.clear();
  state_ = State::kTlsHandshake;
  return event(BackendLoginEventType::kStartTls);
}

void BackendLoginClient::send(std::string_view command, std::string_view session_tag) {
  if (params_.profile == BackendLoginProfile::kProbe) {
    tag_ = params_.tag + std::to_string(++tag_count_);
  } else {
    tag_.assign(session_tag);
  }
  output_.append(tag_).append(" ").append(command).append("\r\n");
}

BackendLoginEvent BackendLoginClient::handleProbe(const ResponseEvent& ev, std::string_view line) {
  switch (ev.type) {
    case ResponseEventType::kNeedMore:
      return event(BackendLoginEventType::kNeedMore);
    case ResponseEventType::kError:
      return failed("malformed response: " + std::string(ev.error.message));
    case ResponseEventType::kContinuation:
      return failed("unexpected continuation request");
    case ResponseEventType::kTagged:
      if (state_ == State::kGreeting || ev.tag != tag_) {
        return failed("unexpected tagged response: " + std::string(ev.head));
      }
      if (ev.status != Status::kOk) {
        state_ = State::kDone;
        return event(BackendLoginEventType::kRefused, line);
      }
      return probeTagged(line);
    case ResponseEventType::kUntagged:
      break;
  }
  if (std::string_view list = capabilityList(ev); !list.empty()) {
    caps_.assign(list);
  }
  if (state_ == State::kGreeting) {
    if (ev.status != Status::kOk && ev.status != Status::kPreauth) {
      return failed("unexpected greeting: " + afterTag(ev.head));
    }
    preauth_ = ev.status == Status::kPreauth;
    send("CAPABILITY", {});
    state_ = State::kCapability;
    return event(BackendLoginEventType::kStep, line);
  }
  if (ev.status == Status::kBye) {
    return failed("server said " + afterTag(ev.head));
  }
  return event(
      state_ == State::kLogin ? BackendLoginEventType::kUntagged : BackendLoginEventType::kNeedMore,
      line);
}

BackendLoginEvent BackendLoginClient::probeTagged(std::string_view line) {
  switch (state_) {
    case State::kStarttls:
      return startTlsAccepted();
    case State::kCapability:
      if (params_.starttls && !tls_established_) {
        send("STARTTLS", {});
        state_ = State::kStarttls;
        return event(BackendLoginEventType::kStep, line);
      }
      if (params_.method == BackendLoginMethod::kNone || preauth_) {
        state_ = State::kDone;
        return event(BackendLoginEventType::kReady, line);
      }
      sendLogin();
      return event(BackendLoginEventType::kStep, line);
    default:  // kLogin
      state_ = State::kDone;
      return event(BackendLoginEventType::kLoggedIn, line);
  }
}

void BackendLoginClient::sendLogin() {
  // output_ is reserved big enough up front and no temporaries hold the
  // secret except `plain`/`encoded`, each wiped: no reallocated copy is
  // left behind.
  const BackendLoginParams& p = params_;
  output_.reserve(output_.size() + p.tag.size() + p.mechanism.size() +
                  2 * (p.user.size() + p.password.size() + p.sasl.size()) + 96);
  state_ = State::kLogin;
  if (p.profile == BackendLoginProfile::kProbe) {
    tag_ = p.tag + std::to_string(++tag_count_);
  } else {
    tag_ = p.tag;
  }
  if (p.method == BackendLoginMethod::kLogin) {
    sendLoginAsLogin();
  } else if (hasCapability(caps_, "SASL-IR")) {
    output_.append(tag_).append(" AUTHENTICATE ").append(p.mechanism).push_back(' ');
    output_.append(p.sasl.empty() ? std::string_view("=") : p.sasl).append("\r\n");
    sasl_sent_ = true;
  } else {
    output_.append(tag_).append(" AUTHENTICATE ").append(p.mechanism).append("\r\n");
  }
}

void BackendLoginClient::sendLoginAsLogin() {
  const BackendLoginParams& p = params_;
  const bool quote = p.profile == BackendLoginProfile::kProbe
                         ? quotableAs8bit(p.user) && quotableAs8bit(p.password)
                         : quotable(p.user) && quotable(p.password);
  if (quote) {
    output_.append(tag_).append(" LOGIN ");
    appendQuoted(output_, p.user);
    output_.push_back(' ');
    appendQuoted(output_, p.password);
    output_.append("\r\n");
  } else if (hasCapability(caps_, "AUTH=PLAIN") && hasCapability(caps_, "SASL-IR")) {
    std::string plain;
    plain.reserve(p.user.size() + p.password.size() + 2);
    plain.push_back('\0');
    plain.append(p.user).push_back('\0');
    plain.append(p.password);
    std::string encoded = encodeBase64(plain);
    output_.append(tag_).append(" AUTHENTICATE PLAIN ").append(encoded).append("\r\n");
    wipe(plain);
    wipe(encoded);
  } else {
    // Unquotable bytes and no SASL-IR: LOGIN with non-synchronizing
    // literals needs LITERAL+.
    output_.append(tag_).append(" LOGIN {").append(std::to_string(p.user.size()));
    output_.append("+}\r\n").append(p.user).append(" {").append(std::to_string(p.password.size()));
    output_.append("+}\r\n").append(p.password).append("\r\n");
  }
}

std::string proxyV2Header(const sockaddr_storage& src, const sockaddr_storage& dst) {
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

}  // namespace portico::parser
