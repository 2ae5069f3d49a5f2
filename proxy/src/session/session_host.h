// SessionHost: what a session needs from the worker that runs it, and
// SessionInfo: a session as the admin socket shows it. Apart from session.h
// so that a session's phases (the relay, relay.cc) can use the host and fill
// the admin view without depending on the whole Session class.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "accounting.h"
#include "backend_pool.h"
#include "net_types.h"
#include "runtime.h"

namespace portico::proxy {

class Session;
class LookupStage;

// What a session needs from the worker that runs it (faked in unit tests).
class SessionHost {
 public:
  virtual ~SessionHost() = default;
  virtual std::chrono::steady_clock::time_point now() = 0;
  virtual TimerPtr createTimer(std::function<void()> callback) = 0;
  // Starts a connection to `backend`; results arrive at `handler`.
  virtual Transport* connectBackend(const BackendConfig& backend, TransportHandler* handler) = 0;
  // Implicit TLS to a backend: connect, write `preamble` (a PROXY protocol
  // header, or nothing) on the raw TCP connection, then handshake; the
  // handler hears onConnected() once the certificate is verified.
  // nullptr: not supported.
  virtual Transport* connectBackendTls(const BackendConfig& backend,
                                       std::shared_ptr<const ClientTlsContext> tls,
                                       TransportHandler* handler, std::string preamble) {
    (void)backend, (void)tls, (void)handler, (void)preamble;
    return nullptr;
  }
  // STARTTLS: runs TLS over `plain` (which it takes over). nullptr: not supported.
  virtual Transport* startServerTls(Transport* plain, std::shared_ptr<const ServerTlsContext> tls) {
    (void)plain, (void)tls;
    return nullptr;
  }
  virtual Transport* startClientTls(Transport* plain, std::shared_ptr<const ClientTlsContext> tls,
                                    TransportHandler* handler) {
    (void)plain, (void)tls, (void)handler;
    return nullptr;
  }
  // COMPRESS=DEFLATE (RFC 4978): runs DEFLATE over the client transport
  // `plain` (which it takes over). nullptr: not supported, and then the
  // session does not offer COMPRESS=DEFLATE either.
  virtual Transport* startCompression(Transport* plain) {
    (void)plain;
    return nullptr;
  }
  virtual bool compressionAvailable() const { return false; }
  // A ready connection to backend `index` of `config` from the worker's
  // pool (backend_pool.h), now reporting to `handler`; nullopt: none.
  virtual std::optional<PooledBackend> takePooledBackend(const RuntimeConfig& config,
                                                         std::size_t index,
                                                         TransportHandler* handler) {
    (void)config, (void)index, (void)handler;
    return std::nullopt;
  }
  // A connection taken from backend `index`'s pool has answered the login
  // (or failed): the pool opens its replacement now, not while the backend
  // is still working on that login.
  virtual void pooledLoginDone(const RuntimeConfig& config, std::size_t index) {
    (void)config, (void)index;
  }
  virtual WorkerStats& stats() = 0;
  virtual ProcessState& shared() = 0;
  // The worker's directory lookup stage; nullptr for [lookup] kind = "none".
  // A session holds the pointer while its lookup is in flight, so a reload
  // that replaces the stage never pulls it from under a lookup.
  virtual std::shared_ptr<LookupStage> lookupStage() { return nullptr; }
  // This worker's producer index for the protocol log.
  virtual std::size_t index() const { return 0; }
  // Called once, when both transports are closed, from inside the session's
  // last callback. The host deletes the session once that callback has
  // returned (the worker on its loop's next turn).
  virtual void sessionEnded(Session* session) = 0;
};

// A session as the admin socket shows it.
struct SessionInfo {
  std::uint64_t id = 0;
  std::string client;  // ip:port
  std::string user;
  std::string backend;
  const char* state = "";
  std::string command;  // oldest command in flight, "" when none
  std::int64_t command_ms = 0;
  std::uint64_t commands_in_flight = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::int64_t age_ms = 0;
};

}  // namespace portico::proxy
