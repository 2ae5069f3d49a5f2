// ImapProbe against an in-test libuv IMAP server on 127.0.0.1: success,
// wrong password, a server that never greets, connection refused, retries,
// cancel; and over TLS (implicit and STARTTLS) with certificates made at
// test time: trust, names, pins, a stalled handshake, injected plaintext.
// Every test ends with a loop that has no live handle.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <uv.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "fake_imap_server.h"
#include "imap_probe.h"
#include "portico/health.h"

namespace portico::health {

inline void PrintTo(ResultType type, std::ostream* os) {
  *os << resultTypeName(type);
}
inline void PrintTo(ProbeStep step, std::ostream* os) {
  *os << probeStepName(step);
}

namespace {

using fakes::FakeImapServer;

// --- certificates made at test time -----------------------------------------

struct KeyPair {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
};

void addExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A P-256 key and a certificate for it: a CA (self-signed when `issuer` is
// null) or a server leaf with the given subjectAltName.
KeyPair makeCertificate(const std::string& common_name, const KeyPair* issuer, const char* san) {
  static long serial = 1;
  KeyPair out;
  out.key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  out.cert = cert;
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, out.key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  X509* issuer_cert = issuer != nullptr ? issuer->cert : cert;
  X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  if (san == nullptr) {
    addExtension(cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    addExtension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    addExtension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    addExtension(cert, issuer_cert, NID_key_usage, "critical,digitalSignature");
    addExtension(cert, issuer_cert, NID_ext_key_usage, "serverAuth");
    addExtension(cert, issuer_cert, NID_subject_alt_name, san);
  }
  X509_sign(cert, issuer != nullptr ? issuer->key : out.key, EVP_sha256());
  return out;
}

void writePem(const std::string& path, X509* cert) {
  FILE* file = std::fopen(path.c_str(), "w");
  ASSERT_NE(file, nullptr) << path;
  PEM_write_X509(file, cert);
  std::fclose(file);
}

std::string spkiPin(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_Digest(der, static_cast<std::size_t>(len), digest, &digest_len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  std::string hex;
  for (unsigned int i = 0; i < digest_len; ++i) {
    char two[3];
    std::snprintf(two, sizeof(two), "%02x", digest[i]);
    hex += two;
  }
  return hex;
}

// CA one signs the server's certificate (imap.test, 127.0.0.1); CA two is
// a stranger. Files: ca1.pem, ca2.pem, leaf.pem (the server's, alone).
struct TestPki {
  std::string dir;
  std::string ca1, ca2, leaf;
  std::string pin;  // the server key's SPKI SHA-256
  SSL_CTX* server = nullptr;

  TestPki() {
    char pattern[] = "/tmp/portico-probe-tls-XXXXXX";
    const char* made = mkdtemp(pattern);
    if (made == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
      return;
    }
    dir = made;
    ca1 = dir + "/ca1.pem";
    ca2 = dir + "/ca2.pem";
    leaf = dir + "/leaf.pem";
    KeyPair one = makeCertificate("Portico Test CA One", nullptr, nullptr);
    KeyPair two = makeCertificate("Portico Test CA Two", nullptr, nullptr);
    KeyPair server_pair =
        makeCertificate("imap.test", &one, "DNS:imap.test,DNS:*.wild.test,IP:127.0.0.1");
    writePem(ca1, one.cert);
    writePem(ca2, two.cert);
    writePem(leaf, server_pair.cert);
    pin = spkiPin(server_pair.cert);
    server = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(server, server_pair.cert);
    SSL_CTX_use_PrivateKey(server, server_pair.key);
    for (KeyPair* pair : {&one, &two, &server_pair}) {
      X509_free(pair->cert);
      EVP_PKEY_free(pair->key);
    }
  }
  ~TestPki() {
    SSL_CTX_free(server);
    if (!dir.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  }
};

class ImapProbeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle is still open";
  }

  ImapProbeSpec spec(std::uint16_t port, bool login) {
    ImapProbeSpec s;
    s.probe = login ? "ImapDeepTestProbe" : "ImapSelfTestProbe";
    s.health_set = "IMAP.Protocol";
    s.target = "mbx1";
    s.endpoint = Endpoint{"127.0.0.1", port, false};
    s.login = login;
    s.select = login;
    s.user = "probe";
    s.password = "s3cret-pw";
    s.timeout = Millis(5'000);
    return s;
  }

  // Runs one probe to completion, then stops the server.
  ProbeResult run(ImapProbeSpec s, FakeImapServer* server) {
    std::optional<ProbeResult> out;
    ImapProbe::start(&loop_, std::move(s), [&](ProbeResult r) {
      out = std::move(r);
      if (server != nullptr) {
        server->stop();
      }
    });
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_TRUE(out.has_value());
    return out.value_or(ProbeResult{});
  }

  // A port nobody listens on: bind an ephemeral one, then close it.
  std::uint16_t closedPort() {
    FakeImapServer server(&loop_, {});
    const std::uint16_t port = server.port();
    server.stop();
    uv_run(&loop_, UV_RUN_DEFAULT);
    return port;
  }

  // A probe over TLS to a server whose certificate CA one signed.
  ImapProbeSpec tlsSpec(std::uint16_t port, ProbeTls mode, bool login) {
    ImapProbeSpec s = spec(port, login);
    s.tls.mode = mode;
    s.tls.ca = pki().ca1;
    s.tls.server_name = "imap.test";
    return s;
  }

  static FakeImapServer::Options tlsServer(bool implicit) {
    FakeImapServer::Options options;
    options.tls = pki().server;
    options.implicit_tls = implicit;
    return options;
  }

  static void SetUpTestSuite() { pki_ = new TestPki(); }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }
  static const TestPki& pki() { return *pki_; }

  static std::string joined(const ProbeResult& r) {
    std::string all = r.error;
    for (const auto& line : r.trace) {
      all += "\n" + line;
    }
    return all;
  }

  uv_loop_t loop_{};
  static TestPki* pki_;
};

TestPki* ImapProbeTest::pki_ = nullptr;

TEST_F(ImapProbeTest, FullProbeSucceeds) {
  FakeImapServer server(&loop_, {});
  const ProbeResult r = run(spec(server.port(), true), &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_EQ(r.failed_step, ProbeStep::kDone);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.probe, "ImapDeepTestProbe");
  EXPECT_EQ(r.health_set, "IMAP.Protocol");
  EXPECT_EQ(r.target, "mbx1");
  EXPECT_EQ(r.retry_count, 0u);
  EXPECT_GT(r.sample_ms, 0);
  EXPECT_LE(r.start, r.end);
  ASSERT_EQ(r.trace.size(), 6u) << joined(r);
  EXPECT_TRUE(r.trace[0].starts_with("connect 127.0.0.1:")) << r.trace[0];
  EXPECT_TRUE(r.trace[1].starts_with("greeting OK ")) << r.trace[1];
  EXPECT_TRUE(r.trace[2].starts_with("CAPABILITY OK ")) << r.trace[2];
  EXPECT_TRUE(r.trace[3].starts_with("LOGIN probe ***** OK ")) << r.trace[3];
  EXPECT_TRUE(r.trace[4].starts_with("SELECT INBOX OK ")) << r.trace[4];
  EXPECT_TRUE(r.trace[5].starts_with("LOGOUT OK ")) << r.trace[5];
  EXPECT_TRUE(r.trace[3].ends_with("ms")) << r.trace[3];
  EXPECT_EQ(joined(r).find("s3cret-pw"), std::string::npos);
  // The password did travel, quoted, to the server.
  ASSERT_GE(server.received().size(), 2u);
  EXPECT_EQ(server.received()[1], "p2 LOGIN \"probe\" \"s3cret-pw\"");
}

TEST_F(ImapProbeTest, CapabilityOnlyProbeSucceeds) {
  FakeImapServer server(&loop_, {});
  const ProbeResult r = run(spec(server.port(), false), &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  ASSERT_EQ(r.trace.size(), 4u) << joined(r);
  EXPECT_TRUE(r.trace[3].starts_with("LOGOUT OK")) << joined(r);
  for (const auto& line : server.received()) {
    EXPECT_EQ(line.find("LOGIN"), std::string::npos);
  }
}

TEST_F(ImapProbeTest, WrongPasswordFailsAtLoginWithoutLeakingIt) {
  FakeImapServer::Options options;
  options.echo_password = true;  // a careless server that repeats what it got
  FakeImapServer server(&loop_, options);
  ImapProbeSpec s = spec(server.port(), true);
  s.password = "Wr0ng-Pass\"word";
  s.retries = 2;
  s.retry_delay = Millis(1);
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kLogin);
  EXPECT_EQ(r.retry_count, 2u);
  EXPECT_TRUE(r.error.starts_with("NO [AUTHENTICATIONFAILED]")) << r.error;
  const std::string all = joined(r);
  EXPECT_EQ(all.find("Wr0ng"), std::string::npos) << all;
  EXPECT_NE(all.find("LOGIN probe ***** NO"), std::string::npos) << all;
  EXPECT_NE(all.find("retry 2 of 2"), std::string::npos) << all;
  EXPECT_EQ(server.connections(), 3);
}

TEST_F(ImapProbeTest, ServerThatNeverGreetsTimesOutAtGreeting) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kSilent);
  ImapProbeSpec s = spec(server.port(), true);
  s.timeout = Millis(300);
  s.retries = 3;  // no time is left for them
  const auto start = std::chrono::steady_clock::now();
  const ProbeResult r = run(s, &server);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.result, ResultType::kTimedOut);
  EXPECT_EQ(r.failed_step, ProbeStep::kGreeting);
  EXPECT_NE(r.error.find("timed out in greeting"), std::string::npos) << r.error;
  EXPECT_GE(took, Millis(290));
  EXPECT_LT(took, Millis(1'500));
  EXPECT_GE(r.sample_ms, 290);
}

TEST_F(ImapProbeTest, ConnectionRefusedFailsAtConnect) {
  const std::uint16_t port = closedPort();
  const ProbeResult r = run(spec(port, false), nullptr);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kConnect);
  EXPECT_NE(r.error.find("refused"), std::string::npos) << r.error;
  ASSERT_EQ(r.trace.size(), 1u);
  EXPECT_TRUE(r.trace[0].starts_with("connect 127.0.0.1:")) << r.trace[0];
}

TEST_F(ImapProbeTest, RetriesWithinOneExecution) {
  const std::uint16_t port = closedPort();
  ImapProbeSpec s = spec(port, false);
  s.retries = 2;
  s.retry_delay = Millis(5);
  const ProbeResult r = run(s, nullptr);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.retry_count, 2u);
  EXPECT_EQ(r.trace.size(), 5u) << joined(r);  // 3 failures, 2 "retry" lines
}

TEST_F(ImapProbeTest, RetrySucceedsAfterAFailedAttempt) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kHangUpOnce);
  ImapProbeSpec s = spec(server.port(), false);
  s.retries = 3;
  s.retry_delay = Millis(50);
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_EQ(r.retry_count, 1u);
  EXPECT_NE(joined(r).find("connection closed by the server"), std::string::npos);
}

