// BackendLoginClient: Portico as an IMAP client logging in to a backend,
// written sans-IO. It reads the backend's greeting, runs STARTTLS when
// asked, reads capabilities, sends ID when asked, then replays the login
// (LOGIN, AUTHENTICATE with or without SASL-IR and its continuation).
//
// It owns no socket, timer or TLS: the caller feeds it the backend's bytes
// (feed()), asks for the next event (next()), and writes what output()
// holds to the backend after every call. STARTTLS is an event: the caller
// runs the handshake and then calls tlsEstablished(). The same machine can
// drive a health probe's login, which is why it knows nothing of Session:
// BackendLoginProfile::kProbe is the dialogue the health probes run.
//
// Secrets: the login's user, password and SASL response are views the
// caller keeps alive (and wipes) until the client is destroyed or reports
// kLoggedIn, kRefused or kFailed. output() may hold them: the caller writes
// it and then calls clearOutput(), which wipes it.
//
// Limits: at most kMaxBytes of backend bytes are held during the login; a
// backend that sends more fails the login.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "portico/parser.h"

namespace portico::parser {

enum class BackendLoginMethod : std::uint8_t {
  kLogin,         // LOGIN user password (AUTHENTICATE PLAIN when it cannot be quoted)
  kAuthenticate,  // AUTHENTICATE mechanism, the client's SASL response passed through
  kNone,          // no login: kReady once the capabilities are read (kProbe only)
};

// kSession: Portico logging a client in (STARTTLS right after the greeting,
// fixed P0* tags, the login under the client's tag).
// kProbe: a health probe, as Exchange's IMAP probes do it. Every command is
// tagged `tag` followed by a count (p1, p2, ...), the login too; CAPABILITY
// right after the greeting and again after STARTTLS, STARTTLS after the
// first CAPABILITY; a PREAUTH greeting skips the login (kReady); LOGIN
// quotes 8-bit bytes as they are. Every step answered OK is an event (kStep,
// then kStartTls, kLoggedIn or kReady), so the caller can time and trace
// each, and can look at what was queued (state(), output()) before writing
// it; a tagged NO/BAD to any step is kRefused; failures read as a probe's
// ("unexpected greeting: ...", "server said BYE ...").
enum class BackendLoginProfile : std::uint8_t { kSession, kProbe };

struct BackendLoginParams {
  BackendLoginProfile profile = BackendLoginProfile::kSession;
  BackendLoginMethod method = BackendLoginMethod::kLogin;
  std::string tag;  // the client's tag, reused so the tagged answer is the client's
  std::string_view user;
  std::string_view password;  // kLogin
  std::string mechanism;      // kAuthenticate
  std::string_view sasl;      // kAuthenticate: base64 as the client sent it; empty: "="
  bool starttls = false;      // STARTTLS before anything else
  std::string id_command;     // a whole `P0ID ID (...)` line to send first; empty: none
  // kProbe: `tag` is the tags' prefix, and tag_count the tags used before
  // (a probe's retry goes on counting).
  std::uint32_t tag_count = 0;
  // Stop in kReady once the greeting, STARTTLS and capabilities are done,
  // until resumeLogin() brings the login (a pooled connection,
  // backend_pool.h). The login fields are unused until then.
  bool hold_before_login = false;
};

enum class BackendLoginEventType : std::uint8_t {
  kNeedMore,  // feed more bytes
  kUntagged,  // an untagged line during the login (line: the whole line, CRLF included)
  kStartTls,  // STARTTLS accepted: run the handshake, then tlsEstablished()
  kLoggedIn,  // the login's tagged OK (line); rest() holds what followed it
  kRefused,   // the login's tagged NO/BAD (line)
  kFailed,    // the backend cannot be used (why)
  kStep,      // kProbe: the greeting or a CAPABILITY answered OK (line); see state()
  kReady,     // kProbe: capabilities read, no login (kNone or PREAUTH); rest() as kLoggedIn
};
const char* backendLoginEventTypeName(BackendLoginEventType type);

// Views are valid until the next call to feed(), next() or tlsEstablished().
struct BackendLoginEvent {
  BackendLoginEventType type = BackendLoginEventType::kNeedMore;
  std::string_view line;
  std::string why;  // kFailed: printable, for an operator's log
};

// clang-format off
#define PORTICO_BACKEND_LOGIN_STATES(X) \
  X(Greeting) X(Starttls) X(TlsHandshake) X(Capability) X(Ready) X(Id) X(Login) X(Done)
// clang-format on

// The tag of the ID command a caller puts in BackendLoginParams::id_command.
inline constexpr const char* kForwardIdTag = "P0ID";

class BackendLoginClient {
 public:
  enum class State : std::uint8_t {
#define PORTICO_ENUM(name) k##name,
    PORTICO_BACKEND_LOGIN_STATES(PORTICO_ENUM)
#undef PORTICO_ENUM
  };
  static const char* stateName(State state);

