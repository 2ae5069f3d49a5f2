// ImapProbe's TLS: OpenSSL over memory BIOs, between sendBytes() and
// writeRaw() on the way out and between receivedBytes() and
// feedPlaintext() on the way in. See imap_probe.h for the protocol side.
#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <iterator>

#include <fmt/format.h>

#include "imap_probe.h"
#include "portico/ascii.h"

namespace portico::health {
namespace {

constexpr unsigned char kAlpnImap[] = {4, 'i', 'm', 'a', 'p'};

// The OpenSSL error queue as one line, reasons only (and cleared).
std::string sslErrors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    if (!out.empty()) {
      out += "; ";
    }
    if (const char* reason = ERR_reason_error_string(e)) {
      out += reason;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof(buf));
      out += buf;
    }
  }
  return out.empty() ? std::string("unknown TLS error") : out;
}

bool isIpAddress(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool isHexPin(std::string_view pin) {
  return pin.size() == 64 && std::all_of(pin.begin(), pin.end(), [](char c) {
           return std::isxdigit(static_cast<unsigned char>(c)) != 0;
         });
}

// Hex SHA-256 of a certificate's SubjectPublicKeyInfo; "" if it has none.
std::string spkiSha256(X509* certificate) {
  unsigned char* der = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(certificate), &der);
  if (len <= 0) {
    return {};
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  const int ok =
      EVP_Digest(der, static_cast<std::size_t>(len), digest, &digest_len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  if (ok != 1) {
    return {};
  }
  std::string hex;
  for (unsigned int i = 0; i < digest_len; ++i) {
    fmt::format_to(std::back_inserter(hex), "{:02x}", digest[i]);
  }
  return hex;
}

}  // namespace

bool ImapProbe::createTls(std::string& error) {
  const ProbeTlsSettings& tls = spec_.tls;
  if (!tls.pin_sha256.empty() && !isHexPin(tls.pin_sha256)) {
    error = "pin_sha256 must be 64 hex digits (SHA-256 of the certificate's public key)";
    return false;
  }
  if (tls_ctx_ != nullptr) {
    return true;  // from an earlier attempt
  }
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    error = "cannot create a TLS context: " + sslErrors();
    return false;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  if (tls.verify) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    int ok;
    if (tls.ca.empty()) {
      ok = SSL_CTX_set_default_verify_paths(ctx);
    } else {
      struct stat st {};
      const bool is_dir = ::stat(tls.ca.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
      ok = is_dir ? SSL_CTX_load_verify_locations(ctx, nullptr, tls.ca.c_str())
                  : SSL_CTX_load_verify_locations(ctx, tls.ca.c_str(), nullptr);
    }
    if (ok != 1) {
      error = fmt::format("cannot load CA {}: {}", tls.ca.empty() ? "(system store)" : tls.ca,
                          sslErrors());
      SSL_CTX_free(ctx);
      return false;
    }
    if (tls.partial_chain) {
      X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_PARTIAL_CHAIN);
    }
  }
  if (!tls.client_cert.empty()) {
    const std::string& key = tls.client_key.empty() ? tls.client_cert : tls.client_key;
    if (SSL_CTX_use_certificate_chain_file(ctx, tls.client_cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      error = fmt::format("cannot load client certificate {} / key {}: {}", tls.client_cert, key,
                          sslErrors());
      SSL_CTX_free(ctx);
      return false;
    }
  }
  tls_ctx_ = ctx;
  return true;
}

void ImapProbe::startHandshake() {
  startStep(ProbeStep::kTls);
  command_trace_.clear();
  ERR_clear_error();
  ssl_ = SSL_new(tls_ctx_);
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (ssl_ == nullptr || rbio == nullptr || wbio == nullptr) {
    BIO_free(rbio);
    BIO_free(wbio);
    attemptFailed("cannot start TLS: " + sslErrors());
    return;
  }
  BIO_set_mem_eof_return(rbio, -1);  // empty means "want more", not EOF
  SSL_set_bio(ssl_, rbio, wbio);
  rbio_ = rbio;
  wbio_ = wbio;
  const ProbeTlsSettings& tls = spec_.tls;
  const std::string name =
      tls.server_name.empty() ? bareHost(spec_.endpoint.host) : tls.server_name;
  const bool ip = isIpAddress(name);
  if (!ip && !name.empty()) {
    SSL_set_tlsext_host_name(ssl_, name.c_str());
  }
  if (tls.verify && tls.verify_name && !name.empty()) {
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str())
                      : SSL_set1_host(ssl_, name.c_str());
    if (ok != 1) {
      attemptFailed(fmt::format("cannot expect the name \"{}\": {}", name, sslErrors()));
      return;
    }
  }
  SSL_set_alpn_protos(ssl_, kAlpnImap, sizeof(kAlpnImap));
  SSL_set_connect_state(ssl_);
  handshaking_ = true;
  continueHandshake();
}

