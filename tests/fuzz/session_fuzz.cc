// libFuzzer target for a whole client session over fake transports: the
// pre-login dialogue (CAPABILITY, ID, STARTTLS, LOGIN with literals,
// AUTHENTICATE with continuations, refused commands), the backend login
// replay with failover, and the first steps of the relay, all on the fake
// clock of tests/unit/proxy/fakes.h.
//
// Input: a script of records separated by NUL bytes (so seeds are readable
// text). The first record may be a setup record, "S" followed by flags:
//   s  small limits (short lines and literals, 2 bad commands, 2 failures)
//   t  a STARTTLS listener (the fake host "upgrades" the client transport)
//   r  ... with require_tls (LOGINDISABLED until STARTTLS)
//   l  protocol log on for every session (formats records, drops them)
//   p  backends get a PROXY v2 header     i  backends get a forwarded ID
//   T  backends want STARTTLS             1  a single backend
//   w  at the end, wait in silence instead of closing the client
// Then one record per event, its first byte saying which:
//   C<bytes>  the client sends bytes (one read; records give the splits)
//   Z         the client sends one NUL byte
//   X         the client closes
//   c / f     the newest backend connection succeeds / fails (once; the
//             events below wait for it, as a real connection's do)
//   G         the backend greets ("* OK [CAPABILITY ...] ready")
//   B<bytes>  the backend sends bytes
//   O / n     the backend answers the last tagged line it was sent with
//             OK (with capabilities) / NO [AUTHENTICATIONFAILED]
//   +         the backend sends a continuation request
//   x         the backend closes
//   q / d     the client's write queue is full / drains (backpressure)
//   Q / D     the backend's write queue is full / drains
//   T<n>      the clock moves n x 100 ms (default 1)
//   R         the loop runs its pending work
//   K / Y / A / I   admin kick / shutdown BYE / abort / session info
//
// Invariants (abort on violation): no crash or sanitizer report; the session
// never touches a transport after its onClosed() and never writes to one it
// has closed or shut down itself; before any raw backend bytes, everything written
// to the client is whole CRLF lines that start with "* ", "+ " or a tag; the
// session ends exactly once, when the client closes or (w) by its own
// timeouts, with no timer armed and every gauge it took given back; and a
// session left in pre-login after whole lines without literals answers a
// NOOP under the NOOP's own tag (no wedge, no stale tag).
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "portico/logging.h"
#include "portico/protocol_log.h"
#include "proxy/fakes.h"
#include "session/session.h"

namespace {

using namespace portico::proxy;
using fakes::FakeLoop;
using fakes::FakeTimer;
using fakes::FakeTransport;
using fakes::ipv4Address;
using namespace std::chrono_literals;

[[noreturn]] void fail(const std::string& what, const std::string& detail) {
  std::fprintf(stderr, "session_fuzz: %s\n%s\n", what.c_str(), detail.c_str());
  std::abort();
}

// FakeHost (fakes.h) plus TLS upgrades: STARTTLS on either side hands the
// session a fresh FakeTransport, which the script then drives.
class Host final : public SessionHost {
 public:
  Host() = default;

  std::chrono::steady_clock::time_point now() override { return loop_.now(); }
  TimerPtr createTimer(std::function<void()> callback) override {
    return std::make_unique<FakeTimer>(loop_, std::move(callback));
  }
  Transport* connectBackend(const BackendConfig& backend, TransportHandler* handler) override {
    FakeTransport* t = newTransport("backend " + backend.name, ipv4Address("10.1.0.1", 143),
                                    ipv4Address("10.0.0.5", 40000));
    t->setHandler(handler);
    backend_ = t;
    return t;
  }
  Transport* startServerTls(Transport*, std::shared_ptr<const ServerTlsContext>) override {
    client_ =
        newTransport("client tls", ipv4Address("192.0.2.7", 50123), ipv4Address("192.0.2.1", 143));
    return client_;
  }
  Transport* startClientTls(Transport*, std::shared_ptr<const ClientTlsContext>,
                            TransportHandler* handler) override {
    FakeTransport* t =
        newTransport("backend tls", ipv4Address("10.1.0.1", 143), ipv4Address("10.0.0.5", 40000));
    t->setHandler(handler);
    backend_ = t;
    return t;
  }
  WorkerStats& stats() override { return *stats_; }
  ProcessState& shared() override { return *shared_; }
  void sessionEnded(Session* session) override {
    ++ended_;
    delete session;
  }

