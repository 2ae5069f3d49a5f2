// HttpAuthLookup and RedisLookup on a real libuv loop against a small
// scripted HTTP server in the same loop (TCP or unix socket): answers,
// several lookups in flight, cancellation, destruction mid-flight, timeouts,
// refused connections, WAIT rounds. Every test ends with the loop closing
// cleanly (uv_loop_close() == 0): no handle of any lookup is left.
#include <gtest/gtest.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "lookup/http_auth_lookup.h"
#include "lookup/redis_lookup.h"

namespace portico::proxy {
namespace {

using namespace std::chrono_literals;

// Answers each request (the bytes up to the empty line) with what `script`
// returns: the reply bytes, kNever (keep the connection open, say nothing)
// or kClose (close without a word).
class ScriptedHttpServer {
 public:
  static constexpr const char* kNever = "<never>";
  static constexpr const char* kClose = "<close>";
  using Script = std::function<std::string(const std::string& request)>;

  ScriptedHttpServer(uv_loop_t* loop, Script script, const std::string& unix_path = "")
      : loop_(loop), script_(std::move(script)) {
    if (unix_path.empty()) {
      uv_tcp_init(loop_, &listener_.tcp);
      sockaddr_in address{};
      uv_ip4_addr("127.0.0.1", 0, &address);
      uv_tcp_bind(&listener_.tcp, reinterpret_cast<const sockaddr*>(&address), 0);
      sockaddr_storage bound{};
      int len = sizeof(bound);
      uv_tcp_getsockname(&listener_.tcp, reinterpret_cast<sockaddr*>(&bound), &len);
      port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
      unix_ = false;
    } else {
      uv_pipe_init(loop_, &listener_.pipe, 0);
      uv_pipe_bind(&listener_.pipe, unix_path.c_str());
      unix_ = true;
    }
    listener_.tcp.data = this;
    uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 64, &ScriptedHttpServer::onConnection);
  }

  // The listener lives in this object: wait for its close callback, and
  // for the connections', which point back here.
  ~ScriptedHttpServer() {
    stop();
    while (!listener_closed_ || !connections_.empty()) {
      uv_run(loop_, UV_RUN_NOWAIT);
    }
  }

  std::uint16_t port() const { return port_; }
  const std::vector<std::string>& requests() const { return requests_; }
  int closedByPeer() const { return closed_by_peer_; }
  std::size_t open() const { return connections_.size(); }

  void stop() {
    if (stopped_) {
      return;
    }
    stopped_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), [](uv_handle_t* h) {
      static_cast<ScriptedHttpServer*>(h->data)->listener_closed_ = true;
    });
    for (Connection* c : std::set<Connection*>(connections_)) {
      c->close();
    }
  }

 private:
  struct Connection {
    ScriptedHttpServer* server;
    union {
      uv_tcp_t tcp;
      uv_pipe_t pipe;
    } stream;
    uv_write_t write{};
    std::string in;
    std::string out;
    bool closing = false;

    uv_stream_t* s() { return reinterpret_cast<uv_stream_t*>(&stream); }
    void close() {
      if (closing) {
        return;
      }
      closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&stream), [](uv_handle_t* h) {
        auto* c = static_cast<Connection*>(h->data);
        c->server->connections_.erase(c);
        delete c;
      });
    }
  };

  static void onConnection(uv_stream_t* listener, int status) {
    auto* self = static_cast<ScriptedHttpServer*>(listener->data);
    if (status < 0) {
      return;
    }
    auto* c = new Connection{self, {}, {}, {}, {}};
    if (self->unix_) {
      uv_pipe_init(self->loop_, &c->stream.pipe, 0);
    } else {
      uv_tcp_init(self->loop_, &c->stream.tcp);
    }
    c->stream.tcp.data = c;
    self->connections_.insert(c);
    if (uv_accept(listener, c->s()) != 0) {
      c->close();
      return;
    }
    uv_read_start(
        c->s(),
        [](uv_handle_t*, std::size_t suggested, uv_buf_t* buf) {
          *buf = uv_buf_init(new char[suggested], static_cast<unsigned>(suggested));
        },
        &ScriptedHttpServer::onRead);
  }

  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* c = static_cast<Connection*>(stream->data);
    std::unique_ptr<char[]> owned(buf->base);
    if (nread < 0) {
      ++c->server->closed_by_peer_;
      c->close();
      return;
    }
    c->in.append(buf->base, static_cast<std::size_t>(nread));
    std::size_t end = c->in.find("\r\n\r\n");
    if (end == std::string::npos || !c->out.empty()) {
      return;
    }
    std::string request = c->in.substr(0, end + 4);
    c->server->requests_.push_back(request);
    c->out = c->server->script_(request);
    if (c->out == kNever) {
      return;
    }
    if (c->out == kClose) {
      c->close();
      return;
    }
    uv_buf_t reply = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
    c->write.data = c;
    uv_write(&c->write, c->s(), &reply, 1,
             [](uv_write_t* req, int) { static_cast<Connection*>(req->data)->close(); });
  }

  uv_loop_t* loop_;
  Script script_;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } listener_{};
  bool unix_ = false;
  std::uint16_t port_ = 0;
  std::set<Connection*> connections_;
  std::vector<std::string> requests_;
  int closed_by_peer_ = 0;
  bool stopped_ = false;
  bool listener_closed_ = false;
};

