// ImapProbe's TLS: the network layer's TlsEngine between sendBytes() and
// writeRaw() on the way out and between receivedBytes() and
// feedPlaintext() on the way in. See imap_probe.h for the protocol side;
// the context, verification and pin check are net's (tls_context.h).
#include <openssl/crypto.h>

#include <fmt/format.h>

#include "imap_probe.h"

namespace portico::health {

Status ImapProbe::createTls() {
  if (tls_context_ != nullptr) {
    return Status();  // from an earlier attempt
  }
  const ProbeTlsSettings& tls = spec_.tls;
  net::ClientTlsSettings settings;
  settings.ca = tls.ca;
  settings.server_name = tls.server_name.empty() ? bareHost(spec_.endpoint.host) : tls.server_name;
  settings.verify = tls.verify;
  settings.verify_name = tls.verify_name;
  settings.partial_chain = tls.partial_chain;
  settings.pin_sha256 = tls.pin_sha256;
  settings.client_cert = tls.client_cert;
  settings.client_key = tls.client_key;
  auto created = net::ClientTlsContext::create(std::move(settings));
  if (!created.ok()) {
    return created.status();
  }
  tls_context_ = std::move(*created);
  return Status();
}

void ImapProbe::startHandshake() {
  startStep(ProbeStep::kTls);
  command_trace_.clear();
  tls_ = net::TlsEngine::client(tls_context_);
  handshaking_ = true;
  continueHandshake();
}

void ImapProbe::continueHandshake() {
  std::string error;
  const net::TlsEngine::Handshake step = tls_->handshake(error);
  flushCiphertext();  // the next flight, or our alert
  if (phase_ != Phase::kRunning || step == net::TlsEngine::Handshake::kInProgress) {
    return;
  }
  if (step == net::TlsEngine::Handshake::kRejected) {
    attemptFailed(error);  // "certificate verify failed: ...", "certificate pin mismatch: ..."
    return;
  }
  if (step == net::TlsEngine::Handshake::kFailed) {
    attemptFailed("handshake failed: " + error);
    return;
  }
  handshaking_ = false;
  const auto [protocol, cipher] = tls_->protocolAndCipher();
  traceStep("ok",
            fmt::format("{} {}{}", protocol, cipher, spec_.tls.verify ? "" : " (not verified)"));
  if (spec_.tls.mode == ProbeTls::kImplicit) {
    startStep(ProbeStep::kGreeting);
  } else {
    // RFC 3501 6.2.1: capabilities are asked again (the client forgot
    // what was advertised before TLS).
    login_->tlsEstablished();
    startQueuedStep();
  }
}

void ImapProbe::readPlaintext() {
  char buffer[16 * 1024];
  while (phase_ == Phase::kRunning && tls_ != nullptr && !handshaking_) {
    const net::TlsEngine::ReadResult read = tls_->read(buffer, sizeof(buffer));
    if (read.filled > 0) {
      feedPlaintext(std::string_view(buffer, read.filled));
    }
    if (read.end == net::TlsEngine::ReadEnd::kFull) {
      continue;
    }
    if (read.end == net::TlsEngine::ReadEnd::kWantMore) {
      break;
    }
    if (phase_ != Phase::kRunning || tls_ == nullptr) {
      return;  // what was fed ended the attempt
    }
    if (read.end == net::TlsEngine::ReadEnd::kClosed) {
      peerClosed();  // close_notify
    } else {
      attemptFailed("TLS error: " + read.error);
    }
    return;
  }
  flushCiphertext();  // key updates and the like
}

void ImapProbe::flushCiphertext() {
  while (phase_ == Phase::kRunning && tls_ != nullptr) {
    const std::size_t pending = tls_->pendingCiphertext();
    if (pending == 0) {
      break;
    }
    std::string out(pending, '\0');
    out.resize(tls_->takeCiphertext(out.data(), out.size()));
    if (out.empty()) {
      break;
    }
    writeRaw(std::move(out));
  }
}

void ImapProbe::freeTls() {
  tls_.reset();
  handshaking_ = false;
}

void ImapProbe::receivedCiphertext(std::string_view bytes) {
  if (!tls_->receive(bytes)) {
    attemptFailed("TLS error: cannot buffer received data");
    return;
  }
  if (handshaking_) {
    continueHandshake();
    if (handshaking_ || phase_ != Phase::kRunning) {
      return;
    }
  }
  readPlaintext();
}

void ImapProbe::sendEncrypted(std::string bytes) {
  // The probe sends nothing while the handshake runs. A memory BIO takes
  // all of it at once.
  const Status written = tls_->write(bytes);
  OPENSSL_cleanse(bytes.data(), bytes.size());  // may hold the LOGIN line
  if (!written.ok()) {
    attemptFailed("TLS write failed: " + written.message());
    return;
  }
  flushCiphertext();
}

}  // namespace portico::health
