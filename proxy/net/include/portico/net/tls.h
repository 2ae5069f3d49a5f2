// TLS for both sides of a session, with OpenSSL over memory BIOs.
//
// ServerTlsContext: a listener's certificates (one per SNI name plus the
// default), TLS 1.2 minimum by default, server cipher preference, session
// tickets and session-id resumption, ALPN "imap", no renegotiation,
// SSL_MODE_RELEASE_BUFFERS so idle sessions give their big buffers back.
//
// ClientTlsContext: a backend's trust (CA file or directory, or the system
// store), expected name, optional SPKI SHA-256 pin and client certificate.
//
// TlsTransport runs TLS over another Transport (the TCP connection): the
// session sees plaintext; the inner transport carries ciphertext. It owns
// the inner transport and frees itself after forwarding onClosed().
#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "portico/status.h"
#include "transport.h"

namespace portico::proxy {

class ServerTlsContext {
 public:
  // An error ("FILE: what is wrong") when a certificate or key cannot be
  // loaded.
  static Result<std::shared_ptr<ServerTlsContext>> create(const ListenConfig& listen);
  ~ServerTlsContext();
  SSL_CTX* defaultContext() const { return contexts_.front().ctx; }
  // The context whose certificate answers `server_name` (exact or
  // "*.domain" wildcard, case-insensitive); nullptr when none does.
  SSL_CTX* contextFor(const char* server_name) const;

 private:
  struct Entry {
    std::string name;  // "" for the default certificate
    SSL_CTX* ctx;
  };
  std::vector<Entry> contexts_;
};

class ClientTlsContext {
 public:
  // An error ("backend NAME: what is wrong") when the CA or the client
  // certificate cannot be loaded.
  static Result<std::shared_ptr<ClientTlsContext>> create(const BackendConfig& backend);
  ~ClientTlsContext();
  SSL_CTX* context() const { return ctx_; }
  const std::string& serverName() const { return server_name_; }
  bool verify() const { return verify_; }
  const std::string& pin() const { return pin_; }

 private:
  SSL_CTX* ctx_ = nullptr;
  std::string server_name_;
  bool verify_ = true;
  std::string pin_;
};

// Hex SHA-256 of a certificate's SubjectPublicKeyInfo (for pins).
std::string spkiSha256(X509* certificate);

using TimerFactory = std::function<TimerPtr(std::function<void()>)>;

class TlsTransport final : public Transport, public TransportHandler {
 public:
  // Server side over an accepted connection (implicit TLS or after STARTTLS).
  static TlsTransport* server(Transport* inner, std::shared_ptr<const ServerTlsContext> context,
                              const TimerFactory& timers,
                              std::chrono::milliseconds handshake_timeout, BufferPool& pool);
  // Client side. With `inner_connected` false the handshake starts when the
  // inner connection is up (implicit TLS); true starts it now (STARTTLS).
  // `preamble` (implicit TLS only) goes out in the clear on the inner
  // connection before the ClientHello: a PROXY protocol header, which the
  // peer reads before TLS as HAProxy and nginx send it.
  // The handler hears onConnected() once the handshake and verification are
  // done (or failed).
  static TlsTransport* client(Transport* inner, std::shared_ptr<const ClientTlsContext> context,
                              const TimerFactory& timers,
                              std::chrono::milliseconds handshake_timeout, BufferPool& pool,
                              bool inner_connected, TransportHandler* handler,
                              std::string preamble = {});

  bool handshakeDone() const { return handshake_done_; }

  // Transport
  void setHandler(TransportHandler* handler) override { handler_ = handler; }
  void write(Chunk chunk) override { write(chunk.view()); }
  void write(std::string_view bytes) override;
  std::size_t queuedBytes() const override;
  void setHighWatermark(std::size_t bytes) override { inner_->setHighWatermark(bytes); }
  void pauseReading() override;
  void resumeReading() override;
  void shutdown() override;
  void close() override;
  // Marks decrypted blocks for wiping and has OpenSSL cleanse the
  // plaintext it keeps (SSL_OP_CLEANSE_PLAINTEXT). The inner transport
  // carries only ciphertext and never wipes.
  void setCarriesSecrets(bool on) override;
  void acknowledgeNow() override { inner_->acknowledgeNow(); }  // the TCP connection's ACK
  std::pair<std::string, std::string> tlsProtocolAndCipher() const override;
  const sockaddr_storage& peerAddress() const override { return inner_->peerAddress(); }
  const sockaddr_storage& localAddress() const override { return inner_->localAddress(); }

  // TransportHandler (events of the inner transport)
  void onConnected(Transport* inner, bool ok, std::string_view error) override;
  void onData(Transport* inner, Chunk chunk) override;
  void onDrained(Transport* inner) override;
  void onClosed(Transport* inner, std::string_view reason) override;

 private:
  TlsTransport(Transport* inner, SSL* ssl, const TimerFactory& timers,
               std::chrono::milliseconds timeout, BufferPool& pool, bool is_client);
  ~TlsTransport() override;

  void startHandshake();
  void continueHandshake();
  bool verifyPin();
  void handshakeFailed(const std::string& why);
  void readPlaintext();
  void flushCiphertext();
  void onTimer();
  void fail(const std::string& reason);

  Transport* inner_;
  SSL* ssl_;
  BIO* rbio_;  // ciphertext from the peer, owned by ssl_
  BIO* wbio_;  // ciphertext to the peer, owned by ssl_
  TimerPtr timer_;
  std::chrono::milliseconds handshake_timeout_;
  BufferPool& pool_;
  TransportHandler* handler_ = nullptr;
  std::shared_ptr<const ServerTlsContext> server_context_;
  std::shared_ptr<const ClientTlsContext> client_context_;
  std::string pending_out_;  // plaintext written before the handshake finished
  std::string preamble_;     // cleartext for the inner connection before the ClientHello
  std::string close_reason_;
  bool is_client_;
  bool handshake_started_ = false;
  bool handshake_done_ = false;
  bool want_read_ = true;
  bool secrets_ = false;
  bool closing_ = false;
  bool in_read_ = false;
  bool tls_error_ = false;  // a TLS failure: do not keep the session for resumption
};

}  // namespace portico::proxy