TEST_F(ImapProbeTest, HangUpFailsAtGreeting) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kHangUp);
  const ProbeResult r = run(spec(server.port(), false), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kGreeting);
  EXPECT_EQ(r.error, "connection closed by the server");
}

TEST_F(ImapProbeTest, LoginDisabledFailsWithoutSendingThePassword) {
  FakeImapServer::Options options;
  options.login_disabled = true;
  FakeImapServer server(&loop_, options);
  const ProbeResult r = run(spec(server.port(), true), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kLogin);
  EXPECT_NE(r.error.find("LOGINDISABLED"), std::string::npos);
  for (const auto& line : server.received()) {
    EXPECT_EQ(line.find("s3cret"), std::string::npos);
  }
}

// --- TLS ---------------------------------------------------------------------

TEST_F(ImapProbeTest, ImplicitTlsFullProbeSucceeds) {
  FakeImapServer server(&loop_, tlsServer(true));
  const ProbeResult r = run(tlsSpec(server.port(), ProbeTls::kImplicit, true), &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_EQ(r.failed_step, ProbeStep::kDone);
  ASSERT_EQ(r.trace.size(), 7u) << joined(r);
  EXPECT_TRUE(r.trace[0].starts_with("connect 127.0.0.1:")) << r.trace[0];
  EXPECT_TRUE(r.trace[1].starts_with("tls ok ")) << r.trace[1];
  EXPECT_NE(r.trace[1].find("\"TLSv1."), std::string::npos) << r.trace[1];
  EXPECT_TRUE(r.trace[2].starts_with("greeting OK ")) << r.trace[2];
  EXPECT_TRUE(r.trace[3].starts_with("CAPABILITY OK ")) << r.trace[3];
  EXPECT_TRUE(r.trace[4].starts_with("LOGIN probe ***** OK ")) << r.trace[4];
  EXPECT_TRUE(r.trace[5].starts_with("SELECT INBOX OK ")) << r.trace[5];
  EXPECT_TRUE(r.trace[6].starts_with("LOGOUT OK ")) << r.trace[6];
  EXPECT_EQ(joined(r).find("s3cret-pw"), std::string::npos);
  EXPECT_EQ(server.handshakes(), 1);
  EXPECT_EQ(server.lastServerName(), "imap.test");  // SNI for a name
  // The server read the commands through TLS.
  ASSERT_GE(server.received().size(), 2u);
  EXPECT_EQ(server.received()[1], "p2 LOGIN \"probe\" \"s3cret-pw\"");
}

TEST_F(ImapProbeTest, StartTlsFullProbeSucceedsAndForgetsOldCapabilities) {
  FakeImapServer::Options options = tlsServer(false);
  options.login_disabled = true;  // before STARTTLS only
  FakeImapServer server(&loop_, options);
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kStartTls, true);
  s.tls.server_name = "";  // the endpoint's IP, checked against the IP SAN
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  ASSERT_EQ(r.trace.size(), 9u) << joined(r);
  EXPECT_TRUE(r.trace[1].starts_with("greeting OK ")) << r.trace[1];
  EXPECT_TRUE(r.trace[2].starts_with("CAPABILITY OK ")) << r.trace[2];
  EXPECT_TRUE(r.trace[3].starts_with("STARTTLS OK ")) << r.trace[3];
  EXPECT_TRUE(r.trace[4].starts_with("tls ok ")) << r.trace[4];
  EXPECT_TRUE(r.trace[5].starts_with("CAPABILITY OK ")) << r.trace[5];
  EXPECT_TRUE(r.trace[6].starts_with("LOGIN probe ***** OK ")) << r.trace[6];
  EXPECT_TRUE(r.trace[8].starts_with("LOGOUT OK ")) << r.trace[8];
  EXPECT_EQ(server.handshakes(), 1);
  EXPECT_EQ(server.lastServerName(), "");  // no SNI for an IP address
  ASSERT_GE(server.received().size(), 4u);
  EXPECT_EQ(server.received()[0], "p1 CAPABILITY");
  EXPECT_EQ(server.received()[1], "p2 STARTTLS");
  EXPECT_EQ(server.received()[2], "p3 CAPABILITY");
  EXPECT_EQ(server.received()[3], "p4 LOGIN \"probe\" \"s3cret-pw\"");
}

