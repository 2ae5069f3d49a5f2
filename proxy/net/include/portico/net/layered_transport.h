// LayeredTransport: the common half of a Transport that runs over another
// one (TLS over TCP, DEFLATE over either). It owns the inner transport,
// hears its events, and forwards what a layer does not change: addresses,
// watermarks, ACKs, the TLS description, drain events and the close path.
// A layer frees itself after forwarding onClosed(), as every Transport.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "portico/net/transport.h"

namespace portico::net {

class LayeredTransport : public Transport, public TransportHandler {
 public:
  // Transport
  void setHandler(TransportHandler* handler) override { handler_ = handler; }
  void write(Chunk chunk) override { write(chunk.view()); }
  using Transport::write;
  std::size_t queuedBytes() const override { return inner_->queuedBytes(); }
  void setHighWatermark(std::size_t bytes) override { inner_->setHighWatermark(bytes); }
  void close() override;
  void setCarriesSecrets(bool on) override { inner_->setCarriesSecrets(on); }
  void acknowledgeNow() override { inner_->acknowledgeNow(); }  // the TCP connection's ACK
  std::pair<std::string, std::string> tlsProtocolAndCipher() const override {
    return inner_->tlsProtocolAndCipher();
  }
  const sockaddr_storage& peerAddress() const override { return inner_->peerAddress(); }
  const sockaddr_storage& localAddress() const override { return inner_->localAddress(); }

  // TransportHandler (events of the inner transport)
  void onDrained(Transport* inner) override;
  // Forwards the first reason given to fail(), else the inner one, then
  // frees this layer.
  void onClosed(Transport* inner, std::string_view reason) override;

 protected:
  // The layer makes itself the inner transport's handler once it is ready.
  explicit LayeredTransport(Transport* inner) : inner_(inner) {}
  ~LayeredTransport() override = default;
  // Closes with `reason` (the first one given wins).
  void fail(const std::string& reason);
  // In onClosed(), before the handler hears it.
  virtual void beforeClosed() {}

  Transport* inner_;
  TimerPtr timer_;  // the layer's own (handshake, deferred delivery); set by the layer
  TransportHandler* handler_ = nullptr;
  bool closing_ = false;

 private:
  std::string close_reason_;
};

}  // namespace portico::net
