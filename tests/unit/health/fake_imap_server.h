// A tiny IMAP server on a libuv loop, for probe and service tests. It
// listens on 127.0.0.1 with an ephemeral port and answers CAPABILITY, LOGIN
// (quoted strings), SELECT, LOGOUT; its greeting behaviour is switchable.
// With Options::tls it speaks TLS (OpenSSL over memory BIOs): implicit TLS,
// or STARTTLS (advertised, and LOGINDISABLED only before it).
// stop() closes the listener and every connection; after the loop has run,
// no handle of it is left.
#pragma once

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <uv.h>

#include <cctype>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portico::health::fakes {

class FakeImapServer {
 public:
  enum class Mode {
    kNormal,      // greet and answer
    kSilent,      // accept, never greet, ignore input
    kHangUp,      // accept and close at once
    kHangUpOnce,  // accept and close the next connection, then answer normally
  };
  struct Options {
    std::string user = "probe";
    std::string password = "s3cret-pw";
    bool echo_password = false;   // the LOGIN NO text repeats the password, decoded and as sent
    bool login_disabled = false;  // advertise LOGINDISABLED
    SSL_CTX* tls = nullptr;       // server context (owned by the test): TLS on
    bool implicit_tls = false;    // with `tls`: handshake first; else STARTTLS
    std::string after_starttls;   // plaintext sent right after the STARTTLS OK (injection)
    std::string login_no_text;    // if set: the text of a failed LOGIN's NO (any bytes)
  };

