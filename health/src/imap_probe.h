// ImapProbe: one execution of an IMAP probe on a libuv loop, as Exchange's
// IMAP probes do it: connect, read the greeting, CAPABILITY, then (full
// probes) LOGIN as the monitoring account and SELECT INBOX, and LOGOUT.
//
// - Bounded: the whole execution, retries included, ends within
//   `timeout` (TimedOut, with the step it was in). A failed attempt is
//   retried up to `retries` times after `retry_delay`, while time is left.
// - Every step goes into ProbeResult::trace with its latency, e.g.
//   `connect 127.0.0.1:143 ok 0.2ms`, `LOGIN probe ***** NO 3.1ms
//   "[AUTHENTICATIONFAILED] ..."`.
// - Secrets: the password goes only into the LOGIN line on the wire (a
//   buffer wiped once written). The trace shows `LOGIN user *****`, and any
//   text from the server that echoes the password is masked before it
//   reaches the trace or the error.
// - The dialogue up to the login (greeting, CAPABILITY, STARTTLS, LOGIN) is
//   the parser library's IMAP client, parser::BackendLoginClient in its
//   kProbe profile: the same state machine the proxy logs its clients in
//   with. The probe times and traces each step it reports, and checks what
//   the client queued before writing it (STARTTLS advertised, LOGINDISABLED,
//   a user or password that cannot be quoted). After the login, SELECT and
//   LOGOUT are the probe's own, framed by parser::ResponseFramer (literals
//   skipped by count); a malformed response fails the step.
// - Lifetime: start() returns a probe that owns its handles and frees
//   itself. `done` runs exactly once, after every handle has been closed, so
//   a loop that ran all probes to completion has no live handle left.
//   cancel() ends it early (result Failed, error "cancelled"); the pointer
//   is valid until `done` runs.
//
// TLS (ImapProbeSpec::tls): the network layer's client context and
// TlsEngine (portico/net), the same TLS stack the proxy uses towards its
// backends; all bytes pass through sendBytes() (plaintext in, ciphertext to
// the socket) and receivedBytes() (ciphertext in, plaintext to the framer).
// - Implicit TLS: the handshake right after connect, then the greeting.
// - STARTTLS: after the greeting and CAPABILITY, `STARTTLS` (only if
//   advertised); on its tagged OK the handshake, then CAPABILITY again
//   (capabilities seen before TLS are forgotten). Bytes that follow the
//   tagged OK in plaintext fail the probe (response injection).
// - The handshake is the `tls` step (trace `tls ok 2.10ms "TLSv1.3 ..."`),
//   bounded by the probe's timeout like every step. Verification, name,
//   SNI and pin follow ProbeTlsSettings; failures read e.g. "certificate
//   verify failed: unable to get local issuer certificate".
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "portico/backend_login.h"
#include "portico/health.h"
#include "portico/net/tls_context.h"
#include "portico/net/tls_engine.h"
#include "portico/parser.h"

namespace portico::health {

struct ImapProbeSpec {
  // Copied into the result.
  std::string probe;
  std::string health_set;
  std::string target;