TEST_F(ImapProbeTest, WrongCaFailsAtTls) {
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, true);
  s.tls.ca = pki().ca2;
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_EQ(r.error, "certificate verify failed: unable to get local issuer certificate");
  EXPECT_EQ(server.handshakes(), 0);
  ASSERT_EQ(r.trace.size(), 2u) << joined(r);
  EXPECT_TRUE(r.trace[1].starts_with("tls failed ")) << r.trace[1];
  for (const auto& line : server.received()) {
    EXPECT_EQ(line.find("s3cret"), std::string::npos);
  }
}

TEST_F(ImapProbeTest, WrongNameFailsAtTls) {
  FakeImapServer server(&loop_, tlsServer(false));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kStartTls, false);
  s.tls.server_name = "other.test";
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_EQ(r.error, "certificate verify failed: hostname mismatch") << joined(r);
}

TEST_F(ImapProbeTest, WildcardNameAndIpNameVerify) {
  for (const char* name : {"mail.wild.test", "127.0.0.1"}) {
    FakeImapServer server(&loop_, tlsServer(true));
    ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, false);
    s.tls.server_name = name;
    const ProbeResult r = run(s, &server);
    EXPECT_EQ(r.result, ResultType::kSucceeded) << name << ": " << joined(r);
  }
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, false);
  s.tls.server_name = "127.0.0.2";
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_EQ(r.error, "certificate verify failed: IP address mismatch") << joined(r);
}