void ImapProbe::continueHandshake() {
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  const int err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
  flushCiphertext();  // the next flight, or our alert
  if (phase_ != Phase::kRunning) {
    return;
  }
  if (rc == 1) {
    handshaking_ = false;
    if (!checkPin()) {
      return;
    }
    traceStep("ok", fmt::format("{} {}{}", SSL_get_version(ssl_), SSL_get_cipher_name(ssl_),
                                spec_.tls.verify ? "" : " (not verified)"));
    if (spec_.tls.mode == ProbeTls::kImplicit) {
      startStep(ProbeStep::kGreeting);
    } else {
      // RFC 3501 6.2.1: forget what was advertised before TLS.
      login_disabled_ = false;
      starttls_advertised_ = false;
      nextCommand();
    }
    return;
  }
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    return;
  }
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    ERR_clear_error();
    attemptFailed(
        fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(verify)));
  } else {
    attemptFailed("handshake failed: " + sslErrors());
  }
}

bool ImapProbe::checkPin() {
  const std::string& pin = spec_.tls.pin_sha256;
  if (pin.empty()) {
    return true;
  }
  X509* peer = SSL_get1_peer_certificate(ssl_);
  const std::string actual = peer != nullptr ? spkiSha256(peer) : std::string();
  X509_free(peer);
  if (!actual.empty() && equalsIgnoreCase(actual, pin)) {
    return true;
  }
  attemptFailed(fmt::format("certificate pin mismatch: the server's SPKI SHA-256 is {}",
                            actual.empty() ? "unknown" : actual));
  return false;
}

void ImapProbe::readPlaintext() {
  char buffer[16 * 1024];
  while (phase_ == Phase::kRunning && ssl_ != nullptr && !handshaking_) {
    ERR_clear_error();
    const int n = SSL_read(ssl_, buffer, static_cast<int>(sizeof(buffer)));
    if (n > 0) {
      feedPlaintext(std::string_view(buffer, static_cast<std::size_t>(n)));
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      break;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      peerClosed();  // close_notify
    } else {
      attemptFailed("TLS error: " + sslErrors());
    }
    return;
  }
  flushCiphertext();  // key updates and the like
}

void ImapProbe::flushCiphertext() {
  while (phase_ == Phase::kRunning && wbio_ != nullptr) {
    const std::size_t pending = BIO_ctrl_pending(wbio_);
    if (pending == 0) {
      break;
    }
    std::string out(pending, '\0');
    const int n = BIO_read(wbio_, out.data(), static_cast<int>(pending));
    if (n <= 0) {
      break;
    }
    out.resize(static_cast<std::size_t>(n));
    writeRaw(std::move(out));
  }
}

void ImapProbe::freeTls() {
  SSL_free(ssl_);  // and its BIOs
  ssl_ = nullptr;
  rbio_ = nullptr;
  wbio_ = nullptr;
  handshaking_ = false;
}

void ImapProbe::receivedCiphertext(std::string_view bytes) {
  if (BIO_write(rbio_, bytes.data(), static_cast<int>(bytes.size())) !=
      static_cast<int>(bytes.size())) {
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
  ERR_clear_error();
  const int n = SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size()));
  OPENSSL_cleanse(bytes.data(), bytes.size());  // may hold the LOGIN line
  if (n <= 0) {
    attemptFailed("TLS write failed: " + sslErrors());
    return;
  }
  flushCiphertext();
}

}  // namespace portico::health