  Endpoint endpoint;
  ProbeTlsSettings tls;  // mode kNone: plain IMAP
  // Sent in the clear right after connecting, before the TLS handshake or
  // the greeting: a PROXY protocol header for a proxy_protocol listener.
  std::string preamble;
  // LOGIN (quoted strings) and then SELECT INBOX; no login without a user.
  bool login = false;
  bool select = false;
  std::string user;
  std::string password;  // secret
  Millis timeout{55'000};
  std::uint32_t retries = 0;
  Millis retry_delay{1'000};
};

// "[::1]" -> "::1"; other hosts as they are.
std::string bareHost(std::string_view host);

class ImapProbe {
 public:
  using Done = std::function<void(ProbeResult)>;

  static ImapProbe* start(uv_loop_t* loop, ImapProbeSpec spec, Done done);
  void cancel();

  ImapProbe(const ImapProbe&) = delete;
  ImapProbe& operator=(const ImapProbe&) = delete;

 private:
  struct WriteRequest;
  enum class Phase : std::uint8_t { kIdle, kRunning, kClosingForRetry, kPausing, kFinishing };

  ImapProbe(uv_loop_t* loop, ImapProbeSpec spec, Done done);
  ~ImapProbe();

  void begin();
  void startAttempt();
  void startStep(ProbeStep step);
  std::string stepLabel() const;
  void traceStep(std::string_view outcome, std::string_view detail);
  void sendCommand(std::string command, std::string trace_text);
  void sendBytes(std::string bytes);
  void writeRaw(std::string bytes);
  void receivedBytes(std::string_view bytes);
  void feedPlaintext(std::string_view bytes);
  void peerClosed();
  // TLS (imap_probe_tls.cc): the context (false, with `error`, if the
  // trust store, client certificate or pin is unusable), a fresh SSL per
  // attempt and its handshake, ciphertext in and out, plaintext out of
  // OpenSSL.
  Status createTls();
  void receivedCiphertext(std::string_view bytes);
  void sendEncrypted(std::string bytes);
  void startHandshake();
  void continueHandshake();
  void readPlaintext();
  void flushCiphertext();
  void freeTls();
  // The login dialogue (BackendLoginClient): its events, then the step it
  // queued a command for, checked before the command is written.
  void feedLogin(std::string_view bytes);
  bool handleLoginEvent(const parser::BackendLoginEvent& event);
  void loginStepAnswered(std::string_view line);
  void startQueuedStep();
  bool vetoQueuedStep();
  void flushLogin();
  void loggedIn(bool ready);
  // After the login: SELECT and LOGOUT.
  void handleResponse(const parser::ResponseEvent& event);
  void nextCommand();
  // attemptFailed() traces the failure; failStep() is for a step whose
  // outcome is already traced. Both retry if allowed, else finish Failed.
  void attemptFailed(std::string error);
  void failStep(std::string error);
  void retryOrFinish();
  void finish(ResultType type, std::string error);
  void closeConnection();
  void maybeDestroy();
  std::string mask(std::string_view text) const;
  double stepMs() const;
  double elapsedMs() const;
  std::uint64_t remainingMs() const;

  static void onConnect(uv_connect_t* req, int status);
  static void onAlloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buf);
  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void onWrite(uv_write_t* req, int status);
  static void onDeadline(uv_timer_t* timer);
  static void onRetryTimer(uv_timer_t* timer);
  static void onTcpClosed(uv_handle_t* handle);
  static void onTimerClosed(uv_handle_t* handle);

  uv_loop_t* loop_;
  ImapProbeSpec spec_;
  Done done_;
  ProbeResult result_;
  parser::ResponseFramer framer_;                      // after the login
  std::unique_ptr<parser::BackendLoginClient> login_;  // until the login, one per attempt

  uv_tcp_t tcp_{};
  uv_timer_t deadline_{};
  uv_timer_t retry_timer_{};
  uv_connect_t connect_req_{};
  bool tcp_open_ = false;
  int timers_open_ = 0;
  int writes_pending_ = 0;

  Phase phase_ = Phase::kIdle;
  std::uint32_t attempt_ = 0;  // 0 for the first attempt
  std::uint32_t tag_counter_ = 0;
  ProbeStep step_ = ProbeStep::kConnect;
  std::string tag_;            // of the command in flight
  std::string command_trace_;  // how that command shows in the trace
  bool saw_bye_ = false;
  std::shared_ptr<const net::ClientTlsContext> tls_context_;  // made once per execution
  std::unique_ptr<net::TlsEngine> tls_;                       // one per connection
  bool handshaking_ = false;
  std::uint64_t start_ns_ = 0;
  std::uint64_t step_start_ns_ = 0;
  char read_buffer_[16 * 1024];
};

}  // namespace portico::health
