// One client session: pre-login dialogue, backend selection and login
// replay, then the two-way relay with per-command accounting.
//
// Phases are objects the session owns. The pre-login dialogue is a
// PreloginDialogue (prelogin.h), owned until the login succeeds and reaching
// the session through the PreloginOwner interface the session implements
// privately; it hands the client's login over as a LoginRequest, which the
// session routes (session_login.cc), looks up (session_lookup.cc) and
// replays at the backend with a BackendLoginClient (portico/backend_login.h,
// driven by session_backend.cc). What only that login needs (the request
// and its secrets, the candidates, the lookup, the login client) is a
// LoginPhase (login_phase.h), owned only while the login runs. Then the
// relay is a Relay (relay.h) from enterRelay() on, reaching back through
// RelayOwner. The session keeps what the phases share (transports, timer,
// the client's command framer, counters, the end reason).
//
// Ownership: the Session owns both transports and its timer. It ends when
// both transports have reported onClosed(); it then tells its host, which
// deletes it. close paths are idempotent. All calls happen on one worker
// thread; nothing here blocks.
//
// The session never logs or stores a password beyond the login exchange:
// the secret is wiped as soon as the backend has answered.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backend_pool.h"
#include "end_reason.h"
#include "lookup/lookup.h"
#include "net_types.h"
#include "portico/backend_login.h"
#include "portico/parser.h"
#include "prelogin.h"
#include "protocol_tap.h"
#include "relay.h"
#include "runtime.h"
#include "session_accounting.h"
#include "session_host.h"
#include "session_observer.h"

namespace portico::proxy {

// The backend login is the parser library's IMAP client (shared with the
// health probes).
using parser::BackendLoginClient;
using parser::BackendLoginEvent;
using parser::BackendLoginEventType;
using parser::BackendLoginMethod;
using parser::BackendLoginParams;
using parser::proxyV2Header;

class LookupStage;
struct LoginPhase;

// clang-format 14 cannot lay out this X-macro list stably (it changes it on
// every run), so it is left as written.
// clang-format off
#define PORTICO_SESSION_STATES(X) \
  X(Prelogin) X(AuthContinuation) X(LoginDelay) X(Lookup) X(Connecting) X(BackendGreeting) \
  X(BackendStarttls) X(BackendTlsHandshake) X(BackendCapability) X(BackendId) \
  X(BackendLogin) X(Relay) X(Closing)
// clang-format on

enum class SessionState : std::uint8_t {
#define PORTICO_ENUM(name) k##name,
  PORTICO_SESSION_STATES(PORTICO_ENUM)
#undef PORTICO_ENUM
};
const char* sessionStateName(SessionState state);

// Empty fields match anything; ip matches the client's address without port.
struct SessionFilter {
  std::optional<std::uint64_t> id;
  std::string user;  // normalised user
  std::string ip;
  std::string backend;
  bool matches(const SessionInfo& info) const;
};

class Session : public TransportHandler, private PreloginOwner, private RelayOwner {
 public:
  // The relay's threshold for a "small" client read (relay.h).
  static constexpr std::size_t kSmallClientRead = Relay::kSmallClientRead;

  Session(SessionHost& host, RuntimeConfigPtr config, Transport* client, std::uint64_t id);
  ~Session() override;

  // The listener the client came in on (before start()). `tls_active`:
  // implicit TLS is already running on the client transport.
  // The listener's `compress = false`: COMPRESS=DEFLATE is neither offered
  // nor accepted on this session.
  void setCompressOffered(bool offered) { compress_offered_ = offered; }
  void setListener(TlsMode mode, bool require_tls, std::shared_ptr<const ServerTlsContext> tls,
                   bool tls_active);
  // Sends the greeting and starts the pre-login timer.
  void start();
  // Ends the session politely: `* BYE <text>` now if between commands, else
  // right after the current command's tagged reply. Used for server
  // shutdown and for moving sessions off a drained backend.
  void requestBye(std::string_view text, EndReason end_reason);
  // Ends the session at once (forced shutdown).
  void abort(EndReason reason);
  // Admin kick: `* BYE` now, then close, whatever the session is doing.
  void kick();
  SessionInfo info(std::chrono::steady_clock::time_point now) const;
  // After `quiet` without client activity, gives the framers' line buffers
  // (about 1 KiB per direction) back to the allocator: only between
  // commands (relay: nothing in flight; pre-login: nothing pending) and at
  // a line boundary. The next byte allocates them again. The worker calls
  // it from a sweep, so no command pays for it. True if it released any.
  bool releaseIdleBuffers(std::chrono::steady_clock::time_point now,
                          std::chrono::steady_clock::duration quiet);

