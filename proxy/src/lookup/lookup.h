// The lookup stage: between pre-login and backend login, a session asks the
// operator's directory where its user lives (docs/lookup.md).
//
// Contract of every DirectoryLookup:
// - It runs on one worker's event loop; every call happens on that thread.
//   Nothing blocks the loop, and every wait (connect, answer, retry pause)
//   has a timeout: a lookup always completes.
// - lookup() returns at once with a LookupId. The callback runs exactly once
//   per id, later, from the loop (never from inside lookup() or cancel()),
//   unless the id is cancelled first.
// - cancel(id) before the callback: the callback never runs and everything
//   the lookup holds is released (its connection closed). cancel() of an id
//   that completed or was already cancelled does nothing. Ids are never
//   reused. PendingLookup wraps this so that a session that goes away can
//   never be called back.
// - Destroying a DirectoryLookup cancels what is still in flight (no
//   callbacks). It must not be destroyed from inside one of its callbacks.
//   Its libuv handles close asynchronously: run the loop afterwards so that
//   their memory is freed.
// - Secrets: LookupRequest::password and LookupResult::backend_password are
//   never written to a log, metric or error text. Implementations wipe the
//   copies they make (the request bytes they send) before releasing them;
//   whoever receives a LookupResult wipes its backend_password (wipeSecret)
//   when done with it.
#pragma once

#include <uv.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "lookup/lookup_config.h"
#include "net_types.h"

namespace portico::proxy {

// How the client authenticated. kPlain: IMAP LOGIN, AUTHENTICATE PLAIN or
// LOGIN (nginx's "plain"); the directory sees the password. kNone: SASL
// passed through to the backend (XOAUTH2, OAUTHBEARER): the directory is
// asked for the route only ("none", an extension of nginx's vocabulary).
enum class LookupAuthMethod : std::uint8_t { kPlain, kNone };
const char* lookupAuthMethodName(LookupAuthMethod method);

struct LookupRequest {
  std::string user;      // as the client sent it (not normalised)
  std::string password;  // secret; empty for kNone
  LookupAuthMethod method = LookupAuthMethod::kPlain;
  std::uint32_t attempt = 1;  // login attempt in this session, from 1
  std::string client_ip;      // no port, no brackets ("::1")
  std::uint16_t client_port = 0;
  std::string client_host;  // the client's host name when known, else empty
  // The client leg: TLS on (implicit or after STARTTLS) and what it runs.
  bool tls = false;
  std::string tls_protocol;  // "TLSv1.3", as OpenSSL names it
  std::string tls_cipher;    // "TLS_AES_256_GCM_SHA384"
  std::string local_ip;      // the listener address the client reached
  std::uint16_t local_port = 0;
  std::uint64_t session_id = 0;
};

// clang-format off
#define PORTICO_LOOKUP_OUTCOMES(X) X(Route) X(Refuse) X(NoEntry) X(Unavailable)
// clang-format on

enum class LookupOutcome : std::uint8_t {
#define PORTICO_ENUM(name) k##name,
  PORTICO_LOOKUP_OUTCOMES(PORTICO_ENUM)
#undef PORTICO_ENUM
};
constexpr std::size_t kLookupOutcomeCount = 4;
// "route", "refuse", "no_entry", "unavailable".
const char* lookupOutcomeName(LookupOutcome outcome);

// Backend TLS asked for by the directory (Dovecot's ssl= / starttls=).
enum class LookupBackendTls : std::uint8_t { kDefault, kImplicit, kStarttls };
const char* lookupBackendTlsName(LookupBackendTls tls);

// Where to send the user: a configured backend by name, or an address.
struct LookupRoute {
  std::string backend;  // configured backend name; empty when `host` is set
  std::string host;     // IP literal, no brackets
  std::uint16_t port = 0;
  bool ipv6 = false;
  std::string text() const;  // "mbx1", "10.0.0.11:143" or "[::1]:143"
};

struct LookupResult {
  LookupOutcome outcome = LookupOutcome::kUnavailable;

  // kRoute.
  LookupRoute route;
  std::optional<std::string> backend_user;      // Auth-User / destuser
  std::optional<std::string> backend_password;  // Auth-Pass: secret
  LookupBackendTls backend_tls = LookupBackendTls::kDefault;
  bool backend_tls_verify = true;  // false for "any-cert"
  std::optional<std::chrono::milliseconds> proxy_timeout;

  // kRefuse: the text for the client ("NO [AUTHENTICATIONFAILED] <reason>").
  // With wait_seconds (Auth-Wait) the client keeps its connection and may
  // retry after that pause, as with nginx; without it nginx ends the
  // connection after the NO.
  std::string reason;
  std::optional<std::uint32_t> wait_seconds;
  bool nologin = false;  // refused by Dovecot's nologin field