  FakeTransport* newClient() {
    client_ =
        newTransport("client", ipv4Address("192.0.2.7", 50123), ipv4Address("192.0.2.1", 143));
    return client_;
  }
  FakeLoop& loop() { return loop_; }
  FakeTransport* client() const { return client_; }    // the newest client transport
  FakeTransport* backend() const { return backend_; }  // the newest backend transport
  const std::vector<std::unique_ptr<FakeTransport>>& transports() const { return transports_; }
  int ended() const { return ended_; }

 private:
  FakeTransport* newTransport(std::string name, sockaddr_storage peer, sockaddr_storage local) {
    transports_.push_back(std::make_unique<FakeTransport>(loop_, std::move(name), peer, local));
    return transports_.back().get();
  }

  FakeLoop loop_;
  // Shared by every run (2 MB to clear otherwise): the gauges checked at
  // the end are back at zero after each run that passes, and nothing
  // reads the cumulative counters.
  WorkerStats* stats_ = [] {
    static auto* stats = new WorkerStats();
    return stats;
  }();
  std::unique_ptr<ProcessState> shared_ = std::make_unique<ProcessState>();
  std::vector<std::unique_ptr<FakeTransport>> transports_;
  FakeTransport* client_ = nullptr;
  FakeTransport* backend_ = nullptr;
  int ended_ = 0;
};

struct Setup {
  bool small = false, starttls = false, require_tls = false, trace = false, proxy = false,
       forward_id = false, backend_starttls = false, single = false, wait = false;
};

Setup parseSetup(std::string_view flags) {
  Setup s;
  for (char f : flags) {
    switch (f) {
      case 's':
        s.small = true;
        break;
      case 't':
        s.starttls = true;
        break;
      case 'r':
        s.require_tls = s.starttls = true;
        break;
      case 'l':
        s.trace = true;
        break;
      case 'p':
        s.proxy = true;
        break;
      case 'i':
        s.forward_id = true;
        break;
      case 'T':
        s.backend_starttls = true;
        break;
      case '1':
        s.single = true;
        break;
      case 'w':
        s.wait = true;
        break;
      default:
        break;
    }
  }
  return s;
}

int setupKey(const Setup& s) {
  return s.small | s.proxy << 1 | s.forward_id << 2 | s.backend_starttls << 3 | s.single << 4;
}

constexpr std::size_t kBackends = 3;
std::size_t slotOf(std::size_t index) {
  return 2 + index;
}

// Runtime snapshots are immutable and shared, as the worker shares them.
RuntimeConfigPtr runtimeFor(const Setup& s) {
  static std::map<int, RuntimeConfigPtr> cache;
  RuntimeConfigPtr& out = cache[setupKey(s)];
  if (out) {
    return out;
  }
  Config cfg;
  for (std::size_t i = 0; i < (s.single ? 1 : kBackends); ++i) {
    BackendConfig b;
    b.name = "mbx" + std::to_string(i + 1);
    b.address = HostPort{"10.1.0." + std::to_string(i + 1), 143, false};
    b.proxy_protocol = s.proxy;
    b.forward_id = s.forward_id;
    b.tls = s.backend_starttls ? TlsMode::kStarttls : TlsMode::kNone;
    cfg.backends.push_back(b);
  }
  cfg.backends.front().probe_user = "healthmailbox-mbx1";
  cfg.timeouts.prelogin = 20s;
  cfg.timeouts.idle = 60s;
  cfg.timeouts.backend_connect = 2s;
  cfg.timeouts.backend_login = 5s;
  cfg.limits.login_failure_delay = 100ms;
  if (s.small) {
    cfg.limits.prelogin_max_line = 64;
    cfg.limits.prelogin_max_literal = 32;
    cfg.limits.max_line = 128;
    cfg.limits.max_bad_commands = 2;
    cfg.limits.max_login_failures = 2;
    cfg.limits.write_high_watermark = 256;
    cfg.routing.connect_retries = 1;
  }
  std::vector<std::size_t> slots;
  for (std::size_t i = 0; i < cfg.backends.size(); ++i) {
    slots.push_back(slotOf(i));
  }
  auto runtime = std::make_shared<RuntimeConfig>(std::move(cfg), std::move(slots));
  // One (null) context per backend, so a STARTTLS backend reaches the
  // host's startClientTls() instead of failing for want of a context.
  runtime->backend_tls.resize(runtime->config.backends.size());
  out = runtime;
  return out;
}

// The first word of the newest line `written` holds that looks like a tag.
std::string lastTag(const std::string& written) {
  std::string tag;
  std::size_t begin = 0;
  while (begin < written.size()) {
    std::size_t end = written.find('\n', begin);
    std::string_view line(written.data() + begin,
                          (end == std::string::npos ? written.size() : end) - begin);
    std::size_t sp = line.find(' ');
    if (sp != std::string_view::npos && sp > 0 && sp <= 32) {
      std::string_view word = line.substr(0, sp);
      bool ok = word != "*" && word != "+";
      for (unsigned char c : word) {
        ok = ok && c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '"';
      }
      if (ok) {
        tag.assign(word);
      }
    }
    if (end == std::string::npos) {
      break;
    }
    begin = end + 1;
  }
  return tag;
}

// Portico's own pre-login output: whole CRLF lines, each "* ", "+ " or a tag.
void checkClientLines(const std::string& out) {
  std::size_t begin = 0;
  while (begin < out.size()) {
    std::size_t crlf = out.find("\r\n", begin);
    if (crlf == std::string::npos) {
      fail("client output ends inside a line", out.substr(begin, 200));
    }
    std::string_view line(out.data() + begin, crlf - begin);
    if (line.find_first_of("\r\n") != std::string_view::npos) {
      fail("bare CR or LF inside a line to the client", std::string(line.substr(0, 200)));
    }
    std::size_t sp = line.find(' ');
    if (sp == 0 || sp == std::string_view::npos) {
      fail("line to the client without a tag", std::string(line.substr(0, 200)));
    }
    begin = crlf + 2;
  }
}

bool usable(const FakeTransport* t) {
  return t != nullptr && !t->closing() && !t->closed() && t->handler() != nullptr;
}

void quietLogs() {
  static bool done = false;
  if (!done) {
    int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      portico::logging::setOutputFd(fd);
    }
    portico::logging::setLevel(portico::logging::Level::kDebug);  // format every line anyway
    done = true;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > (1 << 16)) {
    return 0;
  }
  quietLogs();
  std::vector<std::string_view> records;
  {
    std::string_view all(reinterpret_cast<const char*>(data), size);
    std::size_t begin = 0;
    while (begin <= all.size()) {
      std::size_t nul = all.find('\0', begin);
      if (nul == std::string_view::npos) {
        nul = all.size();
      }
      records.push_back(all.substr(begin, nul - begin));
      begin = nul + 1;
    }
  }
  Setup setup;
  std::size_t first = 0;
  if (!records.empty() && !records.front().empty() && records.front().front() == 'S') {
    setup = parseSetup(records.front().substr(1));
    first = 1;
  }

