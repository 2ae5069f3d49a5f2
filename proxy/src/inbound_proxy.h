// The first stage of a connection on a proxy_protocol listener: reads the
// load balancer's PROXY header (v1 or v2, parser/proxy_header.h) before
// anything is written, with a bound on its size and on the time it may
// take, and hands the connection on with the client's addresses.
//
// Ownership: the reader is the transport's handler until it finishes. It
// finishes exactly once, by one of:
// - headerRead(): the header is complete; the reader has let go of the
//   transport (no handler set), `rest` holds the bytes that followed the
//   header (an IMAP command, a TLS ClientHello) for the next handler.
// - closed(): the connection is gone (refused, timed out, closed by the
//   peer); the transport has already freed itself.
// The reader deletes itself right after either call returns, so the host
// must drop its pointer there.
//
// Refusals are logged through a LogThrottle shared by the workers: at most
// one line a second, each with the count of refusals it stands for.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <string>

#include "log_throttle.h"
#include "net_types.h"
#include "portico/proxy_header.h"

namespace portico::proxy {

class InboundProxyReader;

class InboundProxyHost {
 public:
  virtual ~InboundProxyHost() = default;
  // `client` and `local` are the addresses the header carried, or the
  // connection's own for a LOCAL / UNKNOWN header.
  virtual void headerRead(InboundProxyReader* reader, Transport* transport,
                          const sockaddr_storage& client, const sockaddr_storage& local,
                          Chunk rest) = 0;
  virtual void closed(InboundProxyReader* reader) = 0;
};

class InboundProxyReader final : public TransportHandler {
 public:
  // Takes `transport` over (sets itself as its handler) and arms the timer.
  InboundProxyReader(InboundProxyHost& host, Transport* transport, std::string listener,
                     const std::function<TimerPtr(std::function<void()>)>& timers,
                     std::chrono::milliseconds timeout, LogThrottle& throttle);
  ~InboundProxyReader() override = default;

  // Closes the connection without a log line (worker shutdown).
  void abort();

  const std::string& listener() const { return listener_; }

  // Builds the addresses a header gives: the header's for TCP over IPv4 or
  // IPv6, else (LOCAL, UNKNOWN, UNSPEC, UNIX) the connection's own.
  static void addressesOf(const parser::ProxyHeader& header, const sockaddr_storage& own_peer,
                          const sockaddr_storage& own_local, sockaddr_storage& client,
                          sockaddr_storage& local);

  // TransportHandler
  void onConnected(Transport*, bool, std::string_view) override {}
  void onData(Transport* transport, Chunk chunk) override;
  void onDrained(Transport*) override {}
  void onClosed(Transport* transport, std::string_view reason) override;

 private:
  void refuse(const std::string& why);

  InboundProxyHost& host_;
  Transport* transport_;
  std::string listener_;
  TimerPtr timer_;
  std::chrono::milliseconds timeout_;
  LogThrottle& throttle_;
  parser::ProxyHeaderParser parser_;
  bool closing_ = false;
  bool logged_ = false;  // a refusal was logged (or deliberately not)
};

// Logs a refused proxy_protocol connection through `throttle` (one line a
// second at most, with the count). Also used for a peer outside
// trusted_networks, which is refused before any reader exists.
void logProxyRefusal(LogThrottle& throttle, const sockaddr_storage& peer,
                     const std::string& listener, const std::string& why);

}  // namespace portico::proxy