  std::uint64_t id() const { return id_; }
  // During the backend login, the login client's step (kBackendGreeting ..
  // kBackendLogin).
  SessionState state() const;
  const std::string& user() const { return user_; }
  const std::string& backendName() const { return backend_name_; }
  std::size_t commandsInFlight() const { return relay_ ? relay_->commandsInFlight() : 0; }
  const std::string& clientAddress() const { return client_address_; }
  const sockaddr_storage& clientSockaddr() const { return client_sockaddr_; }
  // The backend's address as configured; "" before one is chosen.
  std::string backendAddress() const;
  std::uint64_t bytesIn() const { return bytes_in_; }
  std::uint64_t bytesOut() const { return bytes_out_; }

  // Observers beside the session's own accounting and protocol-log tap
  // (tests). `observer` must outlive the session; at most kMaxObservers.
  static constexpr std::size_t kMaxObservers = 4;
  void addObserver(SessionObserver* observer);

  // TransportHandler
  void onConnected(Transport* transport, bool ok, std::string_view error) override;
  void onData(Transport* transport, Chunk chunk) override;
  void onDrained(Transport* transport) override;
  void onClosed(Transport* transport, std::string_view reason) override;

 private:
  using Clock = std::chrono::steady_clock;

  // PreloginOwner: what the pre-login dialogue asks of its session
  // (prelogin.h); the login it hands over (session_login.cc).
  bool dialogueOpen() const override;
  bool clientTls() const override { return client_tls_; }
  void upgradeClientToTls(std::shared_ptr<const ServerTlsContext> context) override;
  void startLogin(LoginRequest&& request) override;
  void refuseLogin(std::string_view tag, std::string_view client_line) override;
  WorkerStats& stats() override { return host_.stats(); }
  void notifyLoginCommand(const parser::PreloginCommand& command, std::string_view bytes) override;
  // Runs the dialogue on what it holds; deletes it afterwards if the login
  // succeeded meanwhile (never from inside one of its own calls).
  void processDialogue();

  // Login (session_login.cc).
  void routeLogin();
  void routeByHash();
  void connectNext();
  void failLogin(std::string_view client_line, bool count_failure);
  void backendFailed(std::string_view why);

  // Directory lookup (session_lookup.cc).
  void startLookup(std::shared_ptr<LookupStage> stage);
  void onLookupAnswer(LookupResult result);
  void routeFromDirectory(LookupResult& result);
  void lookupRefused(const LookupResult& result);
  void lookupUnavailable(std::string_view error);
  LookupRequest lookupRequest();

  // Backend login.
  BackendLoginParams backendLoginParams();
  void startBackendLogin();
  // A pooled connection (already greeted): the login goes out at once.
  void usePooledBackend(PooledBackend pooled);
  // The pooled connection died before the login's answer: the same
  // backend again over a fresh connection, unseen by the client.
  void retryWithoutPool();
  // The pooled connection answered the login or failed: the pool may open
  // its replacement (SessionHost::pooledLoginDone). Once per taken connection.
  void pooledLoginDone();
  void onBackendLoginData(Chunk chunk);
  // Writes what the login client has for the backend, then wipes it.
  void flushBackendLogin();
  void startBackendTls();
  std::string forwardIdCommand() const;
  void enterRelay();

  // A backend capability line as the client sees it (relay.h).
  std::string clientCapabilityLine(std::string_view line) const {
    return proxy::clientCapabilityLine(line, compressionOffered());
  }

  // RelayOwner: what the relay phase (relay_) asks of the session.
  void relayWriteClient(std::string_view bytes) override { writeClient(bytes); }
  void relayClose(std::string_view bye_line, EndReason reason, std::string_view detail) override {
    closeWithBye(bye_line, reason, detail);
  }
  void relayByeOnShutdown() override;
  void relayNoteCutResponse(std::string_view reason) override { noteCutResponse(reason); }
  void relayWarnBackend(std::string_view what) override;
  void relayUpdateClientReading() override { updateClientReading(); }
  bool relayActive() const override { return state_ == SessionState::kRelay; }
  bool relayOffersCompression() const override { return compressionOffered(); }
  bool relayCompressClient(std::string_view ok_line) override;
  void relayCommandSent(const parser::CommandEvent& event, CommandId command) override;
  void relayCommandCompleted(const CompletedCommand& command) override;
  void relayLocalCommand(CommandId command, std::string_view parameters, std::string_view result,
                         parser::Status status, std::uint64_t request_bytes,
                         std::uint64_t response_bytes) override;