  // A protocol log that is never started: tracing formats and redacts
  // every record, submit() drops it.
  static portico::logging::ProtocolLog protocol_log(1);
  Host host;
  if (setup.trace) {
    TraceSettings on;
    on.on = true;
    host.shared().trace.set(on);
    host.shared().protocol_log.store(&protocol_log);
  }
  FakeTransport* first_client = host.newClient();
  auto* session = new Session(host, runtimeFor(setup), first_client, 0xf00d);
  session->setListener(setup.starttls ? TlsMode::kStarttls : TlsMode::kNone, setup.require_tls,
                       nullptr, false);
  session->start();

  // A real transport reports its connect once, and reads nothing before:
  // backend events wait for a scripted connect result.
  std::set<FakeTransport*> connected;
  auto ready = [&](FakeTransport* t) { return usable(t) && connected.count(t) != 0; };
  bool raw_backend_bytes = false;
  std::string client_stream;  // every byte the client sent
  auto alive = [&] { return host.ended() == 0; };
  for (std::size_t i = first; i < records.size() && alive(); ++i) {
    std::string_view r = records[i];
    if (r.empty()) {
      continue;
    }
    const char op = r.front();
    std::string_view arg = r.substr(1);
    FakeTransport* client = host.client();
    FakeTransport* backend = host.backend();
    switch (op) {
      case 'C':
        if (usable(client)) {
          client_stream.append(arg);
          client->deliver(arg);
        }
        break;
      case 'Z':
        if (usable(client)) {
          client_stream.push_back('\0');
          client->deliver(std::string_view("\0", 1));
        }
        break;
      case 'X':
        if (usable(client)) {
          client->peerClose();
        }
        break;
      case 'c':
        if (usable(backend) && connected.insert(backend).second) {
          backend->connectOk();
        }
        break;
      case 'f':
        if (usable(backend) && connected.insert(backend).second) {
          backend->connectFail();
        }
        break;
      case 'G':
        if (ready(backend)) {
          backend->deliver(
              "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
              "LITERAL+ STARTTLS AUTH=PLAIN] Dovecot ready.\r\n");
        }
        break;
      case 'B':
        if (ready(backend)) {
          raw_backend_bytes = true;
          backend->deliver(arg);
        }
        break;
      case 'O':
      case 'n':
        if (ready(backend)) {
          std::string tag = lastTag(backend->written());
          if (!tag.empty()) {
            backend->deliver(op == 'O' ? tag +
                                             " OK [CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE] "
                                             "Logged in\r\n"
                                       : tag +
                                             " NO [AUTHENTICATIONFAILED] Authentication "
                                             "failed.\r\n");
          }
        }
        break;
      case '+':
        if (ready(backend)) {
          backend->deliver("+ \r\n");
        }
        break;
      case 'x':
        if (ready(backend)) {
          backend->peerClose();
        }
        break;
      case 'q':
        if (usable(client)) {
          client->setQueuedBytes(1 << 20);
        }
        break;
      case 'd':
        if (usable(client)) {
          client->drain();
        }
        break;
      case 'Q':
        if (ready(backend)) {
          backend->setQueuedBytes(1 << 20);
        }
        break;
      case 'D':
        if (ready(backend)) {
          backend->drain();
        }
        break;
      case 'T': {
        unsigned steps = 0;
        for (char c : arg.substr(0, 6)) {
          if (c >= '0' && c <= '9') {
            steps = steps * 10 + static_cast<unsigned>(c - '0');
          }
        }
        host.loop().advance(std::max(1u, steps) * 100ms);
        break;
      }
      case 'R':
        host.loop().runPending();
        break;
      case 'K':
        session->kick();
        break;
      case 'Y':
        session->requestBye("Server shutting down.", EndReason::kShutdown);
        break;
      case 'A':
        session->abort(EndReason::kShutdownTimeout);
        break;
      case 'I':
        (void)session->info(host.now());
        break;
      default:
        break;
    }
    if (!raw_backend_bytes && usable(client)) {
      // Only Portico's own words (and, after a login, the canned backend
      // lines above) have reached the client so far.
      checkClientLines(client->written());
    }
  }