std::string routeAnswer(const std::string& server, int port) {
  return "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: " + server +
         "\r\nAuth-Port: " + std::to_string(port) + "\r\n\r\n";
}

// The Auth-User value in a request ("" if none).
std::string userOf(const std::string& request) {
  std::size_t at = request.find("\r\nAuth-User: ");
  if (at == std::string::npos) {
    return "";
  }
  at += 13;
  return request.substr(at, request.find("\r\n", at) - at);
}

LookupRequest login(const std::string& user) {
  LookupRequest r;
  r.user = user;
  r.password = "pw";
  r.client_ip = "127.0.0.1";
  return r;
}

class LookupLoopTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }

  void TearDown() override {
    // Whatever the test left running must close by itself.
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  // Runs the loop until `done` or the deadline; false on the deadline. A
  // prepare handle checks `done` before each poll and stops the loop, so a
  // condition met by a timer callback does not wait in poll for the next
  // event.
  bool runUntil(const std::function<bool()>& done, std::chrono::milliseconds limit = 5s) {
    struct State {
      const std::function<bool()>* done;
      bool expired = false;
    } state{&done};
    uv_timer_t guard;
    uv_timer_init(&loop_, &guard);
    guard.data = &state;
    uv_timer_start(
        &guard, [](uv_timer_t* t) { static_cast<State*>(t->data)->expired = true; },
        static_cast<std::uint64_t>(limit.count()), 0);
    uv_prepare_t check;
    uv_prepare_init(&loop_, &check);
    check.data = &state;
    uv_prepare_start(&check, [](uv_prepare_t* p) {
      auto* s = static_cast<State*>(p->data);
      if ((*s->done)() || s->expired) {
        uv_stop(p->loop);
      }
    });
    while (!done() && !state.expired) {
      uv_run(&loop_, UV_RUN_ONCE);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&check), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    return done();
  }

  LookupConfig httpConfig(std::uint16_t port, std::chrono::milliseconds timeout = 2s) {
    LookupConfig config;
    config.kind = LookupKind::kHttp;
    EXPECT_TRUE(
        parseAuthHttpUrl("http://127.0.0.1:" + std::to_string(port) + "/auth", config.http).ok());
    config.timeout = timeout;
    return config;
  }

  uv_loop_t loop_{};
};

