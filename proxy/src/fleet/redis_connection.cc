#include "fleet/redis_connection.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <utility>

#include "lookup/redis_uv.h"

namespace portico::proxy::fleet {

namespace {

constexpr std::uint64_t kTickMs = 50;
using SteadyClock = std::chrono::steady_clock;

void* tagOf(std::uint64_t id) {
  return reinterpret_cast<void*>(static_cast<std::uintptr_t>(id));
}

}  // namespace

RedisConnection::RedisConnection(uv_loop_t* loop, std::string host, std::uint16_t port, bool ipv6,
                                 std::chrono::milliseconds timeout, Hooks hooks)
    : loop_(loop),
      host_(std::move(host)),
      port_(port),
      ipv6_(ipv6),
      timeout_(timeout),
      hooks_(std::move(hooks)) {}

RedisConnection::~RedisConnection() {
  close();
}

std::string RedisConnection::where() const {
  return "redis " + (ipv6_ ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
}

void RedisConnection::start() {
  if (timer_ != nullptr || state_ == State::kClosed) {
    return;
  }
  timer_ = new uv_timer_t;
  uv_timer_init(loop_, timer_);
  timer_->data = this;
  uv_timer_start(
      timer_, [](uv_timer_t* t) { static_cast<RedisConnection*>(t->data)->sweep(); }, kTickMs,
      kTickMs);
  connect();
}

void RedisConnection::close() {
  if (state_ == State::kClosed) {
    return;
  }
  drop("closing");
  state_ = State::kClosed;
  if (timer_ != nullptr) {
    uv_timer_stop(timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    timer_ = nullptr;
  }
}

void RedisConnection::connect() {
  if (state_ == State::kClosed || context_ != nullptr) {
    return;
  }
  redisAsyncContext* context = redisAsyncConnect(host_.c_str(), port_);
  if (context == nullptr) {
    failed("out of memory");
    return;
  }
  if (context->err != 0) {
    std::string error = context->errstr;
    redisAsyncFree(context);
    failed(error);
    return;
  }
  if (!uvRedisAttach(context, loop_)) {
    redisAsyncFree(context);
    failed("cannot watch the socket");
    return;
  }
  context->data = this;
  redisAsyncSetConnectCallback(context, &RedisConnection::onConnect);
  redisAsyncSetDisconnectCallback(context, &RedisConnection::onDisconnect);
  uvRedisAddWrite(context->ev.data);
  context_ = context;
  state_ = State::kConnecting;
  uv_update_time(loop_);
  connect_deadline_ = SteadyClock::now() + timeout_;
}

// A connect that failed, or a connection that went: wait, then retry.
void RedisConnection::failed(std::string why) {
  if (state_ == State::kClosed) {
    return;
  }
  const bool was_connected = state_ == State::kConnected;
  last_error_ = std::move(why);
  state_ = State::kBackoff;
  backoff_ =
      was_connected || backoff_.count() == 0 ? kMinBackoff : std::min(kMaxBackoff, backoff_ * 2);
  retry_at_ = SteadyClock::now() + backoff_;
  if (hooks_.lost) {
    hooks_.lost(last_error_);
  }
}

void RedisConnection::drop(std::string why) {
  std::map<std::uint64_t, Pending> waiting = std::move(pending_);
  pending_.clear();
  if (context_ != nullptr) {
    redisAsyncContext* context = context_;
    context_ = nullptr;
    context->data = nullptr;  // its callbacks now find no owner
    redisAsyncFree(context);
  }
  if (state_ == State::kConnecting || state_ == State::kConnected) {
    failed(why);
  }
  for (auto& [id, pending] : waiting) {
    pending.callback(nullptr, where() + ": " + why);
  }
}

void RedisConnection::sweep() {
  const auto now = SteadyClock::now();
  if (state_ == State::kBackoff && now >= retry_at_) {
    connect();
    return;
  }
  if (state_ == State::kConnecting && now >= connect_deadline_) {
    drop("no connection within " + std::to_string(timeout_.count()) + "ms");
    return;
  }
  for (const auto& [id, pending] : pending_) {
    if (pending.deadline <= now) {
      drop("no answer within " + std::to_string(timeout_.count()) + "ms");
      return;
    }
  }
}

void RedisConnection::onConnect(const redisAsyncContext* context, int status) {
  auto* self = static_cast<RedisConnection*>(context->data);
  if (self == nullptr || context != self->context_) {
    return;
  }
  if (status != REDIS_OK) {
    self->context_ = nullptr;  // hiredis frees it after this callback
    self->failed(context->errstr[0] != '\0' ? context->errstr : "cannot connect");
    return;
  }
  self->state_ = State::kConnected;
  self->backoff_ = std::chrono::milliseconds{0};
  if (self->hooks_.connected) {
    self->hooks_.connected();
  }
}

void RedisConnection::onDisconnect(const redisAsyncContext* context, int status) {
  auto* self = static_cast<RedisConnection*>(context->data);
  if (self == nullptr || context != self->context_) {
    return;
  }
  self->context_ = nullptr;  // hiredis frees it
  std::map<std::uint64_t, Pending> waiting = std::move(self->pending_);
  self->pending_.clear();
  const std::string why =
      status == REDIS_OK || context->errstr[0] == '\0' ? "connection closed" : context->errstr;
  self->failed(why);
  for (auto& [id, pending] : waiting) {
    pending.callback(nullptr, self->where() + ": " + why);
  }
}

void RedisConnection::onReply(redisAsyncContext* context, void* raw, void* privdata) {
  auto* self = static_cast<RedisConnection*>(context->data);
  if (self == nullptr) {
    return;
  }
  auto id = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(privdata));
  auto it = self->pending_.find(id);
  if (it == self->pending_.end()) {
    return;
  }
  auto* reply = static_cast<redisReply*>(raw);
  const bool persistent = it->second.deadline == SteadyClock::time_point::max();
  if (reply == nullptr || !persistent) {
    Callback callback = std::move(it->second.callback);
    self->pending_.erase(it);
    std::string error;
    if (reply == nullptr) {
      error =
          self->where() + ": " +
          (context->err != 0 && context->errstr[0] != '\0' ? context->errstr : "connection closed");
    }
    callback(reply, error);
    return;
  }
  it->second.callback(reply, "");
}

bool RedisConnection::command(const std::vector<std::string>& args, Callback callback) {
  return send(args, std::move(callback), false);
}

bool RedisConnection::subscribe(const std::string& channel, Callback callback) {
  return send({"SUBSCRIBE", channel}, std::move(callback), true);
}

bool RedisConnection::send(const std::vector<std::string>& args, Callback callback,
                           bool persistent) {
  if (state_ != State::kConnected || context_ == nullptr || args.empty()) {
    return false;
  }
  std::vector<const char*> argv;
  std::vector<std::size_t> lengths;
  for (const std::string& arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  const std::uint64_t id = next_id_++;
  if (redisAsyncCommandArgv(context_, &RedisConnection::onReply, tagOf(id),
                            static_cast<int>(args.size()), argv.data(),
                            lengths.data()) != REDIS_OK) {
    return false;
  }
  uv_update_time(loop_);
  pending_.emplace(id, Pending{std::move(callback), persistent ? SteadyClock::time_point::max()
                                                               : SteadyClock::now() + timeout_});
  return true;
}

}  // namespace portico::proxy::fleet
