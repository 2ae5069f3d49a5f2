#include "imap_probe.h"
#include "portico/ascii.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <utility>

#include <fmt/format.h>

namespace portico::health {
namespace {

constexpr std::size_t kMaxTraceText = 200;  // server text kept per trace line
constexpr std::string_view kMask = "*****";

// An IMAP quoted string; nullopt if the text cannot be one (CR, LF, NUL).
std::optional<std::string> quoted(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (char c : text) {
    if (c == '\r' || c == '\n' || c == '\0') {
      return std::nullopt;
    }
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

// Whether LOGIN can carry the text as a quoted string (quoted() would).
bool quotable(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// A response's first line, without its line end.
std::string_view headOf(std::string_view line) {
  return line.substr(0, line.find_first_of("\r\n"));
}

// The response line after its tag (or `*`): "NO [AUTHENTICATIONFAILED] ...".
std::string_view afterTag(std::string_view head) {
  const std::size_t space = head.find(' ');
  return space == std::string_view::npos ? std::string_view() : head.substr(space + 1);
}

// ... and after its status: "[AUTHENTICATIONFAILED] Invalid credentials".
std::string_view afterStatus(std::string_view head) {
  std::string_view rest = afterTag(head);
  const std::size_t space = rest.find(' ');
  return space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
}

// Its status word, upper case: "OK", "PREAUTH", "NO".
std::string statusWord(std::string_view head) {
  std::string_view rest = afterTag(head);
  std::string word(rest.substr(0, rest.find(' ')));
  for (char& c : word) {
    c = asciiUpper(c);
  }
  return word;
}

}  // namespace

std::string bareHost(std::string_view host) {
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::string(host);
}

struct ImapProbe::WriteRequest {
  uv_write_t req{};
  std::string bytes;
};

ImapProbe* ImapProbe::start(uv_loop_t* loop, ImapProbeSpec spec, Done done) {
  auto* probe = new ImapProbe(loop, std::move(spec), std::move(done));
  probe->begin();
  return probe;
}

ImapProbe::ImapProbe(uv_loop_t* loop, ImapProbeSpec spec, Done done)
    : loop_(loop), spec_(std::move(spec)), done_(std::move(done)) {}

ImapProbe::~ImapProbe() {
  freeTls();
  OPENSSL_cleanse(spec_.password.data(), spec_.password.size());
}

void ImapProbe::begin() {
  result_.probe = spec_.probe;
  result_.health_set = spec_.health_set;
  result_.target = spec_.target;
  result_.start = std::chrono::system_clock::now();
  start_ns_ = uv_hrtime();
  uv_timer_init(loop_, &deadline_);
  uv_timer_init(loop_, &retry_timer_);
  deadline_.data = this;
  retry_timer_.data = this;
  timers_open_ = 2;
  uv_timer_start(&deadline_, &ImapProbe::onDeadline,
                 static_cast<std::uint64_t>(std::max<long long>(0, spec_.timeout.count())), 0);
  phase_ = Phase::kRunning;
  startAttempt();
}

void ImapProbe::startAttempt() {
  framer_.reset();
  saw_bye_ = false;
  parser::BackendLoginParams login;
  login.profile = parser::BackendLoginProfile::kProbe;
  login.method =
      spec_.login ? parser::BackendLoginMethod::kLogin : parser::BackendLoginMethod::kNone;
  login.tag = "p";
  login.tag_count = tag_counter_;  // tags go on counting across attempts
  login.user = spec_.user;
  login.password = spec_.password;
  login.starttls = spec_.tls.mode == ProbeTls::kStartTls;
  login_ = std::make_unique<parser::BackendLoginClient>(std::move(login));
  freeTls();
  tag_.clear();
  command_trace_.clear();
  if (attempt_ > 0) {
    result_.trace.push_back(fmt::format("retry {} of {}", attempt_, spec_.retries));
  }
  if (spec_.tls.mode != ProbeTls::kNone) {
    // A trust store that cannot be loaded fails before connecting; no retry
    // would help.
    if (Status created = createTls(); !created.ok()) {
      startStep(ProbeStep::kTls);
      result_.trace.push_back("tls failed: " + created.message());
      result_.failed_step = ProbeStep::kTls;
      finish(ResultType::kFailed, created.message());
      return;
    }
  }
  startStep(ProbeStep::kConnect);
  sockaddr_storage address{};
  const std::string host = bareHost(spec_.endpoint.host);
  const bool v6 = spec_.endpoint.ipv6 || host.find(':') != std::string::npos;
  int rc =
      v6 ? uv_ip6_addr(host.c_str(), spec_.endpoint.port, reinterpret_cast<sockaddr_in6*>(&address))
         : uv_ip4_addr(host.c_str(), spec_.endpoint.port, reinterpret_cast<sockaddr_in*>(&address));
  if (rc != 0) {
    const std::string error = fmt::format("bad address \"{}\"", spec_.endpoint.host);
    result_.trace.push_back("connect " + error);
    result_.failed_step = ProbeStep::kConnect;
    finish(ResultType::kFailed, error);
    return;
  }
  uv_tcp_init(loop_, &tcp_);
  // As the proxy's connections: no Nagle delay in the measured latency
  // (TLS sends the handshake's last flight and the first command apart).
  uv_tcp_nodelay(&tcp_, 1);
  tcp_.data = this;
  tcp_open_ = true;
  connect_req_.data = this;
  rc = uv_tcp_connect(&connect_req_, &tcp_, reinterpret_cast<const sockaddr*>(&address),
                      &ImapProbe::onConnect);
  if (rc != 0) {
    attemptFailed(uv_strerror(rc));
  }
}

void ImapProbe::startStep(ProbeStep step) {
  step_ = step;
  step_start_ns_ = uv_hrtime();
}

std::string ImapProbe::stepLabel() const {
  switch (step_) {
    case ProbeStep::kConnect:
      return fmt::format("connect {}:{}", spec_.endpoint.host, spec_.endpoint.port);
    case ProbeStep::kTls:
      // `STARTTLS` for the command, `tls` for the handshake.
      return command_trace_.empty() ? std::string(probeStepName(step_)) : command_trace_;
    case ProbeStep::kGreeting:
    case ProbeStep::kDone:
      return probeStepName(step_);
    default:
      return command_trace_;
  }
}

void ImapProbe::traceStep(std::string_view outcome, std::string_view detail) {
  std::string line = fmt::format("{} {} {:.2f}ms", stepLabel(), outcome, stepMs());
  if (!detail.empty()) {
    std::string text = mask(detail);
    if (text.size() > kMaxTraceText) {
      text.resize(kMaxTraceText);
      text += "...";
    }
    line += fmt::format(" \"{}\"", text);
  }
  result_.trace.push_back(std::move(line));
}

void ImapProbe::onConnect(uv_connect_t* req, int status) {
  auto* probe = static_cast<ImapProbe*>(req->data);
  if (status == UV_ECANCELED || probe->phase_ != Phase::kRunning) {
    return;
  }
  if (status < 0) {
    probe->attemptFailed(uv_strerror(status));
    return;
  }
  probe->traceStep("ok", "");
  const bool implicit = probe->spec_.tls.mode == ProbeTls::kImplicit;
  probe->startStep(implicit ? ProbeStep::kTls : ProbeStep::kGreeting);
  const int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&probe->tcp_), &ImapProbe::onAlloc,
                               &ImapProbe::onRead);
  if (rc != 0) {
    probe->attemptFailed(fmt::format("read failed: {}", uv_strerror(rc)));
    return;
  }
  if (!probe->spec_.preamble.empty()) {
    probe->writeRaw(probe->spec_.preamble);
  }
  if (implicit) {
    probe->startHandshake();
  }
}

void ImapProbe::onAlloc(uv_handle_t* handle, std::size_t /*suggested*/, uv_buf_t* buf) {
  auto* probe = static_cast<ImapProbe*>(handle->data);
  *buf = uv_buf_init(probe->read_buffer_, sizeof(probe->read_buffer_));
}

void ImapProbe::onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* probe = static_cast<ImapProbe*>(stream->data);
  if (probe->phase_ != Phase::kRunning || nread == 0) {
    return;
  }
  if (nread > 0) {
    probe->receivedBytes(std::string_view(buf->base, static_cast<std::size_t>(nread)));
    return;
  }
  if (nread == UV_EOF) {
    probe->peerClosed();
    return;
  }
  probe->attemptFailed(fmt::format("read failed: {}", uv_strerror(static_cast<int>(nread))));
}

void ImapProbe::peerClosed() {
  if (step_ == ProbeStep::kLogout && saw_bye_) {
    // Some servers close right after `* BYE`, before the tagged OK.
    traceStep("closed after BYE", "");
    finish(ResultType::kSucceeded, "");
    return;
  }
  attemptFailed("connection closed by the server");
}

void ImapProbe::receivedBytes(std::string_view bytes) {
  if (tls_ == nullptr) {
    feedPlaintext(bytes);
  } else {
    receivedCiphertext(bytes);
  }
}

void ImapProbe::feedPlaintext(std::string_view bytes) {
  if (login_ != nullptr) {
    feedLogin(bytes);
    return;
  }
  while (phase_ == Phase::kRunning && !bytes.empty()) {
    const parser::ResponseFeedResult fed = framer_.feed(bytes);
    bytes.remove_prefix(fed.consumed);
    if (fed.event.type != parser::ResponseEventType::kNeedMore) {
      handleResponse(fed.event);
    } else if (fed.consumed == 0) {
      break;
    }
  }
}

void ImapProbe::feedLogin(std::string_view bytes) {
  login_->feed(bytes);
  while (phase_ == Phase::kRunning && login_ != nullptr) {
    if (!handleLoginEvent(login_->next())) {
      return;
    }
  }
}

// Returns whether the client may have more events.
bool ImapProbe::handleLoginEvent(const parser::BackendLoginEvent& event) {
  using Type = parser::BackendLoginEventType;
  switch (event.type) {
    case Type::kNeedMore:
      return false;
    case Type::kUntagged:
      return true;
    case Type::kStep:
      loginStepAnswered(event.line);
      return true;
    case Type::kStartTls: {
      traceStep("OK", "");
      const bool injected = login_->plaintextAfterStartTls();
      startHandshake();
      if (injected && phase_ == Phase::kRunning) {
        // Bytes after the STARTTLS OK in the same plaintext read were not
        // protected and could be injected.
        attemptFailed("the server sent plaintext after its STARTTLS response");
      }
      return false;
    }
    case Type::kRefused: {
      const std::string_view head = headOf(event.line);
      const std::string status = statusWord(head);
      traceStep(status, afterStatus(head));
      failStep(fmt::format("{} {}", status, afterStatus(head)));
      return false;
    }
    case Type::kFailed:
      attemptFailed(event.why);
      return false;
    case Type::kLoggedIn:
    case Type::kReady:
      traceStep("OK", "");
      loggedIn(event.type == Type::kReady);
      return false;
  }
  return false;
}

void ImapProbe::loginStepAnswered(std::string_view line) {
  if (step_ == ProbeStep::kGreeting) {
    const std::string_view head = headOf(line);
    traceStep(statusWord(head), afterStatus(head));
  } else {
    traceStep("OK", "");
  }
  startQueuedStep();
}

void ImapProbe::startQueuedStep() {
  using State = parser::BackendLoginClient::State;
  switch (login_->state()) {
    case State::kCapability:
      startStep(ProbeStep::kCapability);
      command_trace_ = "CAPABILITY";
      break;
    case State::kStarttls:
      startStep(ProbeStep::kTls);
      command_trace_ = "STARTTLS";
      break;
    case State::kLogin:
      startStep(ProbeStep::kLogin);
      command_trace_ = fmt::format("LOGIN {} {}", spec_.user, kMask);
      break;
    default:
      break;
  }
  if (vetoQueuedStep()) {
    login_->clearOutput();  // wipes a LOGIN line never sent
    return;
  }
  flushLogin();
}

// Whether the command the client queued must not go out; if so, the
// attempt has ended.
bool ImapProbe::vetoQueuedStep() {
  using State = parser::BackendLoginClient::State;
  const std::string& capabilities = login_->capabilities();
  if (login_->state() == State::kStarttls) {
    if (login_->preauth()) {
      traceStep("not sent", "");
      failStep("PREAUTH greeting: STARTTLS is not allowed once authenticated");
      return true;
    }
    if (!parser::hasCapability(capabilities, "STARTTLS")) {
      traceStep("not sent", "");
      failStep("the server does not advertise STARTTLS");
      return true;
    }
  } else if (login_->state() == State::kLogin) {
    if (parser::hasCapability(capabilities, "LOGINDISABLED")) {
      traceStep("not sent", "");
      failStep("the server advertises LOGINDISABLED (LOGIN needs TLS)");
      return true;
    }
    if (!quotable(spec_.user) || !quotable(spec_.password)) {
      traceStep("not sent", "");
      result_.failed_step = ProbeStep::kLogin;
      finish(ResultType::kFailed, "the probe user or password holds CR, LF or NUL");
      return true;
    }
  }
  return false;
}

void ImapProbe::flushLogin() {
  if (!login_->output().empty()) {
    sendBytes(login_->output());  // a copy, wiped once written
  }
  login_->clearOutput();
}

// The login is done (or, `ready`, not asked for or PREAUTH): SELECT and
// LOGOUT follow on this side.
void ImapProbe::loggedIn(bool ready) {
  tag_counter_ = login_->tagCount();
  const std::string rest(login_->rest());
  login_.reset();
  framer_.reset();
  ProbeStep next = ProbeStep::kLogout;
  if (ready && spec_.login && spec_.select) {
    result_.trace.push_back("LOGIN skipped: PREAUTH greeting");
    next = ProbeStep::kSelect;
  } else if (!ready && spec_.select) {
    next = ProbeStep::kSelect;
  }
  startStep(next);
  if (next == ProbeStep::kSelect) {
    sendCommand("SELECT INBOX", "SELECT INBOX");
  } else {
    sendCommand("LOGOUT", "LOGOUT");
  }
  if (!rest.empty()) {
    feedPlaintext(rest);
  }
}

void ImapProbe::handleResponse(const parser::ResponseEvent& event) {
  using parser::ResponseEventType;
  using parser::Status;
  switch (event.type) {
    case ResponseEventType::kNeedMore:
      return;
    case ResponseEventType::kError:
      attemptFailed(fmt::format("malformed response: {}", event.error.message));
      return;
    case ResponseEventType::kContinuation:
      attemptFailed("unexpected continuation request");
      return;
    case ResponseEventType::kUntagged:
      if (event.status == Status::kBye) {
        saw_bye_ = true;
        if (step_ != ProbeStep::kLogout) {
          attemptFailed(fmt::format("server said {}", afterTag(event.head)));
        }
      }
      return;
    case ResponseEventType::kTagged:
      if (event.tag != tag_) {
        attemptFailed(fmt::format("unexpected tagged response: {}", event.head));
      } else if (event.status == Status::kOk) {
        traceStep("OK", "");
        nextCommand();
      } else {
        const std::string_view status = parser::statusName(event.status);
        traceStep(status, afterStatus(event.head));
        failStep(fmt::format("{} {}", status, afterStatus(event.head)));
      }
      return;
  }
}

// After SELECT: LOGOUT; after LOGOUT: done.
void ImapProbe::nextCommand() {
  if (step_ != ProbeStep::kSelect) {
    finish(ResultType::kSucceeded, "");
    return;
  }
  startStep(ProbeStep::kLogout);
  sendCommand("LOGOUT", "LOGOUT");
}

void ImapProbe::sendCommand(std::string command, std::string trace_text) {
  tag_ = fmt::format("p{}", ++tag_counter_);
  command_trace_ = std::move(trace_text);
  std::string line;
  line.reserve(tag_.size() + command.size() + 3);
  line.append(tag_).append(" ").append(command).append("\r\n");
  OPENSSL_cleanse(command.data(), command.size());
  sendBytes(std::move(line));
}

void ImapProbe::sendBytes(std::string bytes) {
  if (tls_ == nullptr) {
    writeRaw(std::move(bytes));
  } else {
    sendEncrypted(std::move(bytes));
  }
}

void ImapProbe::writeRaw(std::string bytes) {
  auto* request = new WriteRequest();
  request->bytes = std::move(bytes);
  request->req.data = this;
  uv_buf_t buf = uv_buf_init(request->bytes.data(), static_cast<unsigned>(request->bytes.size()));
  const int rc =
      uv_write(&request->req, reinterpret_cast<uv_stream_t*>(&tcp_), &buf, 1, &ImapProbe::onWrite);
  if (rc != 0) {
    OPENSSL_cleanse(request->bytes.data(), request->bytes.size());
    delete request;
    attemptFailed(fmt::format("write failed: {}", uv_strerror(rc)));
    return;
  }
  ++writes_pending_;
}

void ImapProbe::onWrite(uv_write_t* req, int status) {
  auto* request = reinterpret_cast<WriteRequest*>(req);
  auto* probe = static_cast<ImapProbe*>(req->data);
  // The LOGIN line holds the password: wipe every buffer we wrote.
  OPENSSL_cleanse(request->bytes.data(), request->bytes.size());
  delete request;
  --probe->writes_pending_;
  if (status < 0 && status != UV_ECANCELED && probe->phase_ == Phase::kRunning) {
    probe->attemptFailed(fmt::format("write failed: {}", uv_strerror(status)));
    return;
  }
  probe->maybeDestroy();
}

void ImapProbe::failStep(std::string error) {
  error = mask(error);
  result_.failed_step = step_;
  result_.error = error;
  retryOrFinish();
}

void ImapProbe::attemptFailed(std::string error) {
  error = mask(error);
  result_.trace.push_back(fmt::format("{} failed {:.2f}ms: {}", stepLabel(), stepMs(), error));
  result_.failed_step = step_;
  result_.error = std::move(error);
  retryOrFinish();
}

void ImapProbe::retryOrFinish() {
  const auto delay = static_cast<std::uint64_t>(std::max<long long>(0, spec_.retry_delay.count()));
  if (attempt_ < spec_.retries && remainingMs() > delay) {
    phase_ = Phase::kClosingForRetry;
    if (tcp_open_) {
      closeConnection();
    } else {
      phase_ = Phase::kPausing;
      uv_timer_start(&retry_timer_, &ImapProbe::onRetryTimer, delay, 0);
    }
    return;
  }
  finish(ResultType::kFailed, result_.error);
}

void ImapProbe::finish(ResultType type, std::string error) {
  if (phase_ == Phase::kFinishing) {
    return;
  }
  phase_ = Phase::kFinishing;
  result_.result = type;
  result_.error = mask(error);
  if (type == ResultType::kSucceeded) {
    result_.failed_step = ProbeStep::kDone;
    result_.error.clear();
  }
  result_.end = std::chrono::system_clock::now();
  result_.sample_ms = elapsedMs();
  result_.retry_count = attempt_;
  uv_timer_stop(&deadline_);
  uv_timer_stop(&retry_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&deadline_), &ImapProbe::onTimerClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&retry_timer_), &ImapProbe::onTimerClosed);
  closeConnection();
}