TEST_F(LookupLoopTest, RouteSendsTheRequestNginxWould) {
  ScriptedHttpServer server(&loop_,
                            [](const std::string&) { return routeAnswer("10.0.0.1", 143); });
  UvLookupLoop env(&loop_);
  LookupConfig config = httpConfig(server.port());
  config.headers = {{"X-Auth-Key", "k"}};
  std::vector<LookupResult> results;
  {
    HttpAuthLookup lookup(config, env);
    LookupRequest request = login("alice");
    lookup.lookup(request, [&](LookupResult r) { results.push_back(std::move(r)); });
    EXPECT_TRUE(results.empty());
    ASSERT_TRUE(runUntil([&] { return !results.empty(); }));
    EXPECT_EQ(results[0].describe(), "route 10.0.0.1:143");
    ASSERT_EQ(server.requests().size(), 1u);
    EXPECT_EQ(server.requests()[0], buildAuthHttpRequest(config.http, config.headers, request));
    EXPECT_EQ(lookup.inFlight(), 0u);
  }
  runUntil([&] { return server.open() == 0; });
  server.stop();
  EXPECT_EQ(results.size(), 1u);
}

TEST_F(LookupLoopTest, SeveralLookupsInFlightEachCompleteOnce) {
  // Answers only once all five requests are in, so all five are in flight
  // at the same time.
  std::map<std::string, int> ports = {
      {"u0", 1000}, {"u1", 1001}, {"u2", 1002}, {"u3", 1003}, {"u4", 1004}};
  ScriptedHttpServer server(&loop_, [&](const std::string& request) {
    return routeAnswer("10.0.0.9", ports.at(userOf(request)));
  });
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(server.port()), env);
  std::map<std::string, std::vector<LookupResult>> results;
  for (const auto& [user, port] : ports) {
    lookup.lookup(login(user), [&, user = user](LookupResult r) { results[user].push_back(r); });
  }
  EXPECT_EQ(lookup.inFlight(), 5u);
  ASSERT_TRUE(runUntil([&] { return results.size() == 5; }));
  runUntil([] { return false; }, 50ms);  // time for any stray second call
  for (const auto& [user, port] : ports) {
    ASSERT_EQ(results[user].size(), 1u) << user;
    EXPECT_EQ(results[user][0].describe(), "route 10.0.0.9:" + std::to_string(port));
  }
  server.stop();
}

TEST_F(LookupLoopTest, CancelledLookupClosesItsConnectionAndNeverCallsBack) {
  ScriptedHttpServer server(&loop_, [](const std::string&) { return ScriptedHttpServer::kNever; });
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(server.port()), env);
  bool called = false;
  PendingLookup pending =
      PendingLookup::start(lookup, login("alice"), [&](LookupResult) { called = true; });
  ASSERT_TRUE(runUntil([&] { return server.requests().size() == 1; }));
  pending.cancel();
  EXPECT_EQ(lookup.inFlight(), 0u);
  ASSERT_TRUE(runUntil([&] { return server.closedByPeer() == 1; }))
      << "the auth connection is closed at once";
  runUntil([] { return false; }, 100ms);
  EXPECT_FALSE(called);
  server.stop();
}

TEST_F(LookupLoopTest, DestroyingTheLookupMidFlightCallsNobody) {
  ScriptedHttpServer server(&loop_, [](const std::string&) { return ScriptedHttpServer::kNever; });
  UvLookupLoop env(&loop_);
  int calls = 0;
  {
    HttpAuthLookup lookup(httpConfig(server.port()), env);
    for (int i = 0; i < 3; ++i) {
      lookup.lookup(login("u" + std::to_string(i)), [&](LookupResult) { ++calls; });
    }
    ASSERT_TRUE(runUntil([&] { return server.requests().size() == 3; }));
  }
  ASSERT_TRUE(runUntil([&] { return server.closedByPeer() == 3; }));
  EXPECT_EQ(calls, 0);
  server.stop();
}

TEST_F(LookupLoopTest, SilentServerTimesOut) {
  ScriptedHttpServer server(&loop_, [](const std::string&) { return ScriptedHttpServer::kNever; });
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(server.port(), 150ms), env);
  std::vector<LookupResult> results;
  const auto start = std::chrono::steady_clock::now();
  lookup.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
  ASSERT_TRUE(runUntil([&] { return !results.empty(); }));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  // libuv arms timers from the loop's cached time, which may lag the clock
  // read above by a few ms.
  EXPECT_GE(elapsed, 150ms - 25ms);
  EXPECT_LT(elapsed, 2s);
  EXPECT_EQ(results[0].outcome, LookupOutcome::kUnavailable);
  EXPECT_EQ(results[0].error, "auth http server 127.0.0.1:" + std::to_string(server.port()) +
                                  ": no answer within 150ms (while waiting for the answer)");
  server.stop();
}

