#include "portico/net/tls_context.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <iterator>

#include <fmt/format.h>

#include "portico/ascii.h"
#include "tls_errors.h"

namespace portico::net {

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

namespace {

const unsigned char kAlpnImap[] = {4, 'i', 'm', 'a', 'p'};

int selectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kAlpnImap, sizeof(kAlpnImap), in, inlen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;  // no "imap" offered: go on without ALPN
}

int selectCertificate(SSL* ssl, int*, void* arg) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == nullptr) {
    return SSL_TLSEXT_ERR_OK;
  }
  auto* context = static_cast<ServerTlsContext*>(arg);
  if (SSL_CTX* ctx = context->contextFor(name)) {
    SSL_set_SSL_CTX(ssl, ctx);
  }
  return SSL_TLSEXT_ERR_OK;
}

Result<SSL_CTX*> newServerContext(const ServerCertificate& certificate, TlsVersion min_version) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    return Status::error("cannot create a TLS context: " + sslErrors());
  }
  SSL_CTX_set_min_proto_version(
      ctx, min_version == TlsVersion::kTls13 ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  // Session-id resumption (server cache) and tickets (OpenSSL's default,
  // with keys per context) both stay on.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  static const unsigned char kSessionContext[] = "portico-imap";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  SSL_CTX_set_alpn_select_cb(ctx, &selectAlpn, nullptr);
  const std::string& cert = certificate.cert;
  const std::string& key = certificate.key;
  Status status;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    status =
        Status::error(fmt::format("{}: cannot load the certificate chain: {}", cert, sslErrors()));
  } else if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    status = Status::error(fmt::format("{}: cannot load the private key: {}", key, sslErrors()));
  } else if (SSL_CTX_check_private_key(ctx) != 1) {
    status = Status::error(fmt::format("{}: the key does not match the certificate {}", key, cert));
  } else {
    return ctx;
  }
  SSL_CTX_free(ctx);
  return status;
}

bool matchesName(const std::string& pattern, const char* name) {
  if (equalsIgnoreCase(pattern, name)) {
    return true;
  }
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    const char* dot = std::strchr(name, '.');
    return dot != nullptr && equalsIgnoreCase(std::string_view(pattern).substr(1), dot);
  }
  return false;
}

bool isHexPin(std::string_view pin) {
  return pin.size() == 64 && std::all_of(pin.begin(), pin.end(), [](char c) {
           return std::isxdigit(static_cast<unsigned char>(c)) != 0;
         });
}

// The trust store and the client certificate of a client context.
Status loadClientTrust(SSL_CTX* ctx, const ClientTlsSettings& tls) {
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
      return Status::error(fmt::format("cannot load CA {}: {}",
                                       tls.ca.empty() ? "(system store)" : tls.ca, sslErrors()));
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
      return Status::error(fmt::format("cannot load client certificate {} / key {}: {}",
                                       tls.client_cert, key, sslErrors()));
    }
  }
  return Status();
}

}  // namespace

// ---------------------------------------------------------------------------
// Server side.

Result<std::shared_ptr<ServerTlsContext>> ServerTlsContext::create(
    const ServerTlsSettings& settings) {
  auto context = std::shared_ptr<ServerTlsContext>(new ServerTlsContext());
  Result<SSL_CTX*> ctx = newServerContext(settings.default_certificate, settings.min_version);
  if (!ctx.ok()) {
    return ctx.status();
  }
  context->contexts_.push_back(Entry{"", *ctx});
  for (const ServerCertificate& c : settings.certificates) {
    Result<SSL_CTX*> named = newServerContext(c, settings.min_version);
    if (!named.ok()) {
      return named.status();
    }
    context->contexts_.push_back(Entry{c.server_name, *named});
  }
  for (const Entry& e : context->contexts_) {
    SSL_CTX_set_tlsext_servername_callback(e.ctx, &selectCertificate);
    SSL_CTX_set_tlsext_servername_arg(e.ctx, context.get());
  }
  return context;
}

ServerTlsContext::~ServerTlsContext() {
  for (Entry& e : contexts_) {
    SSL_CTX_free(e.ctx);
  }
}

SSL_CTX* ServerTlsContext::contextFor(const char* server_name) const {
  for (std::size_t i = 1; i < contexts_.size(); ++i) {
    if (matchesName(contexts_[i].name, server_name)) {
      return contexts_[i].ctx;
    }
  }
  return nullptr;
}

// ---------------------------------------------------------------------------
// Client side.

Result<std::shared_ptr<ClientTlsContext>> ClientTlsContext::create(ClientTlsSettings settings) {
  const std::string prefix = settings.label.empty() ? "" : settings.label + ": ";
  if (!settings.pin_sha256.empty() && !isHexPin(settings.pin_sha256)) {
    return Status::error(
        prefix + "pin_sha256 must be 64 hex digits (SHA-256 of the certificate's public key)");
  }
  settings.pin_sha256 = asciiLowered(settings.pin_sha256);
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    return Status::error(prefix + "cannot create a TLS context: " + sslErrors());
  }
  auto context = std::shared_ptr<ClientTlsContext>(new ClientTlsContext());
  context->ctx_ = ctx;  // freed with the context from here on
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  if (SSL_CTX_set_alpn_protos(ctx, kAlpnImap, sizeof(kAlpnImap)) != 0) {
    return Status::error(prefix + "cannot offer ALPN: " + sslErrors());
  }
  if (Status loaded = loadClientTrust(ctx, settings); !loaded.ok()) {
    return Status::error(prefix + loaded.message());
  }
  context->settings_ = std::move(settings);
  return context;
}

ClientTlsContext::~ClientTlsContext() {
  SSL_CTX_free(ctx_);
}

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

}  // namespace portico::net
