#include "portico/net/tls.h"

#include <string.h>

#include <algorithm>

namespace portico::net {

TlsTransport::TlsTransport(Transport* inner, std::unique_ptr<TlsEngine> engine,
                           const TimerFactory& timers, std::chrono::milliseconds timeout,
                           BufferPool& pool, bool is_client)
    : LayeredTransport(inner),
      engine_(std::move(engine)),
      handshake_timeout_(timeout),
      pool_(pool),
      is_client_(is_client) {
  timer_ = timers([this] { onTimer(); });
  inner_->setHandler(this);
  inner_->setCarriesSecrets(false);  // ciphertext
  setCarriesSecrets(true);
}

void TlsTransport::setCarriesSecrets(bool on) {
  secrets_ = on;
  engine_->setCleansePlaintext(on);
}

TlsTransport::~TlsTransport() = default;

TlsTransport* TlsTransport::server(Transport* inner,
                                   std::shared_ptr<const ServerTlsContext> context,
                                   const TimerFactory& timers,
                                   std::chrono::milliseconds handshake_timeout, BufferPool& pool) {
  auto* t = new TlsTransport(inner, TlsEngine::server(std::move(context)), timers,
                             handshake_timeout, pool, false);
  t->startHandshake();
  return t;
}

TlsTransport* TlsTransport::client(Transport* inner,
                                   std::shared_ptr<const ClientTlsContext> context,
                                   const TimerFactory& timers,
                                   std::chrono::milliseconds handshake_timeout, BufferPool& pool,
                                   bool inner_connected, TransportHandler* handler,
                                   std::string preamble) {
  auto* t = new TlsTransport(inner, TlsEngine::client(std::move(context)), timers,
                             handshake_timeout, pool, true);
  t->handler_ = handler;
  t->preamble_ = std::move(preamble);
  if (inner_connected) {
    t->startHandshake();
  } else {
    t->timer_->arm(handshake_timeout);  // covers the TCP connect as well
  }
  return t;
}

void TlsTransport::startHandshake() {
  handshake_started_ = true;
  timer_->arm(handshake_timeout_);
  continueHandshake();
}

void TlsTransport::continueHandshake() {
  std::string why;
  const TlsEngine::Handshake step = engine_->handshake(why);
  flushCiphertext();  // the next flight, or our alert
  if (closing_ || step == TlsEngine::Handshake::kInProgress) {
    return;
  }
  if (step != TlsEngine::Handshake::kDone) {
    handshakeFailed(why);
    return;
  }
  timer_->cancel();
  engine_->releaseBuffers(0);  // the handshake's: an idle connection keeps none
  if (is_client_ && handler_ != nullptr) {
    handler_->onConnected(this, true, "");
  }
  if (closing_) {
    return;
  }
  if (!pending_out_.empty()) {
    std::string out = std::move(pending_out_);
    pending_out_.clear();
    write(out);
    if (secrets_) {
      explicit_bzero(out.data(), out.size());
    }
  }
  readPlaintext();
}

void TlsTransport::handshakeFailed(const std::string& why) {
  tls_error_ = true;
  if (is_client_ && handler_ != nullptr && !closing_) {
    handler_->onConnected(this, false, "TLS handshake failed: " + why);
  }
  fail("TLS handshake failed: " + why);
}

void TlsTransport::onTimer() {
  if (!engine_->handshakeDone()) {
    if (is_client_ && handler_ != nullptr && !closing_) {
      handler_->onConnected(this, false, "TLS handshake timeout");
    }
    fail("TLS handshake timeout");
    return;
  }
  readPlaintext();  // deferred delivery after resumeReading()
}

void TlsTransport::write(std::string_view bytes) {
  if (closing_ || bytes.empty()) {
    return;
  }
  if (!engine_->handshakeDone()) {
    pending_out_.append(bytes);
    return;
  }
  if (Status written = engine_->write(bytes); !written.ok()) {
    fail("TLS write failed: " + written.message());
    return;
  }
  flushCiphertext();
}

void TlsTransport::flushCiphertext() {
  while (engine_->pendingCiphertext() > 0) {
    Block* block = pool_.acquire();
    const std::size_t n = engine_->takeCiphertext(block->data(), block->capacity);
    if (n == 0) {
      pool_.release(block);
      break;
    }
    inner_->write(Chunk(block, block->data(), n));
  }
  if (engine_->handshakeDone()) {
    engine_->releaseBuffers(TlsEngine::kKeepBufferBytes);
  }
}

std::size_t TlsTransport::queuedBytes() const {
  return inner_->queuedBytes() + pending_out_.size();
}

void TlsTransport::pauseReading() {
  want_read_ = false;
  inner_->pauseReading();
}

void TlsTransport::resumeReading() {
  want_read_ = true;
  inner_->resumeReading();
  // Plaintext may already sit decrypted inside OpenSSL or the read BIO;
  // deliver it from the loop, never from inside the caller's stack.
  if (engine_->handshakeDone() && !closing_ && engine_->hasUnreadInput()) {
    timer_->arm(std::chrono::milliseconds(0));
  }
}

void TlsTransport::readPlaintext() {
  if (in_read_) {
    return;
  }
  in_read_ = true;
  while (want_read_ && !closing_ && engine_->handshakeDone()) {
    // Fill one block with as many TLS records as are ready (backends often
    // send 4 KiB records): one chunk, so one write, per block rather than
    // per record. The result is read before the handler, which may write.
    Block* block = pool_.acquire();
    TlsEngine::ReadResult read = engine_->read(block->data(), block->capacity);
    if (secrets_) {
      block->wipe_len = static_cast<std::uint32_t>(read.filled);  // plaintext of a login
    }
    if (read.filled > 0 && handler_ != nullptr) {
      handler_->onData(this, Chunk(block, block->data(), read.filled));
    } else {
      pool_.release(block);
    }
    if (read.end == TlsEngine::ReadEnd::kFull) {
      continue;  // the block filled up: there may be more
    }
    if (closing_ || read.end == TlsEngine::ReadEnd::kWantMore) {
      break;
    }
    if (read.end == TlsEngine::ReadEnd::kClosed) {
      fail("closed by peer");
    } else {
      tls_error_ = true;
      fail("TLS error: " + read.error);
    }
    break;
  }
  in_read_ = false;
  if (!closing_) {
    flushCiphertext();  // session tickets, key updates
    engine_->releaseBuffers(TlsEngine::kKeepBufferBytes);
  }
}

void TlsTransport::shutdown() {
  if (closing_) {
    return;
  }
  if (engine_->handshakeDone()) {
    engine_->sendCloseNotify();
    flushCiphertext();
  }
  closing_ = true;
  timer_->cancel();
  inner_->shutdown();
}

void TlsTransport::onConnected(Transport*, bool ok, std::string_view error) {
  if (!ok) {
    if (handler_ != nullptr) {
      handler_->onConnected(this, false, error);
    }
    return;  // the inner transport closes itself; onClosed follows
  }
  if (!preamble_.empty()) {
    // Cleartext ahead of TLS (a PROXY header): the inner transport sends
    // it before the ClientHello that startHandshake() queues.
    inner_->write(std::string_view(preamble_));
    preamble_ = std::string();
  }
  startHandshake();
}

void TlsTransport::onData(Transport*, Chunk chunk) {
  if (closing_) {
    return;
  }
  const bool buffered = engine_->receive(chunk.view());
  chunk.reset();
  if (!buffered) {
    tls_error_ = true;
    fail("TLS error: cannot buffer received data");
    return;
  }
  if (!engine_->handshakeDone()) {
    if (handshake_started_) {
      continueHandshake();
    }
    return;
  }
  readPlaintext();
}

void TlsTransport::beforeClosed() {
  if (engine_->handshakeDone() && !tls_error_) {
    // An orderly end (close_notify or a plain TCP close by the peer, which
    // many mail clients do): mark the connection shut down so SSL_free
    // keeps the session in the cache for resumption.
    engine_->markOrderlyEnd();
  }
}

}  // namespace portico::net
