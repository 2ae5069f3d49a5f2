#include "lookup/http_auth_lookup.h"

#include <cassert>
#include <cstring>
#include <utility>

namespace portico::proxy {

// One lookup: the request bytes (they hold the password) and the pause
// between WAIT rounds.
struct HttpAuthLookup::Query {
  LookupId id = 0;
  LookupCallback callback;
  std::string request;  // secret
  std::uint32_t rounds = 0;
  std::chrono::seconds waited{0};
  TimerPtr pause;
  Exchange* exchange = nullptr;

  ~Query() { wipeSecret(request); }
};

// One HTTP exchange on its own connection. Deletes itself once both of its
// handles are closed; reports to its owner (unless detached) only then.
class HttpAuthLookup::Exchange {
 public:
  Exchange(HttpAuthLookup* owner, LookupId id, std::string request, AuthHttpLimits limits,
           const std::string& service)
      : owner_(owner), id_(id), service_(service), request_(std::move(request)), parser_(limits) {}
  ~Exchange() { wipeSecret(request_); }  // never sent if the connect failed

  void start(uv_loop_t* loop, const AuthHttpTarget& target, std::chrono::milliseconds timeout) {
    timeout_ = timeout;
    uv_timer_init(loop, &timer_);
    timer_.data = this;
    open_handles_ = 1;
    // Timers count from the loop's cached time, which lags the clock by
    // however long this loop iteration has run: refresh it, so the timeout
    // is never shorter than configured.
    uv_update_time(loop);
    uv_timer_start(&timer_, &Exchange::onTimeout, static_cast<std::uint64_t>(timeout.count()), 0);
    connect_req_.data = this;
    if (!target.unix_path.empty()) {
      uv_pipe_init(loop, &stream_.pipe, 0);
      stream_.pipe.data = this;
      ++open_handles_;
      uv_pipe_connect(&connect_req_, &stream_.pipe, target.unix_path.c_str(), &Exchange::onConnect);
      return;
    }
    uv_tcp_init(loop, &stream_.tcp);
    stream_.tcp.data = this;
    ++open_handles_;
    sockaddr_storage address{};
    int rc = target.ipv6 ? uv_ip6_addr(target.host.c_str(), target.port,
                                       reinterpret_cast<sockaddr_in6*>(&address))
                         : uv_ip4_addr(target.host.c_str(), target.port,
                                       reinterpret_cast<sockaddr_in*>(&address));
    if (rc == 0) {
      rc = uv_tcp_connect(&connect_req_, &stream_.tcp, reinterpret_cast<const sockaddr*>(&address),
                          &Exchange::onConnect);
    }
    if (rc != 0) {
      fail(std::string("cannot connect: ") + uv_strerror(rc));
    }
  }

  // The owner no longer wants the answer (cancelled, or going away).
  void detach() {
    owner_ = nullptr;
    closeAll();
  }

 private:
  union Stream {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  };

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&stream_); }
  uv_handle_t* streamHandle() { return reinterpret_cast<uv_handle_t*>(&stream_); }

  void fail(std::string why) {
    if (!finished_) {
      finished_ = true;
      answer_.result = LookupResult::unavailable("auth http server " + service_ + ": " + why);
    }
    closeAll();
  }

  void succeed(AuthHttpAnswer answer) {
    if (!finished_) {
      finished_ = true;
      answer_ = std::move(answer);
    }
    closeAll();
  }

  void closeAll() {
    if (closing_) {
      return;
    }
    closing_ = true;
    uv_timer_stop(&timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), &Exchange::onClosed);
    if (open_handles_ == 2) {
      uv_close(streamHandle(), &Exchange::onClosed);
    }
  }

  static void onClosed(uv_handle_t* handle) {
    auto* self = static_cast<Exchange*>(handle->data);
    if (--self->open_handles_ > 0) {
      return;
    }
    HttpAuthLookup* owner = self->owner_;
    LookupId id = self->id_;
    AuthHttpAnswer answer = std::move(self->answer_);
    delete self;
    if (owner != nullptr) {
      owner->exchangeDone(id, std::move(answer));
    }
  }

  static void onTimeout(uv_timer_t* timer) {
    auto* self = static_cast<Exchange*>(timer->data);
    const char* phase = !self->connected_ ? "connecting"
                        : !self->sent_    ? "sending the request"
                                          : "waiting for the answer";
    self->fail("no answer within " + std::to_string(self->timeout_.count()) + "ms (while " + phase +
               ")");
  }

  static void onConnect(uv_connect_t* req, int status) {
    auto* self = static_cast<Exchange*>(req->data);
    if (self->closing_) {
      return;  // UV_ECANCELED after closeAll()
    }
    if (status < 0) {
      self->fail(std::string("cannot connect: ") + uv_strerror(status));
      return;
    }
    self->connected_ = true;
    uv_buf_t buf = uv_buf_init(self->request_.data(), static_cast<unsigned>(self->request_.size()));
    self->write_req_.data = self;
    int rc = uv_write(&self->write_req_, self->stream(), &buf, 1, &Exchange::onWrite);
    if (rc == 0) {
      rc = uv_read_start(self->stream(), &Exchange::onAlloc, &Exchange::onRead);
    }
    if (rc != 0) {
      self->fail(std::string("cannot send the request: ") + uv_strerror(rc));
    }
  }

  static void onWrite(uv_write_t* req, int status) {
    auto* self = static_cast<Exchange*>(req->data);
    // The request is on its way (or failed): the password copy goes now.
    wipeSecret(self->request_);
    if (self->closing_) {
      return;
    }
    if (status < 0) {
      self->fail(std::string("cannot send the request: ") + uv_strerror(status));
      return;
    }
    self->sent_ = true;
  }

  static void onAlloc(uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
    auto* self = static_cast<Exchange*>(handle->data);
    *buf = uv_buf_init(self->buffer_, sizeof(self->buffer_));
  }

  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* self = static_cast<Exchange*>(stream->data);
    if (self->closing_ || nread == 0) {
      return;
    }
    using State = AuthHttpResponseParser::State;
    State state = State::kNeedMore;
    if (nread > 0) {
      state = self->parser_.feed(std::string_view(buf->base, static_cast<std::size_t>(nread)));
    } else if (nread == UV_EOF) {
      state = self->parser_.finish();
    } else {
      self->fail(std::string("error reading the answer: ") + uv_strerror(static_cast<int>(nread)));
      return;
    }
    std::memset(self->buffer_, 0, sizeof(self->buffer_));  // may have held Auth-Pass
    if (state == State::kComplete) {
      self->succeed(interpretAuthHttpAnswer(self->parser_.headers(), self->service_));
    } else if (state == State::kError) {
      self->fail(self->parser_.error());
    }
  }

 private:
  HttpAuthLookup* owner_;
  LookupId id_;
  std::string service_;
  std::string request_;
  AuthHttpResponseParser parser_;
  std::chrono::milliseconds timeout_{0};
  Stream stream_{};
  uv_timer_t timer_{};
  uv_connect_t connect_req_{};
  uv_write_t write_req_{};
  char buffer_[4096];
  int open_handles_ = 0;
  bool closing_ = false;
  bool connected_ = false;
  bool sent_ = false;
  bool finished_ = false;
  AuthHttpAnswer answer_;
};