  FakeImapServer(uv_loop_t* loop, Options options) : loop_(loop), options_(std::move(options)) {
    uv_tcp_init(loop_, &listener_);
    listener_.data = this;
    sockaddr_in address{};
    uv_ip4_addr("127.0.0.1", 0, &address);
    uv_tcp_bind(&listener_, reinterpret_cast<const sockaddr*>(&address), 0);
    uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 64, &FakeImapServer::onConnection);
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&listener_, reinterpret_cast<sockaddr*>(&bound), &len);
    port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }

  std::uint16_t port() const { return port_; }
  void setMode(Mode mode) { mode_ = mode; }
  int connections() const { return accepted_; }
  // Every command line received, as sent (the LOGIN line holds the password).
  const std::vector<std::string>& received() const { return received_; }
  // The SNI name of the last TLS handshake that completed ("" if none).
  const std::string& lastServerName() const { return last_server_name_; }
  int handshakes() const { return handshakes_; }

  void stop() {
    if (stopped_) {
      return;
    }
    stopped_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    for (Connection* c : std::set<Connection*>(open_)) {
      c->close();
    }
  }

 private:
  struct Connection {
    FakeImapServer* server = nullptr;
    uv_tcp_t tcp{};
    std::string buffer;
    bool closing = false;
    SSL* ssl = nullptr;  // with its memory BIOs
    BIO* rbio = nullptr;
    BIO* wbio = nullptr;
    bool handshake_done = false;

    ~Connection() { SSL_free(ssl); }

    void startTls() {
      ssl = SSL_new(server->options_.tls);
      rbio = BIO_new(BIO_s_mem());
      wbio = BIO_new(BIO_s_mem());
      BIO_set_mem_eof_return(rbio, -1);
      SSL_set_bio(ssl, rbio, wbio);
      SSL_set_accept_state(ssl);
    }
    // Ciphertext from the client: the handshake, then plaintext into `buffer`.
    void receivedTls(const char* data, std::size_t size) {
      BIO_write(rbio, data, static_cast<int>(size));
      if (!handshake_done) {
        const int rc = SSL_do_handshake(ssl);
        flush();
        if (rc != 1) {
          const int err = SSL_get_error(ssl, rc);
          if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            close();
          }
          return;
        }
        handshake_done = true;
        ++server->handshakes_;
        const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
        server->last_server_name_ = name != nullptr ? name : "";
        if (server->options_.implicit_tls) {
          server->greet(*this);
        }
      }
      char plain[4096];
      int n;
      while ((n = SSL_read(ssl, plain, sizeof(plain))) > 0) {
        buffer.append(plain, static_cast<std::size_t>(n));
      }
      flush();
    }
    void flush() {
      while (BIO_ctrl_pending(wbio) > 0) {
        std::string out(BIO_ctrl_pending(wbio), '\0');
        const int n = BIO_read(wbio, out.data(), static_cast<int>(out.size()));
        if (n <= 0) {
          break;
        }
        out.resize(static_cast<std::size_t>(n));
        sendRaw(std::move(out));
      }
    }

    void send(std::string bytes) {
      if (closing) {
        return;
      }
      if (ssl != nullptr) {
        SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size()));
        flush();
        return;
      }
      sendRaw(std::move(bytes));
    }
    void sendRaw(std::string bytes) {
      if (closing) {
        return;
      }
      struct Write {
        uv_write_t req;
        std::string bytes;
      };
      auto* w = new Write{{}, std::move(bytes)};
      uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
      uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&tcp), &buf, 1,
               [](uv_write_t* req, int) { delete reinterpret_cast<Write*>(req); });
    }
    // Closes once what was written has gone out (LOGOUT).
    void finish() {
      auto* req = new uv_shutdown_t();
      req->data = this;
      uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&tcp), [](uv_shutdown_t* r, int) {
        auto* conn = static_cast<Connection*>(r->data);
        delete r;
        conn->close();
      });
    }
    void close() {
      if (closing) {
        return;
      }
      closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&tcp), [](uv_handle_t* h) {
        auto* c = static_cast<Connection*>(h->data);
        c->server->open_.erase(c);
        delete c;
      });
    }
  };

  static void onConnection(uv_stream_t* listener, int status) {
    auto* self = static_cast<FakeImapServer*>(listener->data);
    if (status < 0) {
      return;
    }
    auto* c = new Connection();
    c->server = self;
    c->tcp.data = c;
    uv_tcp_init(self->loop_, &c->tcp);
    self->open_.insert(c);
    if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
      c->close();
      return;
    }
    ++self->accepted_;
    uv_tcp_nodelay(&c->tcp, 1);  // TLS writes come in pairs: no Nagle wait
    if (self->mode_ == Mode::kHangUp || self->mode_ == Mode::kHangUpOnce) {
      if (self->mode_ == Mode::kHangUpOnce) {
        self->mode_ = Mode::kNormal;
      }
      c->close();
      return;
    }
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp),
        [](uv_handle_t*, std::size_t suggested, uv_buf_t* buf) {
          buf->base = new char[suggested];
          buf->len = suggested;
        },
        [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
          auto* conn = static_cast<Connection*>(stream->data);
          std::unique_ptr<char[]> owned(buf->base);
          if (nread < 0) {
            conn->close();
            return;
          }
          if (conn->ssl != nullptr && conn->server->mode_ != Mode::kSilent) {
            conn->receivedTls(buf->base, static_cast<std::size_t>(nread));
          } else {
            conn->buffer.append(buf->base, static_cast<std::size_t>(nread));
          }
          if (!conn->closing) {
            conn->server->process(*conn);
          }
        });
    if (self->mode_ == Mode::kNormal) {
      if (self->options_.tls != nullptr && self->options_.implicit_tls) {
        c->startTls();  // greets once the handshake is done
      } else {
        self->greet(*c);
      }
    }
  }

  // Capabilities as the connection's state has them.
  std::string capabilities(const Connection& c) const {
    std::string out = "IMAP4rev1 LITERAL+";
    if (options_.tls != nullptr && c.ssl == nullptr) {
      out += " STARTTLS";
    }
    if (options_.login_disabled && c.ssl == nullptr) {
      out += " LOGINDISABLED";
    }
    return out;
  }

  void greet(Connection& c) { c.send("* OK [CAPABILITY " + capabilities(c) + "] fake ready\r\n"); }

  // Reads one quoted string at `pos`; advances past it.
  static std::string unquote(std::string_view line, std::size_t& pos) {
    std::string out;
    while (pos < line.size() && line[pos] == ' ') {
      ++pos;
    }
    if (pos >= line.size() || line[pos] != '"') {
      return out;
    }
    for (++pos; pos < line.size() && line[pos] != '"'; ++pos) {
      if (line[pos] == '\\' && pos + 1 < line.size()) {
        ++pos;
      }
      out.push_back(line[pos]);
    }
    ++pos;
    return out;
  }

  void process(Connection& c) {
    if (mode_ == Mode::kSilent) {
      c.buffer.clear();
      return;
    }
    std::size_t eol;
    while (!c.closing && (eol = c.buffer.find("\r\n")) != std::string::npos) {
      const std::string line = c.buffer.substr(0, eol);
      c.buffer.erase(0, eol + 2);
      received_.push_back(line);
      const std::size_t space = line.find(' ');
      const std::string tag = line.substr(0, space);
      std::string rest = space == std::string::npos ? "" : line.substr(space + 1);
      const std::size_t arg = rest.find(' ');
      std::string command = rest.substr(0, arg);
      for (char& ch : command) {
        ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      }
      if (command == "CAPABILITY") {
        c.send("* CAPABILITY " + capabilities(c) + " IDLE\r\n" + tag + " OK done\r\n");
      } else if (command == "STARTTLS" && options_.tls != nullptr && c.ssl == nullptr) {
        c.send(tag + " OK Begin TLS negotiation now\r\n" + options_.after_starttls);
        c.buffer.clear();
        c.startTls();
        return;
      } else if (command == "LOGIN") {
        std::size_t pos = arg;
        const std::string user = unquote(rest, pos);
        const std::string password = unquote(rest, pos);
        if (user == options_.user && password == options_.password) {
          c.send(tag + " OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
        } else if (!options_.login_no_text.empty()) {
          c.send(tag + " NO " + options_.login_no_text + "\r\n");
        } else if (options_.echo_password) {
          c.send(tag + " NO [AUTHENTICATIONFAILED] wrong password " + password + " (" + rest +
                 ")\r\n");
        } else {
          c.send(tag + " NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
        }
      } else if (command == "SELECT") {
        // A literal inside an untagged response, to exercise the framer.
        c.send("* 1 EXISTS\r\n* FLAGS (\\Seen)\r\n* 1 FETCH (BODY[] {7}\r\nx\r\nOK y)\r\n" + tag +
               " OK [READ-WRITE] SELECT completed\r\n");
      } else if (command == "LOGOUT") {
        c.send("* BYE logging out\r\n" + tag + " OK LOGOUT completed\r\n");
        c.finish();
        return;
      } else {
        c.send(tag + " BAD unknown command\r\n");
      }
    }
  }

  uv_loop_t* loop_;
  Options options_;
  uv_tcp_t listener_{};
  std::uint16_t port_ = 0;
  Mode mode_ = Mode::kNormal;
  int accepted_ = 0;
  bool stopped_ = false;
  std::set<Connection*> open_;
  std::vector<std::string> received_;
  std::string last_server_name_;
  int handshakes_ = 0;
};

}  // namespace portico::health::fakes
