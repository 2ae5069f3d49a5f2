#include "portico/net/tls_engine.h"

#include <arpa/inet.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cstdlib>

#include <fmt/format.h>

#include "tls_errors.h"

namespace portico::net {

namespace {

bool isIpAddress(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

TlsEngine::TlsEngine(SSL* ssl)
    : ssl_(ssl), rbio_(BIO_new(BIO_s_mem())), wbio_(BIO_new(BIO_s_mem())) {
  if (ssl_ == nullptr || rbio_ == nullptr || wbio_ == nullptr) {
    // Out of memory at the start of a connection: nothing sensible is left
    // to do, as with any other allocation that fails.
    std::abort();
  }
  BIO_set_mem_eof_return(rbio_, -1);  // empty means "want more", not EOF
  SSL_set_bio(ssl_, rbio_, wbio_);
}

TlsEngine::~TlsEngine() {
  SSL_free(ssl_);  // and its BIOs
}

std::unique_ptr<TlsEngine> TlsEngine::server(std::shared_ptr<const ServerTlsContext> context) {
  auto engine = std::unique_ptr<TlsEngine>(new TlsEngine(SSL_new(context->defaultContext())));
  engine->server_context_ = std::move(context);  // the SNI callback's argument
  SSL_set_accept_state(engine->ssl_);
  return engine;
}

std::unique_ptr<TlsEngine> TlsEngine::client(std::shared_ptr<const ClientTlsContext> context) {
  ERR_clear_error();
  SSL* ssl = SSL_new(context->context());
  auto engine = std::unique_ptr<TlsEngine>(new TlsEngine(ssl));
  const ClientTlsSettings& tls = context->settings();
  const std::string& name = tls.server_name;
  const bool ip = isIpAddress(name);
  if (!ip && !name.empty()) {
    SSL_set_tlsext_host_name(ssl, name.c_str());
  }
  if (tls.verify && tls.verify_name && !name.empty()) {
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str())
                      : SSL_set1_host(ssl, name.c_str());
    if (ok != 1) {
      engine->setup_error_ = fmt::format("cannot expect the name \"{}\": {}", name, sslErrors());
    }
  }
  SSL_set_connect_state(ssl);
  engine->client_context_ = std::move(context);
  return engine;
}

TlsEngine::Handshake TlsEngine::handshake(std::string& error) {
  if (!setup_error_.empty()) {
    error = setup_error_;
    return Handshake::kFailed;
  }
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    if (client_context_ != nullptr) {
      if (Status pinned = pinMatches(); !pinned.ok()) {
        error = pinned.message();
        return Handshake::kRejected;
      }
    }
    done_ = true;
    return Handshake::kDone;
  }
  const int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    return Handshake::kInProgress;
  }
  if (client_context_ != nullptr) {
    const long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK) {
      ERR_clear_error();
      error = fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(verify));
      return Handshake::kRejected;
    }
  }
  error = sslErrors();
  return Handshake::kFailed;
}

Status TlsEngine::pinMatches() const {
  const std::string& pin = client_context_->settings().pin_sha256;
  if (pin.empty()) {
    return Status();
  }
  X509* peer = SSL_get1_peer_certificate(ssl_);
  const std::string actual = peer != nullptr ? spkiSha256(peer) : std::string();
  X509_free(peer);
  if (!actual.empty() && actual == pin) {
    return Status();
  }
  return Status::error(fmt::format("certificate pin mismatch: the server's SPKI SHA-256 is {}",
                                   actual.empty() ? "unknown" : actual));
}

bool TlsEngine::receive(std::string_view ciphertext) {
  return BIO_write(rbio_, ciphertext.data(), static_cast<int>(ciphertext.size())) ==
         static_cast<int>(ciphertext.size());
}

std::size_t TlsEngine::pendingCiphertext() const {
  return BIO_ctrl_pending(wbio_);
}

std::size_t TlsEngine::takeCiphertext(char* out, std::size_t capacity) {
  const int n = BIO_read(wbio_, out, static_cast<int>(capacity));
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

TlsEngine::ReadResult TlsEngine::read(char* out, std::size_t capacity) {
  ReadResult result;
  int n = 0;
  ERR_clear_error();
  while (result.filled < capacity) {
    n = SSL_read(ssl_, out + result.filled, static_cast<int>(capacity - result.filled));
    if (n <= 0) {
      break;
    }
    result.filled += static_cast<std::size_t>(n);
  }
  if (n > 0) {
    result.end = ReadEnd::kFull;
    return result;
  }
  const int err = SSL_get_error(ssl_, n);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    result.end = ReadEnd::kWantMore;
  } else if (err == SSL_ERROR_ZERO_RETURN) {
    result.end = ReadEnd::kClosed;
  } else {
    result.end = ReadEnd::kFailed;
    result.error =
        err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL ? sslErrors() : "connection lost";
  }
  return result;
}

Status TlsEngine::write(std::string_view plaintext) {
  ERR_clear_error();
  while (!plaintext.empty()) {
    const int n = SSL_write(ssl_, plaintext.data(),
                            static_cast<int>(std::min<std::size_t>(plaintext.size(), 1 << 30)));
    if (n <= 0) {
      return Status::error(sslErrors());
    }
    plaintext.remove_prefix(static_cast<std::size_t>(n));
  }
  return Status();
}

namespace {

std::size_t bioCapacity(BIO* bio) {
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio, &mem);
  return mem != nullptr ? mem->max : 0;
}

}  // namespace

void TlsEngine::releaseBuffers(std::size_t keep) {
  if (BIO_ctrl_pending(rbio_) == 0 && bioCapacity(rbio_) > keep) {
    if (BIO* fresh = BIO_new(BIO_s_mem()); fresh != nullptr) {
      BIO_set_mem_eof_return(fresh, -1);
      SSL_set0_rbio(ssl_, fresh);  // frees the old one
      rbio_ = fresh;
    }
  }
  if (BIO_ctrl_pending(wbio_) == 0 && bioCapacity(wbio_) > keep) {
    if (BIO* fresh = BIO_new(BIO_s_mem()); fresh != nullptr) {
      SSL_set0_wbio(ssl_, fresh);
      wbio_ = fresh;
    }
  }
}

bool TlsEngine::hasUnreadInput() const {
  return SSL_pending(ssl_) > 0 || BIO_ctrl_pending(rbio_) > 0;
}

void TlsEngine::setCleansePlaintext(bool on) {
  if (on) {
    SSL_set_options(ssl_, SSL_OP_CLEANSE_PLAINTEXT);
  } else {
    SSL_clear_options(ssl_, SSL_OP_CLEANSE_PLAINTEXT);
  }
}

void TlsEngine::sendCloseNotify() {
  SSL_shutdown(ssl_);  // we do not wait for the peer's
}

void TlsEngine::markOrderlyEnd() {
  SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
}

std::pair<std::string, std::string> TlsEngine::protocolAndCipher() const {
  if (!done_) {
    return {};
  }
  const char* cipher = SSL_get_cipher_name(ssl_);
  return {SSL_get_version(ssl_), cipher != nullptr ? cipher : ""};
}

}  // namespace portico::net