  // Never wedged: a session back in pre-login, whose client sent whole
  // lines and no literal (so nothing can absorb the probe), answers two
  // NOOPs under their own tags, or says BYE. A refused command must leave the
  // framer in command mode.
  host.loop().runPending();
  FakeTransport* client = host.client();
  if (alive() && session->state() == SessionState::kPrelogin && usable(client) &&
      !client->paused() && client->held().empty() && client_stream.size() >= 2 &&
      client_stream.compare(client_stream.size() - 2, 2, "\r\n") == 0 &&
      client_stream.find('{') == std::string::npos) {
    const std::size_t before = client->written().size();
    // Two: a stale state (IDLE refused before login) may swallow one.
    client->deliver("zz8 NOOP\r\nzz9 NOOP\r\n");
    host.loop().runPending();
    const std::string answer = client->written().substr(before);
    const bool both =
        answer.find("zz8 OK") != std::string::npos && answer.find("zz9 OK") != std::string::npos;
    if (!both && answer.find("* BYE ") == std::string::npos) {
      fail("NOOPs after the script were not answered under their tags",
           "client sent:\n" + client_stream.substr(0, 2000) + "\nanswer:\n" + answer);
    }
  }

  // The end: the client leaves (or, with w, goes silent); either way the
  // session must end by itself, through close or its own timeouts.
  host.loop().runPending();
  if (!setup.wait && alive() && usable(host.client())) {
    host.client()->peerClose();
  }
  for (int round = 0; round < 4 && alive(); ++round) {
    host.loop().runPending();
    host.loop().advance(1h);
  }
  host.loop().runPending();