  // kUnavailable: for the operator's log (never holds a password).
  std::string error;

  bool from_cache = false;

  static LookupResult unavailable(std::string error);
  static LookupResult noEntry();
  // "route mbx1", "refuse 'Invalid login' wait=3", "unavailable: ...":
  // a one-line summary without secrets, for logs and tests.
  std::string describe() const;
};

// Overwrites a secret before its memory is released or reused.
void wipeSecret(std::string& secret);

using LookupCallback = std::function<void(LookupResult)>;
using LookupId = std::uint64_t;  // 0 is never a valid id

// The worker services a lookup needs. uvLoop() is null in unit-test fakes
// (only stages without sockets of their own can run there).
class LookupLoop {
 public:
  virtual ~LookupLoop() = default;
  virtual uv_loop_t* uvLoop() = 0;
  virtual std::chrono::steady_clock::time_point now() = 0;
  virtual TimerPtr createTimer(std::function<void()> callback) = 0;
};

// LookupLoop over a real libuv loop (UvTimer, steady_clock).
class UvLookupLoop final : public LookupLoop {
 public:
  explicit UvLookupLoop(uv_loop_t* loop) : loop_(loop) {}
  uv_loop_t* uvLoop() override { return loop_; }
  std::chrono::steady_clock::time_point now() override;
  TimerPtr createTimer(std::function<void()> callback) override;

 private:
  uv_loop_t* loop_;
};

class DirectoryLookup {
 public:
  virtual ~DirectoryLookup() = default;
  virtual LookupId lookup(const LookupRequest& request, LookupCallback callback) = 0;
  virtual void cancel(LookupId id) = 0;
};
using DirectoryLookupPtr = std::unique_ptr<DirectoryLookup>;

// A lookup in flight, owned by whoever waits for it (the session). Its
// destructor cancels the lookup, so a callback can never reach an owner
// that is gone. The DirectoryLookup must outlive it (the worker owns the
// lookup and destroys its sessions first).
class PendingLookup {
 public:
  PendingLookup() = default;
  PendingLookup(DirectoryLookup* directory, LookupId id) : directory_(directory), id_(id) {}
  PendingLookup(PendingLookup&& other) noexcept { *this = std::move(other); }
  PendingLookup& operator=(PendingLookup&& other) noexcept;
  PendingLookup(const PendingLookup&) = delete;
  PendingLookup& operator=(const PendingLookup&) = delete;
  ~PendingLookup() { cancel(); }

  // Starts a lookup and holds it. The owner calls done() from the callback.
  static PendingLookup start(DirectoryLookup& directory, const LookupRequest& request,
                             LookupCallback callback) {
    return PendingLookup(&directory, directory.lookup(request, std::move(callback)));
  }
  bool active() const { return id_ != 0; }
  LookupId id() const { return id_; }
  // The callback ran: nothing left to cancel.
  void done() {
    directory_ = nullptr;
    id_ = 0;
  }
  void cancel();

 private:
  DirectoryLookup* directory_ = nullptr;
  LookupId id_ = 0;
};

// Counters for the metrics endpoint (lookup_metrics.cc). One per process
// (ProcessState::lookup), written on the workers' loops, read by the control thread.
struct LookupStats {
  // Upper bounds of the latency histogram's buckets, in milliseconds; a
  // last bucket catches everything slower.
  static constexpr std::array<std::uint32_t, 12> kLatencyBoundsMs = {
      1, 2, 5, 10, 25, 50, 100, 250, 500, 1'000, 2'500, 5'000};

  std::array<std::atomic<std::uint64_t>, kLookupOutcomeCount> answers{};  // by outcome
  std::atomic<std::uint64_t> cache_hits{0};
  std::atomic<std::uint64_t> cache_misses{0};
  std::atomic<std::uint64_t> cancelled{0};
  // Directory queries only (cache hits are not timed).
  std::array<std::atomic<std::uint64_t>, kLatencyBoundsMs.size() + 1> latency_buckets{};
  std::atomic<std::uint64_t> latency_count{0};
  std::atomic<std::uint64_t> latency_sum_us{0};

  void recordAnswer(LookupOutcome outcome);
  void recordLatency(std::chrono::microseconds latency);
};

// The directory for `config.kind` on `loop` (http or redis); nullptr for
// kind = "none".
DirectoryLookupPtr makeDirectoryLookup(const LookupConfig& config, LookupLoop& loop);

}  // namespace portico::proxy