TEST_F(ImapProbeTest, PinMismatchFailsAtTls) {
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, true);
  s.tls.pin_sha256 = std::string(64, '0');
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_TRUE(r.error.starts_with("certificate pin mismatch")) << r.error;
  EXPECT_NE(r.error.find(pki().pin), std::string::npos) << r.error;  // what to pin instead
  EXPECT_TRUE(server.received().empty());  // not even the greeting's CAPABILITY
}

TEST_F(ImapProbeTest, PinAloneIsEnoughWithoutVerification) {
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, false);
  s.tls.verify = false;
  s.tls.ca = pki().ca2;  // would not verify
  s.tls.server_name = "other.test";
  s.tls.pin_sha256 = pki().pin;
  for (char& c : s.tls.pin_sha256) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));  // any case
  }
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_NE(joined(r).find("(not verified)"), std::string::npos) << joined(r);
}

TEST_F(ImapProbeTest, MalformedPinFailsAtTlsWithoutConnecting) {
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, false);
  s.tls.pin_sha256 = "abc";
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_NE(r.error.find("64 hex digits"), std::string::npos) << r.error;
  EXPECT_EQ(server.connections(), 0);
}

TEST_F(ImapProbeTest, UnreadableCaFailsAtTlsWithoutConnecting) {
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, false);
  s.tls.ca = pki().dir + "/missing.pem";
  s.retries = 2;
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_TRUE(r.error.starts_with("cannot load CA " + pki().dir + "/missing.pem")) << r.error;
  EXPECT_EQ(r.retry_count, 0u);
  EXPECT_EQ(server.connections(), 0);
}