TEST_F(LookupLoopTest, ClosedWithoutAnswerAndMalformedAnswer) {
  ScriptedHttpServer server(&loop_, [](const std::string& request) -> std::string {
    if (userOf(request) == "closer") {
      return ScriptedHttpServer::kClose;
    }
    return "SMTP 220 not http\r\n\r\n";
  });
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(server.port()), env);
  std::map<std::string, LookupResult> results;
  for (std::string user : {"closer", "garbled"}) {
    lookup.lookup(login(user), [&, user](LookupResult r) { results[user] = std::move(r); });
  }
  ASSERT_TRUE(runUntil([&] { return results.size() == 2; }));
  EXPECT_EQ(results["closer"].outcome, LookupOutcome::kUnavailable);
  EXPECT_NE(results["closer"].error.find("connection closed without an answer"), std::string::npos)
      << results["closer"].error;
  EXPECT_EQ(results["garbled"].outcome, LookupOutcome::kUnavailable);
  EXPECT_NE(results["garbled"].error.find("malformed HTTP answer"), std::string::npos)
      << results["garbled"].error;
  for (auto& [user, r] : results) {
    EXPECT_EQ(r.error.find("pw"), std::string::npos) << "no password in errors";
  }
  server.stop();
}

TEST_F(LookupLoopTest, RefusedConnectionIsUnavailableAtOnce) {
  // A port nobody listens on: bind one, note it, close it.
  std::uint16_t port = 0;
  {
    ScriptedHttpServer gone(&loop_, [](const std::string&) { return ""; });
    port = gone.port();
  }
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(port), env);
  std::vector<LookupResult> results;
  lookup.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
  ASSERT_TRUE(runUntil([&] { return !results.empty(); }, 1s));
  EXPECT_EQ(results[0].error, "auth http server 127.0.0.1:" + std::to_string(port) +
                                  ": cannot connect: connection refused");
}

TEST_F(LookupLoopTest, WaitAsksAgainThenRoutes) {
  int asked = 0;
  ScriptedHttpServer server(&loop_, [&](const std::string&) -> std::string {
    if (++asked < 3) {
      return "HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: 0\r\n\r\n";
    }
    return routeAnswer("10.0.0.2", 993);
  });
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(server.port()), env);
  std::vector<LookupResult> results;
  lookup.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
  ASSERT_TRUE(runUntil([&] { return !results.empty(); }));
  EXPECT_EQ(results[0].describe(), "route 10.0.0.2:993");
  ASSERT_EQ(server.requests().size(), 3u);
  EXPECT_EQ(server.requests()[0], server.requests()[2]) << "the same request each round";
  server.stop();
}

TEST_F(LookupLoopTest, EndlessWaitIsBounded) {
  ScriptedHttpServer server(
      &loop_, [](const std::string&) { return "HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\n\r\n"; });
  UvLookupLoop env(&loop_);
  HttpAuthLookup lookup(httpConfig(server.port()), env);
  std::vector<LookupResult> results;
  lookup.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
  ASSERT_TRUE(runUntil([&] { return !results.empty(); }));
  EXPECT_EQ(results[0].outcome, LookupOutcome::kUnavailable);
  EXPECT_NE(results[0].error.find("kept answering Auth-Status: WAIT"), std::string::npos);
  EXPECT_EQ(server.requests().size(), HttpAuthLookup::kMaxWaitRounds + 1);
  server.stop();
}

