// kind = "http": nginx auth_http over libuv. Each lookup opens a new
// connection (TCP to an IP literal, or a unix socket), sends one
// `GET <uri> HTTP/1.0` (http_auth.h builds it byte for byte as nginx does),
// reads the answer's header with llhttp and closes; the body is never read.
//
// Bounds: one exchange (connect, send, answer) takes at most `timeout`, else
// kUnavailable. Auth-Status: WAIT pauses Auth-Wait seconds and asks again,
// at most kMaxWaitRounds times and kMaxWaitTotal in all (nginx has no
// bound), then kUnavailable. Any number of lookups run at once, each on its
// own connection.
//
// Lifetimes: an exchange's memory is freed after libuv's close callbacks
// for its two handles (socket and timer). The result is delivered after the
// connection is closed, so a callback never races the socket. cancel() and
// the destructor detach exchanges still closing: they call nobody back.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>

#include "lookup/http_auth.h"
#include "lookup/lookup.h"

namespace portico::proxy {

class HttpAuthLookup final : public DirectoryLookup {
 public:
  static constexpr std::uint32_t kMaxWaitRounds = 10;
  static constexpr std::chrono::seconds kMaxWaitTotal{60};

  // `loop.uvLoop()` must not be null.
  HttpAuthLookup(const LookupConfig& config, LookupLoop& loop, AuthHttpLimits limits = {});
  ~HttpAuthLookup() override;
  HttpAuthLookup(const HttpAuthLookup&) = delete;
  HttpAuthLookup& operator=(const HttpAuthLookup&) = delete;

  LookupId lookup(const LookupRequest& request, LookupCallback callback) override;
  void cancel(LookupId id) override;

  std::size_t inFlight() const { return queries_.size(); }

 private:
  class Exchange;
  struct Query;

  void startExchange(Query& query);
  // From an exchange whose handles are closed: its answer or failure.
  void exchangeDone(LookupId id, AuthHttpAnswer answer);
  void complete(LookupId id, LookupResult result);

  LookupLoop& loop_;
  AuthHttpTarget target_;
  AuthHttpHeaders headers_;
  std::chrono::milliseconds timeout_;
  AuthHttpLimits limits_;
  std::string service_;  // "127.0.0.1:9000" or "unix:/path", for errors
  LookupId next_id_ = 1;
  std::unordered_map<LookupId, std::unique_ptr<Query>> queries_;
};

}  // namespace portico::proxy