  std::string problems;
  if (host.ended() != 1) {
    problems += "the session ended " + std::to_string(host.ended()) + " times\n";
  }
  for (const std::string& v : host.loop().violations()) {
    problems += v + "\n";
  }
  for (const auto& t : host.transports()) {
    if (!t->writtenAfterOwnClose().empty()) {
      problems += t->name() + ": written after the session closed it: " +
                  t->writtenAfterOwnClose().substr(0, 200) + "\n";
    }
  }
  if (host.loop().armedTimers() != 0) {
    problems += "a timer outlived its session\n";
  }
  WorkerStats& stats = host.stats();
  if (stats.connections_unauthenticated.get() != 0) {
    problems += "connections_unauthenticated not given back\n";
  }
  for (std::size_t i = 0; i < kBackends; ++i) {
    if (stats.backend(slotOf(i)).sessions_current.get() != 0 ||
        stats.backend(slotOf(i)).commands_in_flight.get() != 0) {
      problems += "backend gauges not given back\n";
    }
  }
  static const bool show = std::getenv("SESSION_FUZZ_SHOW") != nullptr;
  if (show) {
    // For checking what a seed does: SESSION_FUZZ_SHOW=1 session_fuzz SEED
    for (const auto& t : host.transports()) {
      std::string text;
      for (unsigned char ch : t->written()) {
        if (ch == '\n' || (ch >= 0x20 && ch < 0x7f)) {
          text.push_back(static_cast<char>(ch));
        } else if (ch != '\r') {
          text += fmt::format("\\x{:02x}", ch);
        }
      }
      std::fprintf(stderr, "--- %s got:\n%s\n", t->name().c_str(), text.c_str());
    }
  }
  if (!problems.empty()) {
    std::string trail;
    for (const auto& t : host.transports()) {
      trail += "--- " + t->name() + " got:\n" + t->written().substr(0, 2000) + "\n";
    }
    if (host.ended() == 0) {
      trail += "state: ";
      trail += sessionStateName(session->state());
      trail += "\n";
    }
    fail(problems, trail);
  }
  return 0;
}
