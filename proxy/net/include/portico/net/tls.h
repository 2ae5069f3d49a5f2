// TlsTransport runs TLS (a TlsEngine, see tls_engine.h; contexts in
// tls_context.h) over another Transport (the TCP connection): the session
// sees plaintext; the inner transport carries ciphertext. It owns the inner
// transport and frees itself after forwarding onClosed().
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "portico/net/layered_transport.h"
#include "portico/net/tls_context.h"
#include "portico/net/tls_engine.h"
#include "portico/net/transport.h"

namespace portico::net {

class TlsTransport final : public LayeredTransport {
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

  bool handshakeDone() const { return engine_->handshakeDone(); }

  // Transport
  using LayeredTransport::write;
  void write(std::string_view bytes) override;
  std::size_t queuedBytes() const override;
  void pauseReading() override;
  void resumeReading() override;
  void shutdown() override;
  // Marks decrypted blocks for wiping and has OpenSSL cleanse the
  // plaintext it keeps (SSL_OP_CLEANSE_PLAINTEXT). The inner transport
  // carries only ciphertext and never wipes.
  void setCarriesSecrets(bool on) override;
  std::pair<std::string, std::string> tlsProtocolAndCipher() const override {
    return engine_->protocolAndCipher();
  }

  // TransportHandler (events of the inner transport)
  void onConnected(Transport* inner, bool ok, std::string_view error) override;
  void onData(Transport* inner, Chunk chunk) override;

 private:
  TlsTransport(Transport* inner, std::unique_ptr<TlsEngine> engine, const TimerFactory& timers,
               std::chrono::milliseconds timeout, BufferPool& pool, bool is_client);
  ~TlsTransport() override;

  void startHandshake();
  void continueHandshake();
  void handshakeFailed(const std::string& why);
  void readPlaintext();
  void flushCiphertext();
  void onTimer();
  void beforeClosed() override;

  std::unique_ptr<TlsEngine> engine_;
  std::chrono::milliseconds handshake_timeout_;
  BufferPool& pool_;
  std::string pending_out_;  // plaintext written before the handshake finished
  std::string preamble_;     // cleartext for the inner connection before the ClientHello
  bool is_client_;
  bool handshake_started_ = false;
  bool want_read_ = true;
  bool secrets_ = false;
  bool in_read_ = false;
  bool tls_error_ = false;  // a TLS failure: do not keep the session for resumption
};

}  // namespace portico::net
