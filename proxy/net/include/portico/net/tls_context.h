// TLS contexts: the only place an SSL_CTX is made, one factory per side.
// Their settings are net's own structs; the proxy's config and the health
// probes translate theirs into them.
//
// ServerTlsContext: a listener's certificates (one per SNI name plus the
// default), TLS 1.2 minimum by default, server cipher preference, session
// tickets and session-id resumption, ALPN "imap", no renegotiation,
// SSL_MODE_RELEASE_BUFFERS so idle sessions give their big buffers back.
//
// ClientTlsContext: a server's trust (CA file or directory, or the system
// store), expected name, optional SPKI SHA-256 pin and client certificate,
// ALPN "imap". A context is immutable once made and shared (shared_ptr) by
// every connection that uses it; connections run on TlsEngine.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "portico/status.h"

namespace portico::net {

enum class TlsVersion : std::uint8_t { kTls12, kTls13 };

struct ServerCertificate {
  std::string server_name;  // SNI name it answers: exact or "*.domain"
  std::string cert;         // PEM chain
  std::string key;          // PEM private key
};

struct ServerTlsSettings {
  ServerCertificate default_certificate;        // its server_name is not used
  std::vector<ServerCertificate> certificates;  // more, chosen by SNI
  TlsVersion min_version = TlsVersion::kTls12;
};

struct ClientTlsSettings {
  std::string label;        // errors start "LABEL: " ("backend b1"); may be empty
  std::string ca;           // CA file or directory; "" for the system store
  std::string server_name;  // sent as SNI and, with verify_name, expected
  bool verify = true;       // false: no chain or name check (a pin still applies)
  bool verify_name = true;  // false: the chain is checked, the name is not
  // Every certificate in `ca` is a trust anchor, even one that is not
  // self-signed (X509_V_FLAG_PARTIAL_CHAIN).
  bool partial_chain = false;
  std::string pin_sha256;   // "" or 64 hex digits (any case): SHA-256 of the SPKI
  std::string client_cert;  // optional client certificate chain (PEM)
  std::string client_key;   // its key; "" when it is in client_cert
};

class ServerTlsContext {
 public:
  // An error ("FILE: what is wrong") when a certificate or key cannot be
  // loaded.
  static Result<std::shared_ptr<ServerTlsContext>> create(const ServerTlsSettings& settings);
  ~ServerTlsContext();
  ServerTlsContext(const ServerTlsContext&) = delete;
  ServerTlsContext& operator=(const ServerTlsContext&) = delete;
  SSL_CTX* defaultContext() const { return contexts_.front().ctx; }
  // The context whose certificate answers `server_name` (exact or
  // "*.domain" wildcard, case-insensitive); nullptr when none does.
  SSL_CTX* contextFor(const char* server_name) const;

 private:
  ServerTlsContext() = default;
  struct Entry {
    std::string name;  // "" for the default certificate
    SSL_CTX* ctx;
  };
  std::vector<Entry> contexts_;
};

class ClientTlsContext {
 public:
  // An error ("LABEL: what is wrong") when the pin is malformed or the CA
  // or the client certificate cannot be loaded.
  static Result<std::shared_ptr<ClientTlsContext>> create(ClientTlsSettings settings);
  ~ClientTlsContext();
  ClientTlsContext(const ClientTlsContext&) = delete;
  ClientTlsContext& operator=(const ClientTlsContext&) = delete;
  SSL_CTX* context() const { return ctx_; }
  // The settings it was made from; the pin in lower case.
  const ClientTlsSettings& settings() const { return settings_; }

 private:
  ClientTlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
  ClientTlsSettings settings_;
};

// Hex SHA-256 of a certificate's SubjectPublicKeyInfo (for pins); "" if it
// has none.
std::string spkiSha256(X509* certificate);

}  // namespace portico::net
