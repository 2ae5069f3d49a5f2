// The pre-login dialogue of one client session (phase 1, before any
// backend is involved): CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and
// AUTHENTICATE answered by Portico itself, bad-command counting, and the
// client's bytes held until a command is whole.
//
// Ownership: a Session owns its PreloginDialogue from construction until
// its login succeeds (then the relay starts and the dialogue is deleted,
// never from inside one of its own calls: see processing()). A failed
// login returns to the same dialogue. The dialogue talks to its session
// only through PreloginOwner; it never touches a socket, timer or backend.
//
// The login: once LOGIN, or AUTHENTICATE with its SASL response, is read,
// the dialogue fills a LoginRequest and hands it to
// PreloginOwner::startLogin(), which routes, looks up and replays it. The
// password and SASL payload in a LoginRequest are secrets: they are wiped
// (never merely cleared) wherever a copy ends, and never logged. The
// pending client bytes may hold them too and are wiped the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "accounting.h"
#include "end_reason.h"
#include "net_types.h"
#include "portico/parser.h"
#include "runtime.h"

namespace portico::proxy {

// A client's login as the dialogue read it, handed to the session.
struct LoginRequest {
  enum class Kind : std::uint8_t { kLogin, kAuthenticate };
  Kind kind = Kind::kLogin;
  std::string tag;
  std::string user;       // LOGIN's user, or the SASL authentication identity
  std::string password;   // LOGIN only; a secret
  std::string mechanism;  // AUTHENTICATE only: PLAIN, XOAUTH2 or OAUTHBEARER
  std::string sasl;       // AUTHENTICATE only: base64, as the client sent it; a secret
};

// What the dialogue needs from its session (a Session implements it
// privately; unit tests of the session exercise it through the session).
class PreloginOwner {
 public:
  // The dialogue may read on: the client is connected and the session is
  // in its pre-login phase (not logging in, holding a delayed answer, or
  // closing).
  virtual bool dialogueOpen() const = 0;
  virtual void writeClient(std::string_view bytes) = 0;
  // Ends the session: `bye_line` to the client, then close. `detail`
  // replaces the reason's text in the logs.
  virtual void closeWithBye(std::string_view bye_line, EndReason reason,
                            std::string_view detail = {}) = 0;
  // Observers: a command answered before login (`bytes` empty when it did
  // not parse), and a LOGIN/AUTHENTICATE command as read.
  virtual void notifyPrelogin(const parser::PreloginCommand& command, std::string_view bytes,
                              std::string_view result) = 0;
  virtual void notifyLoginCommand(const parser::PreloginCommand& command,
                                  std::string_view bytes) = 0;
  // TLS is running on the client connection.
  virtual bool clientTls() const = 0;
  // STARTTLS after its OK: TLS over the client connection from now on; if
  // TLS cannot start, the owner ends the session.
  virtual void upgradeClientToTls(std::shared_ptr<const ServerTlsContext> context) = 0;
  // Takes the login over (its secrets move out of `request`).
  virtual void startLogin(LoginRequest&& request) = 0;
  // A login refused before it could start (an AUTHENTICATE without a
  // user): counted and answered like a refusal from the backend.
  virtual void refuseLogin(std::string_view tag, std::string_view client_line) = 0;
  virtual WorkerStats& stats() = 0;

 protected:
  ~PreloginOwner() = default;
};

class PreloginDialogue {
 public:
  // `config` and `framer` (the session's client command framer, which the
  // relay uses after login) must outlive the dialogue.
  PreloginDialogue(PreloginOwner& owner, const RuntimeConfig& config,
                   parser::CommandFramer& framer);
  ~PreloginDialogue();  // wipes what it holds
  PreloginDialogue(const PreloginDialogue&) = delete;
  PreloginDialogue& operator=(const PreloginDialogue&) = delete;

  // The listener the client came in on: STARTTLS offered, TLS required
  // before a login.
  void setListener(TlsMode mode, bool require_tls, std::shared_ptr<const ServerTlsContext> tls);
  // The capabilities offered before login (the greeting, CAPABILITY).
  std::string capabilities() const;

  // Client bytes: held (wiped when they go), then handled by process().
  void append(std::string_view bytes);
  // Handles every whole command held while dialogueOpen(). Re-entrant: a
  // call from inside a call (through the owner) makes the outer one loop
  // again instead.
  void process();
  // True while process() runs: the dialogue must not be deleted.
  bool processing() const { return processing_; }
  // What is held exceeds one pre-login command (pipelined during a lookup).
  bool holdingTooMuch() const;
  // Between commands: nothing held and no SASL response awaited.
  bool idle() const { return client_pending_.empty() && !awaiting_sasl_; }
  // AUTHENTICATE was answered with `+`: the next line is its SASL response.
  bool awaitingSasl() const { return awaiting_sasl_; }
  // The bytes held after a successful login, for the relay; the dialogue
  // holds nothing afterwards.
  std::string takePending();

  // The failed-login delay: an answer held until the session's timer fires.
  void holdReply(std::string_view line) { delayed_reply_.assign(line); }
  std::string takeHeldReply();

 private:
  void processOnce();
  bool readSaslLine();
  void handleCommand(std::string_view bytes);
  void handleLogin(parser::PreloginCommand& cmd, std::string_view bytes);
  void handleAuthenticate(parser::PreloginCommand& cmd, std::string_view bytes);
  void handleStarttls(const parser::PreloginCommand& cmd, std::string_view bytes);
  void handleAuthLine(std::string_view line);
  void beginAuthenticate(std::string_view initial_response);
  void handOverLogin();
  bool refuseLiteral(const parser::CommandEvent& event);
  void dropConsumed(bool wipe_first);
  void badCommand(std::string_view tag, std::string_view message);
  // require_tls without TLS yet: answers `tag NO [PRIVACYREQUIRED]`, true.
  bool refusedUntilTls(std::string_view tag);
  bool loginNeedsTls() const;
  static std::string privacyRequired(std::string_view tag);

  PreloginOwner& owner_;
  const RuntimeConfig& config_;
  parser::CommandFramer& framer_;
  std::string client_pending_;  // client bytes not yet handled; may hold a password
  std::size_t pending_parsed_ = 0;
  LoginRequest login_;  // the login being read (AUTHENTICATE: until its SASL line)
  std::optional<std::vector<parser::IdField>> client_id_;
  std::string delayed_reply_;  // answer held back by the failed-login delay
  std::shared_ptr<const ServerTlsContext> listener_tls_context_;
  std::uint32_t bad_in_row_ = 0;
  TlsMode listener_tls_ = TlsMode::kNone;
  bool require_tls_ = false;
  bool awaiting_sasl_ = false;
  bool processing_ = false;
  bool process_again_ = false;
};

using PreloginDialoguePtr = std::unique_ptr<PreloginDialogue>;

}  // namespace portico::proxy
