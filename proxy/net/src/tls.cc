#include "tls.h"
#include "portico/ascii.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <strings.h>
#include <sys/stat.h>

#include <fmt/format.h>

namespace portico::proxy {

namespace {

// The OpenSSL error queue as one line (and cleared).
std::string sslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
  }
  return out.empty() ? std::string("unknown TLS error") : out;
}

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

Result<SSL_CTX*> newServerContext(const std::string& cert, const std::string& key,
                                  int min_version) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    return Status::error("cannot create a TLS context: " + sslErrors());
  }
  SSL_CTX_set_min_proto_version(ctx, min_version);
  SSL_CTX_set_options(
      ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  // Session-id resumption (server cache) and tickets (OpenSSL's default,
  // with keys per context) both stay on.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  static const unsigned char kSessionContext[] = "portico-imap";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  SSL_CTX_set_alpn_select_cb(ctx, &selectAlpn, nullptr);
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

bool isIpAddress(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

// ---------------------------------------------------------------------------
// Contexts.

Result<std::shared_ptr<ServerTlsContext>> ServerTlsContext::create(const ListenConfig& listen) {
  int min_version = listen.tls_min_version == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
  auto context = std::shared_ptr<ServerTlsContext>(new ServerTlsContext());
  Result<SSL_CTX*> ctx = newServerContext(listen.cert, listen.key, min_version);
  if (!ctx.ok()) {
    return ctx.status();
  }
  context->contexts_.push_back(Entry{"", *ctx});
  for (const CertificateConfig& c : listen.certificates) {
    Result<SSL_CTX*> named = newServerContext(c.cert, c.key, min_version);
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

Result<std::shared_ptr<ClientTlsContext>> ClientTlsContext::create(const BackendConfig& backend) {
  auto context = std::shared_ptr<ClientTlsContext>(new ClientTlsContext());
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    return Status::error("cannot create a TLS context: " + sslErrors());
  }
  context->ctx_ = ctx;
  context->server_name_ = backend.server_name.empty() ? backend.address.host : backend.server_name;
  context->verify_ = backend.verify;
  context->pin_ = backend.pin_sha256;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  if (backend.verify) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    int ok;
    if (backend.ca.empty()) {
      ok = SSL_CTX_set_default_verify_paths(ctx);
    } else {
      struct stat st {};
      bool is_dir = ::stat(backend.ca.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
      ok = is_dir ? SSL_CTX_load_verify_locations(ctx, nullptr, backend.ca.c_str())
                  : SSL_CTX_load_verify_locations(ctx, backend.ca.c_str(), nullptr);
    }
    if (ok != 1) {
      return Status::error(fmt::format("backend {}: cannot load CA {}: {}", backend.name,
                                       backend.ca.empty() ? "(system store)" : backend.ca,
                                       sslErrors()));
    }
  }
  if (!backend.client_cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, backend.client_cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, backend.client_key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      return Status::error(fmt::format("backend {}: cannot load client certificate {} / key {}: {}",
                                       backend.name, backend.client_cert, backend.client_key,
                                       sslErrors()));
    }
  }
  return context;
}

ClientTlsContext::~ClientTlsContext() {
  SSL_CTX_free(ctx_);
}

std::string spkiSha256(X509* certificate) {
  unsigned char* der = nullptr;
  int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(certificate), &der);
  if (len <= 0) {
    return {};
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_Digest(der, static_cast<std::size_t>(len), digest, &digest_len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  std::string hex;
  for (unsigned int i = 0; i < digest_len; ++i) {
    fmt::format_to(std::back_inserter(hex), "{:02x}", digest[i]);
  }
  return hex;
}

// ---------------------------------------------------------------------------
// TlsTransport.

TlsTransport::TlsTransport(Transport* inner, SSL* ssl, const TimerFactory& timers,
                           std::chrono::milliseconds timeout, BufferPool& pool, bool is_client)
    : inner_(inner),
      ssl_(ssl),
      rbio_(BIO_new(BIO_s_mem())),
      wbio_(BIO_new(BIO_s_mem())),
      timer_(timers([this] { onTimer(); })),
      handshake_timeout_(timeout),
      pool_(pool),
      is_client_(is_client) {
  BIO_set_mem_eof_return(rbio_, -1);  // empty means "want more", not EOF
  SSL_set_bio(ssl_, rbio_, wbio_);
  inner_->setHandler(this);
  inner_->setCarriesSecrets(false);  // ciphertext
  setCarriesSecrets(true);
}

std::pair<std::string, std::string> TlsTransport::tlsProtocolAndCipher() const {
  if (!handshake_done_) {
    return {};
  }
  const char* cipher = SSL_get_cipher_name(ssl_);
  return {SSL_get_version(ssl_), cipher != nullptr ? cipher : ""};
}

void TlsTransport::setCarriesSecrets(bool on) {
  secrets_ = on;
  if (on) {
    SSL_set_options(ssl_, SSL_OP_CLEANSE_PLAINTEXT);
  } else {
    SSL_clear_options(ssl_, SSL_OP_CLEANSE_PLAINTEXT);
  }
}

TlsTransport::~TlsTransport() {
  SSL_free(ssl_);
}

TlsTransport* TlsTransport::server(Transport* inner,
                                   std::shared_ptr<const ServerTlsContext> context,
                                   const TimerFactory& timers,
                                   std::chrono::milliseconds handshake_timeout, BufferPool& pool) {
  SSL* ssl = SSL_new(context->defaultContext());
  auto* t = new TlsTransport(inner, ssl, timers, handshake_timeout, pool, false);
  t->server_context_ = std::move(context);
  SSL_set_accept_state(ssl);
  t->startHandshake();
  return t;
}

TlsTransport* TlsTransport::client(Transport* inner,
                                   std::shared_ptr<const ClientTlsContext> context,
                                   const TimerFactory& timers,
                                   std::chrono::milliseconds handshake_timeout, BufferPool& pool,
                                   bool inner_connected, TransportHandler* handler,
                                   std::string preamble) {
  SSL* ssl = SSL_new(context->context());
  auto* t = new TlsTransport(inner, ssl, timers, handshake_timeout, pool, true);
  t->handler_ = handler;
  t->preamble_ = std::move(preamble);
  const std::string& name = context->serverName();
  if (!isIpAddress(name)) {
    SSL_set_tlsext_host_name(ssl, name.c_str());
  }
  if (context->verify()) {
    if (isIpAddress(name)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
    } else {
      SSL_set1_host(ssl, name.c_str());
    }
  }
  SSL_set_alpn_protos(ssl, kAlpnImap, sizeof(kAlpnImap));
  SSL_set_connect_state(ssl);
  t->client_context_ = std::move(context);
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
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_);
  flushCiphertext();
  if (closing_) {
    return;
  }
  if (rc == 1) {
    if (is_client_ && !verifyPin()) {
      return;
    }
    handshake_done_ = true;
    timer_->cancel();
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
    return;
  }
  int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    return;
  }
  std::string why = sslErrors();
  if (is_client_) {
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK) {
      why = fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(verify));
    }
  }
  handshakeFailed(why);
}