  // Phases: the handler for each side's bytes is swapped when the phase
  // changes (as nginx's mail proxy swaps its read handler), so onData()
  // makes one indirect call and never asks which phase it is in.
  using Reader = void (Session::*)(Chunk chunk);
  void setState(SessionState state);
  void readPrelogin(Chunk chunk);
  void readDuringLookup(Chunk chunk);
  void readRelay(Chunk chunk);
  void readRelayBackend(Chunk chunk);
  void ignoreData(Chunk chunk);

  // Common.
  void writeClient(std::string_view bytes) override;
  // Ends the session: `bye_line` (if any) to the client, then close. A BYE
  // is left out while a backend response is part-way to the client.
  // `detail` replaces the reason's text in the logs (a parser error code).
  void closeWithBye(std::string_view bye_line, EndReason reason,
                    std::string_view detail = {}) override;
  // Records why the session ends; the first reason given wins.
  void setEndReason(EndReason reason, std::string_view detail = {});
  std::string_view endReasonLogText() const;
  bool clientMidResponse() const;
  void noteCutResponse(std::string_view reason);
  void updateClientReading();
  void armTimer();
  void onTimer();
  void wipeSecrets();
  void finishIfClosed();
  BackendStats* backendStats();

  // Tells every observer: `event(observer)`.
  template <typename Event>
  void notify(const Event& event) {
    for (std::size_t i = 0; i < observer_count_; ++i) {
      event(*observers_[i]);
    }
  }
  void notifyPrelogin(const parser::PreloginCommand& command, std::string_view bytes,
                      std::string_view result) override;

  SessionHost& host_;
  RuntimeConfigPtr config_;
  Transport* client_;
  Transport* backend_ = nullptr;
  TimerPtr timer_;
  // Who watches: the counters, the protocol log, and a test's observers.
  SessionAccounting accounting_;
  ProtocolTap tap_;
  std::array<SessionObserver*, kMaxObservers> observers_{};
  std::size_t observer_count_ = 0;
  std::uint64_t id_;
  SessionState state_ = SessionState::kPrelogin;
  Reader client_reader_ = &Session::readPrelogin;
  Reader backend_reader_ = &Session::ignoreData;

  parser::CommandFramer command_framer_;

  // The pre-login dialogue: from construction until the login succeeds.
  PreloginDialoguePtr dialogue_;
  std::vector<Transport*> orphans_;  // backends given up on, still closing
  bool retire_dialogue_ = false;     // the login succeeded inside a dialogue call: delete it after
  std::string shutdown_text_;
  EndReason shutdown_end_reason_ = EndReason::kShutdown;
  bool logged_in_ = false;
  sockaddr_storage client_sockaddr_{};
  bool client_tls_ = false;
  bool compress_offered_ = true;  // the listener's `compress`
  bool compressionOffered() const { return compress_offered_ && host_.compressionAvailable(); }

  // The login in progress (login_phase.h): from startLogin() until the
  // login succeeds or fails; null in the dialogue and the relay. Its user
  // moves to user_.
  std::unique_ptr<LoginPhase> login_;
  std::string user_;
  std::size_t backend_index_ = 0;
  std::string backend_name_;
  // A pooled connection failed this session: this and every later login
  // connect afresh.
  bool pool_declined_ = false;
  std::uint32_t login_attempts_ = 0;
  Clock::time_point retry_after_{};  // Auth-Wait: no login before this

  // The relay phase, from enterRelay() until the session is deleted.
  std::optional<Relay> relay_;
  bool shutdown_pending_ = false;  // requestBye() was called
  bool counted_unauthenticated_ = true;

  std::uint32_t login_failures_ = 0;
  // This session's place in limits.max_sessions_per_user, from the start of
  // its login until the login fails or the session ends.
  fleet::UserSlot user_slot_;
  std::uint64_t bytes_in_ = 0;
  std::uint64_t bytes_out_ = 0;
  Clock::time_point started_;
  Clock::time_point last_activity_;
  Clock::time_point deadline_{};
  EndReason end_reason_ = EndReason::kClosed;
  bool end_reason_set_ = false;
  std::string end_detail_;  // printed instead of the reason's text when set
  std::string client_address_;
  bool ended_ = false;
};

}  // namespace portico::proxy