HttpAuthLookup::HttpAuthLookup(const LookupConfig& config, LookupLoop& loop, AuthHttpLimits limits)
    : loop_(loop),
      target_(config.http),
      headers_(config.headers),
      timeout_(config.timeout),
      limits_(limits),
      service_(config.http.text()) {
  assert(loop_.uvLoop() != nullptr);
}

HttpAuthLookup::~HttpAuthLookup() {
  for (auto& [id, query] : queries_) {
    if (query->exchange != nullptr) {
      query->exchange->detach();
      query->exchange = nullptr;
    }
  }
  queries_.clear();
}

LookupId HttpAuthLookup::lookup(const LookupRequest& request, LookupCallback callback) {
  const LookupId id = next_id_++;
  auto query = std::make_unique<Query>();
  query->id = id;
  query->callback = std::move(callback);
  query->request = buildAuthHttpRequest(target_, headers_, request);
  Query& ref = *query;
  queries_.emplace(id, std::move(query));
  startExchange(ref);
  return id;
}

void HttpAuthLookup::cancel(LookupId id) {
  auto it = queries_.find(id);
  if (it == queries_.end()) {
    return;
  }
  if (it->second->exchange != nullptr) {
    it->second->exchange->detach();
  }
  queries_.erase(it);
}

void HttpAuthLookup::startExchange(Query& query) {
  // Each round sends its own copy: the exchange wipes it once written.
  auto* exchange = new Exchange(this, query.id, query.request, limits_, service_);
  query.exchange = exchange;
  exchange->start(loop_.uvLoop(), target_, timeout_);
}

void HttpAuthLookup::exchangeDone(LookupId id, AuthHttpAnswer answer) {
  auto it = queries_.find(id);
  if (it == queries_.end()) {
    return;
  }
  Query& query = *it->second;
  query.exchange = nullptr;
  if (!answer.ask_again) {
    complete(id, std::move(answer.result));
    return;
  }
  ++query.rounds;
  query.waited += std::chrono::seconds{answer.wait_seconds};
  if (query.rounds > kMaxWaitRounds || query.waited > kMaxWaitTotal) {
    complete(id, LookupResult::unavailable("auth http server " + service_ +
                                           " kept answering Auth-Status: WAIT (" +
                                           std::to_string(query.rounds) + " times, " +
                                           std::to_string(query.waited.count()) + "s)"));
    return;
  }
  if (!query.pause) {
    query.pause = loop_.createTimer([this, id] {
      auto found = queries_.find(id);
      if (found != queries_.end()) {
        startExchange(*found->second);
      }
    });
  }
  query.pause->arm(std::chrono::seconds{answer.wait_seconds});
}

void HttpAuthLookup::complete(LookupId id, LookupResult result) {
  auto it = queries_.find(id);
  if (it == queries_.end()) {
    return;
  }
  LookupCallback callback = std::move(it->second->callback);
  queries_.erase(it);
  callback(std::move(result));
}

}  // namespace portico::proxy