void ImapProbe::cancel() {
  if (phase_ == Phase::kFinishing) {
    return;
  }
  result_.trace.push_back(fmt::format("cancelled in {}", probeStepName(step_)));
  result_.failed_step = step_;
  finish(ResultType::kFailed, "cancelled");
}

void ImapProbe::closeConnection() {
  auto* handle = reinterpret_cast<uv_handle_t*>(&tcp_);
  if (tcp_open_ && !uv_is_closing(handle)) {
    uv_close(handle, &ImapProbe::onTcpClosed);
  }
}

void ImapProbe::onDeadline(uv_timer_t* timer) {
  auto* probe = static_cast<ImapProbe*>(timer->data);
  if (probe->phase_ == Phase::kFinishing) {
    return;
  }
  if (probe->phase_ != Phase::kRunning) {
    // Between attempts: the last attempt's failure stands.
    probe->finish(ResultType::kFailed, probe->result_.error);
    return;
  }
  const std::string error = fmt::format("timed out in {} (probe timeout {} ms)",
                                        probeStepName(probe->step_), probe->spec_.timeout.count());
  probe->result_.trace.push_back(
      fmt::format("{} timed out after {:.2f}ms", probe->stepLabel(), probe->stepMs()));
  probe->result_.failed_step = probe->step_;
  probe->finish(ResultType::kTimedOut, error);
}