  static constexpr std::size_t kMaxBytes = 64 * 1024;

  // The connection is up; the greeting is awaited.
  explicit BackendLoginClient(BackendLoginParams params);
  ~BackendLoginClient();
  BackendLoginClient(const BackendLoginClient&) = delete;
  BackendLoginClient& operator=(const BackendLoginClient&) = delete;

  // Appends the backend's bytes. Past kMaxBytes the next event is kFailed.
  void feed(std::string_view bytes);
  BackendLoginEvent next();
  // The TLS handshake after kStartTls is done: capabilities are asked again.
  void tlsEstablished();
  // In kReady (hold_before_login): the login to replay, as the constructor
  // takes it (its starttls is ignored: that part is done). ID, then the
  // login, go to output().
  void resumeLogin(BackendLoginParams params);

  // Bytes to write to the backend; may hold a secret.
  const std::string& output() const {
    return output_;
  }
  void clearOutput();

  State state() const {
    return state_;
  }
  // Whether the login command (which holds the secret) went out.
  bool loginSent() const {
    return state_ == State::kLogin || state_ == State::kDone;
  }
  const std::string& capabilities() const {
    return caps_;
  }
  // kProbe: the greeting was PREAUTH.
  bool preauth() const {
    return preauth_;
  }
  // After kStartTls: plaintext bytes had followed the OK (dropped; a probe
  // fails on them, as they could be injected).
  bool plaintextAfterStartTls() const {
    return plaintext_after_starttls_;
  }
  // kProbe: how many commands were tagged so far (the caller goes on from it).
  std::uint32_t tagCount() const {
    return tag_count_;
  }
  // After kLoggedIn: the backend bytes that followed the tagged OK.
  std::string_view rest() const;

 private:
  BackendLoginEvent handle(const ResponseEvent& event, std::string_view line);
  BackendLoginEvent handleLogin(const ResponseEvent& event, std::string_view line);
  BackendLoginEvent afterCapabilities();
  BackendLoginEvent handleProbe(const ResponseEvent& event, std::string_view line);
  BackendLoginEvent probeTagged(std::string_view line);
  BackendLoginEvent startTlsAccepted();
  // Queues `tag command`: the fixed tag (kSession) or the next counted one.
  void send(std::string_view command, std::string_view session_tag);
  void sendLogin();
  void sendLoginAsLogin();
  static BackendLoginEvent failed(std::string why);

  BackendLoginParams params_;
  State state_ = State::kGreeting;
  ResponseFramer framer_;
  std::string pending_;
  std::size_t parsed_ = 0;
  std::string output_;
  std::string caps_;
  bool sasl_sent_ = false;
  bool overflow_ = false;
  bool preauth_ = false;
  bool plaintext_after_starttls_ = false;
  bool tls_established_ = false;
  std::uint32_t tag_count_ = 0;
  std::string tag_;  // kProbe: of the command in flight
};

// A PROXY protocol v2 header (HAProxy's proxy-protocol.txt, 2.2) for a
// connection from `source` to `destination`; UNSPEC for other families.
std::string proxyV2Header(const sockaddr_storage& source, const sockaddr_storage& destination);

}  // namespace portico::parser
