// The seams between a Session and the outside world, so the session state
// machine runs the same over libuv sockets and over fakes in unit tests.
//
// Transport: one byte stream (client or backend connection). Its handler's
// onClosed() is always the last call it makes; the transport frees itself
// after onClosed() returns, so the owner must drop its pointer there.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "portico/net/chunk.h"

namespace portico::net {

class Transport;

class TransportHandler {
 public:
  virtual ~TransportHandler() = default;
  // Outgoing connections only: the connect finished. ok=false is followed by onClosed().
  virtual void onConnected(Transport* transport, bool ok, std::string_view error) = 0;
  virtual void onData(Transport* transport, Chunk chunk) = 0;
  // The write queue fell to the low watermark after having passed the high one.
  virtual void onDrained(Transport* transport) = 0;
  // End of stream, error, or the result of close()/shutdown(). The last call.
  virtual void onClosed(Transport* transport, std::string_view reason) = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual void setHandler(TransportHandler* handler) = 0;
  virtual void write(Chunk chunk) = 0;             // zero-copy: keeps the block until written
  virtual void write(std::string_view bytes) = 0;  // copies
  virtual std::size_t queuedBytes() const = 0;
  virtual void setHighWatermark(std::size_t bytes) = 0;
  virtual void pauseReading() = 0;
  virtual void resumeReading() = 0;
  // Flush queued writes, then close. Bounded by the transport's own timer.
  virtual void shutdown() = 0;
  // Close now, dropping queued writes. Idempotent.
  virtual void close() = 0;
  // While on (the default from the start), what this transport reads or
  // copies may hold a secret (a LOGIN, a SASL payload): the buffers that
  // held it are zeroed before they are reused or freed. The session turns
  // it off once the login is over, so the relay pays nothing for it.
  virtual void setCarriesSecrets(bool on) = 0;
  // Acknowledge what was read now instead of after the kernel's delayed-ACK
  // timer (TCP_QUICKACK, one syscall). For a peer that is in the middle of
  // sending something and (Nagle on, as Python's imaplib leaves it) holds
  // its next small write until the last one is acknowledged: the literal
  // then its CRLF. Never needed when an answer follows at once (the ACK
  // rides on it), so the session asks only when a read ends mid-command.
  virtual void acknowledgeNow() {}
  virtual const sockaddr_storage& peerAddress() const = 0;
  virtual const sockaddr_storage& localAddress() const = 0;
  // TLS protocol and cipher as OpenSSL names them ("TLSv1.3",
  // "TLS_AES_256_GCM_SHA384") once a handshake is done; empty otherwise.
  virtual std::pair<std::string, std::string> tlsProtocolAndCipher() const { return {}; }
};

// "1.2.3.4:5678" or "[::1]:5678".
std::string formatAddress(const sockaddr_storage& address);

class Timer {
 public:
  virtual ~Timer() = default;
  virtual void arm(std::chrono::milliseconds delay) = 0;
  virtual void cancel() = 0;
};
using TimerPtr = std::unique_ptr<Timer>;
// Makes a timer that runs the callback on the transport's loop.
using TimerFactory = std::function<TimerPtr(std::function<void()>)>;

}  // namespace portico::net