TEST_F(ImapProbeTest, HandshakeStallTimesOutAtTls) {
  FakeImapServer server(&loop_, tlsServer(true));
  server.setMode(FakeImapServer::Mode::kSilent);  // takes the ClientHello, never answers
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, true);
  s.timeout = Millis(300);
  s.retries = 2;
  const auto start = std::chrono::steady_clock::now();
  const ProbeResult r = run(s, &server);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.result, ResultType::kTimedOut);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_NE(r.error.find("timed out in tls"), std::string::npos) << r.error;
  EXPECT_GE(took, Millis(290));
  EXPECT_LT(took, Millis(1'500));
  ASSERT_FALSE(r.trace.empty());
  EXPECT_TRUE(r.trace.back().starts_with("tls timed out after ")) << joined(r);
}

TEST_F(ImapProbeTest, OwnListenerTrustsItsCertificateFileWithoutNameCheck) {
  // As the proxy probes its own listener: the chain file (here the leaf
  // alone, its CA elsewhere) is the trust anchor, and no name is checked.
  FakeImapServer server(&loop_, tlsServer(true));
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, false);
  s.tls.ca = pki().leaf;
  s.tls.server_name = "not-the-certificate.test";
  s.tls.verify_name = false;
  s.tls.partial_chain = true;
  ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);

  // Without partial_chain the leaf alone is not an anchor.
  FakeImapServer second(&loop_, tlsServer(true));
  s.endpoint.port = second.port();
  s.tls.partial_chain = false;
  r = run(s, &second);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_EQ(r.error, "certificate verify failed: unable to get local issuer certificate");

  // And the chain must still verify against it.
  FakeImapServer third(&loop_, tlsServer(true));
  s.endpoint.port = third.port();
  s.tls.ca = pki().ca2;
  s.tls.partial_chain = true;
  r = run(s, &third);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_TRUE(r.error.starts_with("certificate verify failed: ")) << r.error;
}