void ImapProbe::onRetryTimer(uv_timer_t* timer) {
  auto* probe = static_cast<ImapProbe*>(timer->data);
  if (probe->phase_ != Phase::kPausing) {
    return;
  }
  probe->phase_ = Phase::kRunning;
  ++probe->attempt_;
  probe->startAttempt();
}

void ImapProbe::onTcpClosed(uv_handle_t* handle) {
  auto* probe = static_cast<ImapProbe*>(handle->data);
  probe->tcp_open_ = false;
  probe->freeTls();  // here, never under an OpenSSL call further up the stack
  if (probe->phase_ == Phase::kClosingForRetry) {
    probe->phase_ = Phase::kPausing;
    const auto delay =
        static_cast<std::uint64_t>(std::max<long long>(0, probe->spec_.retry_delay.count()));
    uv_timer_start(&probe->retry_timer_, &ImapProbe::onRetryTimer, delay, 0);
    return;
  }
  probe->maybeDestroy();
}

void ImapProbe::onTimerClosed(uv_handle_t* handle) {
  auto* probe = static_cast<ImapProbe*>(handle->data);
  --probe->timers_open_;
  probe->maybeDestroy();
}

void ImapProbe::maybeDestroy() {
  if (phase_ != Phase::kFinishing || tcp_open_ || timers_open_ > 0 || writes_pending_ > 0) {
    return;
  }
  Done done = std::move(done_);
  ProbeResult result = std::move(result_);
  delete this;
  if (done) {
    done(std::move(result));
  }
}

std::string ImapProbe::mask(std::string_view text) const {
  std::string out(text);
  const std::string& secret = spec_.password;
  if (secret.empty()) {
    return out;
  }
  // The password as sent (quoted, escaped) and as the server may have
  // decoded it.
  std::string escaped = secret;
  if (auto q = quoted(secret)) {
    escaped = q->substr(1, q->size() - 2);
  }
  for (const std::string* form : std::array<const std::string*, 2>{&escaped, &secret}) {
    for (std::size_t pos = out.find(*form); pos != std::string::npos;
         pos = out.find(*form, pos + kMask.size())) {
      out.replace(pos, form->size(), kMask);
    }
  }
  return out;
}

double ImapProbe::stepMs() const {
  return static_cast<double>(uv_hrtime() - step_start_ns_) / 1e6;
}

double ImapProbe::elapsedMs() const {
  return static_cast<double>(uv_hrtime() - start_ns_) / 1e6;
}

std::uint64_t ImapProbe::remainingMs() const {
  const double left = static_cast<double>(spec_.timeout.count()) - elapsedMs();
  return left > 0 ? static_cast<std::uint64_t>(left) : 0;
}

}  // namespace portico::health