TEST_F(LookupLoopTest, UnixSocket) {
  std::string path = (std::filesystem::temp_directory_path() /
                      ("portico-auth-" + std::to_string(::getpid()) + ".sock"))
                         .string();
  std::filesystem::remove(path);
  ScriptedHttpServer server(
      &loop_, [](const std::string&) { return routeAnswer("10.0.0.3", 143); }, path);
  UvLookupLoop env(&loop_);
  LookupConfig config;
  Status parsed = parseAuthHttpUrl("unix:" + path + ":/auth", config.http);
  ASSERT_TRUE(parsed.ok()) << parsed.message();
  HttpAuthLookup lookup(config, env);
  std::vector<LookupResult> results;
  lookup.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
  ASSERT_TRUE(runUntil([&] { return !results.empty(); }));
  EXPECT_EQ(results[0].describe(), "route 10.0.0.3:143");
  ASSERT_EQ(server.requests().size(), 1u);
  EXPECT_EQ(server.requests()[0].rfind("GET /auth HTTP/1.0\r\nHost: localhost\r\n", 0), 0u);
  server.stop();
  uv_run(&loop_, UV_RUN_NOWAIT);
  std::filesystem::remove(path);
}

// Redis down: the first lookup fails as soon as the refused connect is
// seen, later ones at once during the backoff; none waits for `timeout`.
TEST_F(LookupLoopTest, RedisDownAnswersUnavailableQuickly) {
  std::uint16_t port = 0;
  {
    ScriptedHttpServer gone(&loop_, [](const std::string&) { return ""; });
    port = gone.port();
  }
  UvLookupLoop env(&loop_);
  LookupConfig config;
  config.kind = LookupKind::kRedis;
  config.redis_port = port;
  config.timeout = 5s;
  std::vector<LookupResult> results;
  const auto start = std::chrono::steady_clock::now();
  {
    RedisLookup redis(config, env);
    for (int i = 0; i < 3; ++i) {
      redis.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
      ASSERT_TRUE(runUntil([&] { return results.size() == static_cast<std::size_t>(i + 1); }));
    }
    EXPECT_FALSE(redis.connected());
    EXPECT_NE(redis.lastError().find("refused"), std::string::npos) << redis.lastError();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  for (const LookupResult& r : results) {
    EXPECT_EQ(r.outcome, LookupOutcome::kUnavailable);
    EXPECT_EQ(r.error.rfind("redis 127.0.0.1:" + std::to_string(port), 0), 0u) << r.error;
  }
}

// A server that accepts and never answers (a stalled Redis): the lookup is
// unavailable after `timeout`, the connection is dropped (its timer's
// owner goes while the timer runs: ASan checks that path), and the next
// lookup answers at once during the reconnect backoff.
TEST_F(LookupLoopTest, RedisStalledServerTimesOutAndDropsTheConnection) {
  ScriptedHttpServer stalled(&loop_, [](const std::string&) { return ScriptedHttpServer::kNever; });
  UvLookupLoop env(&loop_);
  LookupConfig config;
  config.kind = LookupKind::kRedis;
  config.redis_port = stalled.port();
  config.timeout = 100ms;
  std::vector<LookupResult> results;
  {
    RedisLookup redis(config, env);
    ASSERT_TRUE(runUntil([&] { return redis.connected(); }));
    redis.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
    ASSERT_TRUE(runUntil([&] { return results.size() == 1; }));
    EXPECT_EQ(results[0].error,
              "redis 127.0.0.1:" + std::to_string(stalled.port()) + ": no answer within 100ms");
    EXPECT_FALSE(redis.connected());
    const auto start = std::chrono::steady_clock::now();
    redis.lookup(login("alice"), [&](LookupResult r) { results.push_back(std::move(r)); });
    ASSERT_TRUE(runUntil([&] { return results.size() == 2; }));
    EXPECT_LT(std::chrono::steady_clock::now() - start, 50ms);
    EXPECT_NE(results[1].error.find("unavailable: stopped answering"), std::string::npos)
        << results[1].error;
    ASSERT_TRUE(runUntil([&] { return stalled.closedByPeer() >= 1; }));
  }
  stalled.stop();
}

}  // namespace
}  // namespace portico::proxy