TEST_F(ImapProbeTest, StartTlsNotAdvertisedFailsAtTls) {
  FakeImapServer server(&loop_, {});  // plain only
  const ProbeResult r = run(tlsSpec(server.port(), ProbeTls::kStartTls, true), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_EQ(r.error, "the server does not advertise STARTTLS");
  EXPECT_NE(joined(r).find("STARTTLS not sent"), std::string::npos) << joined(r);
  for (const auto& line : server.received()) {
    EXPECT_EQ(line.find("STARTTLS"), std::string::npos);
    EXPECT_EQ(line.find("LOGIN"), std::string::npos);
  }
}

TEST_F(ImapProbeTest, PlaintextAfterStartTlsOkFailsAtTls) {
  FakeImapServer::Options options = tlsServer(false);
  options.after_starttls = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n";
  FakeImapServer server(&loop_, options);
  const ProbeResult r = run(tlsSpec(server.port(), ProbeTls::kStartTls, true), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_EQ(r.error, "the server sent plaintext after its STARTTLS response");
}

TEST_F(ImapProbeTest, ImplicitTlsToAPlaintextServerFailsAtTls) {
  FakeImapServer server(&loop_, {});
  const ProbeResult r = run(tlsSpec(server.port(), ProbeTls::kImplicit, false), &server);
  EXPECT_EQ(r.result, ResultType::kFailed);
  EXPECT_EQ(r.failed_step, ProbeStep::kTls);
  EXPECT_TRUE(r.error.starts_with("handshake failed: ")) << r.error;
}

TEST_F(ImapProbeTest, TlsRetriesStartAFreshHandshake) {
  FakeImapServer server(&loop_, tlsServer(true));
  server.setMode(FakeImapServer::Mode::kHangUpOnce);
  ImapProbeSpec s = tlsSpec(server.port(), ProbeTls::kImplicit, true);
  s.retries = 3;
  s.retry_delay = Millis(50);
  const ProbeResult r = run(s, &server);
  EXPECT_EQ(r.result, ResultType::kSucceeded) << joined(r);
  EXPECT_EQ(r.retry_count, 1u);
  EXPECT_EQ(server.handshakes(), 1);
}

// HealthService hands the TLS settings to the probes: a backend's to its
// self and deep tests, the listener's to the proxy test and CTP.
TEST_F(ImapProbeTest, ServiceProbesUseBackendAndListenerTls) {
  struct NoProxy : ProxyView {
    std::vector<BackendLoad> backendLoad() override { return {}; }
    void setDrainedByResponder(const std::string&, bool, bool) override {}
    bool listenersUp() override { return true; }
    std::string proxyMetrics() override { return ""; }
  } proxy;
  FakeImapServer backend(&loop_, tlsServer(true));
  FakeImapServer listener(&loop_, tlsServer(false));
  HealthConfig config;
  config.proxy_listener = Endpoint{"127.0.0.1", listener.port(), false};
  config.proxy_listener_tls.mode = ProbeTls::kStartTls;
  config.proxy_listener_tls.ca = pki().leaf;
  config.proxy_listener_tls.verify_name = false;
  config.proxy_listener_tls.partial_chain = true;
  BackendTarget target("mbx1", Endpoint{"127.0.0.1", backend.port(), false}, "probe", "s3cret-pw");
  target.tls.mode = ProbeTls::kImplicit;
  target.tls.ca = pki().ca1;
  target.tls.server_name = "imap.test";
  config.backends.push_back(target);
  HealthService service(&loop_, config, proxy);

  std::vector<ProbeResult> results;
  bool stopped = false;
  // The servers stop once the four results are in; `keep` runs only if
  // the probe was launched.
  auto keep = [&](const ProbeResult& r) {
    results.push_back(r);
    if (results.size() == 4) {
      service.stop([&] { stopped = true; });
      backend.stop();
      listener.stop();
    }
  };
  const bool launched = service.invokeProbe("IMAP.Protocol", "ImapDeepTestProbe", "mbx1", keep) &&
                        service.invokeProbe("IMAP.Protocol", "ImapSelfTestProbe", "mbx1", keep) &&
                        service.invokeProbe("IMAP.Proxy", "ImapProxyTestProbe", "", keep) &&
                        service.invokeProbe("IMAP", "ImapCTPProbe", "mbx1", keep);
  if (!launched) {
    ADD_FAILURE() << "a probe is missing";
    service.stop([&] { stopped = true; });
    backend.stop();
    listener.stop();
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_TRUE(stopped);
  ASSERT_EQ(results.size(), 4u);
  for (const ProbeResult& r : results) {
    EXPECT_EQ(r.result, ResultType::kSucceeded) << r.probe << ": " << joined(r);
    EXPECT_NE(joined(r).find("\ntls ok "), std::string::npos) << r.probe << ": " << joined(r);
    EXPECT_EQ(joined(r).find("STARTTLS OK") != std::string::npos,
              r.target.empty() || r.probe == "ImapCTPProbe")
        << r.probe;
  }
  EXPECT_EQ(backend.handshakes(), 2);
  EXPECT_EQ(listener.handshakes(), 2);
}

TEST_F(ImapProbeTest, CancelEndsItAsFailed) {
  FakeImapServer server(&loop_, {});
  server.setMode(FakeImapServer::Mode::kSilent);
  std::optional<ProbeResult> out;
  ImapProbe* probe = ImapProbe::start(&loop_, spec(server.port(), false), [&](ProbeResult r) {
    out = std::move(r);
    server.stop();
  });
  uv_timer_t timer;
  uv_timer_init(&loop_, &timer);
  timer.data = probe;
  uv_timer_start(
      &timer,
      [](uv_timer_t* t) {
        static_cast<ImapProbe*>(t->data)->cancel();
        uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
      },
      20, 0);
  uv_run(&loop_, UV_RUN_DEFAULT);
  ASSERT_TRUE(out);
  EXPECT_EQ(out->result, ResultType::kFailed);
  EXPECT_EQ(out->error, "cancelled");
  EXPECT_EQ(out->failed_step, ProbeStep::kGreeting);
}

}  // namespace
}  // namespace portico::health