bool TlsTransport::verifyPin() {
  if (client_context_->pin().empty()) {
    return true;
  }
  X509* peer = SSL_get1_peer_certificate(ssl_);
  std::string actual = peer != nullptr ? spkiSha256(peer) : std::string();
  X509_free(peer);
  if (actual == client_context_->pin()) {
    return true;
  }
  handshakeFailed(
      fmt::format("certificate pin mismatch (SPKI SHA-256 {})", actual.empty() ? "none" : actual));
  return false;
}

void TlsTransport::handshakeFailed(const std::string& why) {
  tls_error_ = true;
  if (is_client_ && handler_ != nullptr && !closing_) {
    handler_->onConnected(this, false, "TLS handshake failed: " + why);
  }
  fail("TLS handshake failed: " + why);
}

void TlsTransport::fail(const std::string& reason) {
  if (close_reason_.empty()) {
    close_reason_ = reason;
  }
  close();
}

void TlsTransport::onTimer() {
  if (!handshake_done_) {
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
  if (!handshake_done_) {
    pending_out_.append(bytes);
    return;
  }
  ERR_clear_error();
  while (!bytes.empty()) {
    int n = SSL_write(ssl_, bytes.data(),
                      static_cast<int>(std::min<std::size_t>(bytes.size(), 1 << 30)));
    if (n <= 0) {
      fail("TLS write failed: " + sslErrors());
      return;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  flushCiphertext();
}

void TlsTransport::flushCiphertext() {
  while (BIO_ctrl_pending(wbio_) > 0) {
    Block* block = pool_.acquire();
    int n = BIO_read(wbio_, block->data(), static_cast<int>(block->capacity));
    if (n <= 0) {
      pool_.release(block);
      break;
    }
    inner_->write(Chunk(block, block->data(), static_cast<std::size_t>(n)));
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
  if (handshake_done_ && !closing_ && (SSL_pending(ssl_) > 0 || BIO_ctrl_pending(rbio_) > 0)) {
    timer_->arm(std::chrono::milliseconds(0));
  }
}

void TlsTransport::readPlaintext() {
  if (in_read_) {
    return;
  }
  in_read_ = true;
  while (want_read_ && !closing_ && handshake_done_) {
    // Fill one block with as many TLS records as are ready (backends often
    // send 4 KiB records): one chunk, so one write, per block rather than
    // per record.
    Block* block = pool_.acquire();
    std::size_t filled = 0;
    int n = 0;
    ERR_clear_error();
    while (filled < block->capacity) {
      n = SSL_read(ssl_, block->data() + filled, static_cast<int>(block->capacity - filled));
      if (n <= 0) {
        break;
      }
      filled += static_cast<std::size_t>(n);
    }
    // Read the error state now: the handler below may write on this SSL.
    int err = n > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl_, n);
    std::string errors = err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL ? sslErrors() : "";
    if (secrets_) {
      block->wipe_len = static_cast<std::uint32_t>(filled);  // plaintext of a login
    }
    if (filled > 0) {
      if (handler_ != nullptr) {
        handler_->onData(this, Chunk(block, block->data(), filled));
      } else {
        pool_.release(block);
      }
      if (n > 0) {
        continue;  // the block filled up: there may be more
      }
    } else {
      pool_.release(block);
    }
    if (closing_ || err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      break;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      fail("closed by peer");
    } else {
      tls_error_ = true;
      fail("TLS error: " + (errors.empty() ? std::string("connection lost") : errors));
    }
    break;
  }
  in_read_ = false;
  if (!closing_) {
    flushCiphertext();  // session tickets, key updates
  }
}

void TlsTransport::shutdown() {
  if (closing_) {
    return;
  }
  if (handshake_done_) {
    SSL_shutdown(ssl_);  // close_notify; we do not wait for the peer's
    flushCiphertext();
  }
  closing_ = true;
  timer_->cancel();
  inner_->shutdown();
}

void TlsTransport::close() {
  closing_ = true;
  timer_->cancel();
  inner_->close();
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
  BIO_write(rbio_, chunk.data(), static_cast<int>(chunk.size()));
  chunk.reset();
  if (!handshake_done_) {
    if (handshake_started_) {
      continueHandshake();
    }
    return;
  }
  readPlaintext();
}

void TlsTransport::onDrained(Transport*) {
  if (handler_ != nullptr && !closing_) {
    handler_->onDrained(this);
  }
}

void TlsTransport::onClosed(Transport*, std::string_view reason) {
  TransportHandler* handler = handler_;
  std::string why = close_reason_.empty() ? std::string(reason) : close_reason_;
  timer_.reset();
  if (handshake_done_ && !tls_error_) {
    // An orderly end (close_notify or a plain TCP close by the peer, which
    // many mail clients do): mark the connection shut down so SSL_free
    // keeps the session in the cache for resumption.
    SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  }
  if (handler != nullptr) {
    handler->onClosed(this, why);
  }
  delete this;
}

}  // namespace portico::proxy
