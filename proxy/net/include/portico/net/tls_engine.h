// TlsEngine: one TLS connection as OpenSSL over memory BIOs, with no I/O of
// its own. The owner moves bytes: ciphertext from the peer goes in through
// receive(), ciphertext for the peer comes out of takeCiphertext(), and
// plaintext goes through read() and write(). TlsTransport runs it under a
// Transport; the health probes run it under their own socket, so both have
// one TLS stack: one handshake, one verification, one pin check.
//
// Errors are text for logs and probe results; none holds plaintext.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "portico/net/tls_context.h"
#include "portico/status.h"

namespace portico::net {

class TlsEngine {
 public:
  // Accepts a connection; the certificate follows the client's SNI.
  static std::unique_ptr<TlsEngine> server(std::shared_ptr<const ServerTlsContext> context);
  // Connects: SNI, and the expected name (DNS name or IP address) when the
  // context verifies names. If OpenSSL cannot set them up, the first
  // handshake() fails with the reason.
  static std::unique_ptr<TlsEngine> client(std::shared_ptr<const ClientTlsContext> context);
  ~TlsEngine();
  TlsEngine(const TlsEngine&) = delete;
  TlsEngine& operator=(const TlsEngine&) = delete;

  enum class Handshake : std::uint8_t {
    kInProgress,  // wants more bytes from the peer (send takeCiphertext() first)
    kDone,        // done, verified and (client) pin checked
    kRejected,    // client: the peer's certificate failed verification or the pin
    kFailed,      // the protocol failed (alert, garbage, no shared cipher, ...)
  };
  // Runs the handshake as far as the received bytes allow. On kRejected
  // and kFailed, `error` says why ("certificate verify failed: hostname
  // mismatch", "certificate pin mismatch: ...", "wrong version number").
  Handshake handshake(std::string& error);
  bool handshakeDone() const { return done_; }

  // Ciphertext from the peer; false if the memory BIO refuses it.
  bool receive(std::string_view ciphertext);
  // Ciphertext waiting for the peer, and taking up to `capacity` of it.
  std::size_t pendingCiphertext() const;
  std::size_t takeCiphertext(char* out, std::size_t capacity);

  enum class ReadEnd : std::uint8_t {
    kFull,      // `out` is full: there may be more
    kWantMore,  // everything received is read
    kClosed,    // the peer sent close_notify
    kFailed,    // a TLS error; `error` says which
  };
  struct ReadResult {
    std::size_t filled = 0;
    ReadEnd end = ReadEnd::kWantMore;
    std::string error;
  };
  // Decrypts as many received records as fit into `out` (many small
  // records become one read). Only after the handshake.
  ReadResult read(char* out, std::size_t capacity);
  // Encrypts `plaintext` (after the handshake); the records then wait in
  // takeCiphertext().
  Status write(std::string_view plaintext);
  // Plaintext or ciphertext received and not yet read.
  bool hasUnreadInput() const;
  // A memory BIO keeps the largest buffer it ever needed (the handshake's
  // flights on an idle connection, 64 KiB on one that once carried a big
  // message). Replaces each BIO that is empty and holds more than `keep`
  // bytes by a fresh one, so that memory goes back to the allocator.
  void releaseBuffers(std::size_t keep);
  // What releaseBuffers() leaves alone between reads and writes: small
  // commands reuse it.
  static constexpr std::size_t kKeepBufferBytes = 4096;

  // On: OpenSSL wipes the plaintext it keeps (SSL_OP_CLEANSE_PLAINTEXT),
  // for connections that carry a LOGIN.
  void setCleansePlaintext(bool on);
  // Queues close_notify (takeCiphertext() then has it).
  void sendCloseNotify();
  // The connection ended in good order: SSL_free then keeps the session
  // for resumption.
  void markOrderlyEnd();
  // "TLSv1.3" and "TLS_AES_256_GCM_SHA384" once the handshake is done.
  std::pair<std::string, std::string> protocolAndCipher() const;

 private:
  explicit TlsEngine(SSL* ssl);
  Status pinMatches() const;

  SSL* ssl_;
  BIO* rbio_;  // ciphertext from the peer, owned by ssl_
  BIO* wbio_;  // ciphertext to the peer, owned by ssl_
  std::shared_ptr<const ServerTlsContext> server_context_;
  std::shared_ptr<const ClientTlsContext> client_context_;
  std::string setup_error_;  // handshake() fails with it
  bool done_ = false;
};

}  // namespace portico::net
