// One asynchronous Redis connection on a libuv loop (hiredis, through the
// adapter the directory lookup uses: lookup/redis_uv.h), for fleet mode on
// the control loop. Never blocks the loop, and every wait has a bound:
// - connecting: `timeout`, then a retry after a backoff doubling from
//   kMinBackoff to kMaxBackoff (reset by a connection that works);
// - a command: answered (or failed) within `timeout`; a command that is not
//   answered in time drops the connection (a server that stopped answering),
//   which fails every command still waiting on it, and a reconnect follows.
// A subscription's callback runs for every message, with no deadline.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

struct redisAsyncContext;
struct redisReply;

namespace portico::proxy::fleet {

class RedisConnection {
 public:
  static constexpr std::chrono::milliseconds kMinBackoff{100};
  static constexpr std::chrono::milliseconds kMaxBackoff{2'000};

  // `reply` is null on failure, with `error` saying why; a Redis error
  // reply (type REDIS_REPLY_ERROR) is passed as a reply.
  using Callback = std::function<void(const redisReply* reply, const std::string& error)>;
  struct Hooks {
    std::function<void()> connected;
    std::function<void(const std::string& why)> lost;  // also: a connect that failed
  };

  RedisConnection(uv_loop_t* loop, std::string host, std::uint16_t port, bool ipv6,
                  std::chrono::milliseconds timeout, Hooks hooks);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Starts connecting (and keeps reconnecting until close()).
  void start();
  // Closes the connection and its timers; callbacks still waiting are
  // called with an error. The loop must run afterwards to free the handles.
  void close();

  bool connected() const { return state_ == State::kConnected; }
  const std::string& lastError() const { return last_error_; }
  std::string where() const;

  // Sends a command. False (and `callback` never runs) when not connected;
  // otherwise `callback` runs exactly once, later, from the loop.
  bool command(const std::vector<std::string>& args, Callback callback);
  // SUBSCRIBE `channel`; `callback` runs for each message (and once with an
  // error when the connection goes). False when not connected.
  bool subscribe(const std::string& channel, Callback callback);

 private:
  enum class State : std::uint8_t { kIdle, kConnecting, kConnected, kBackoff, kClosed };
  struct Pending {
    Callback callback;
    std::chrono::steady_clock::time_point deadline;  // max(): none (a subscription)
  };

  void connect();
  void failed(std::string why);
  void drop(std::string why);
  void sweep();
  bool send(const std::vector<std::string>& args, Callback callback, bool persistent);
  static void onConnect(const redisAsyncContext* context, int status);
  static void onDisconnect(const redisAsyncContext* context, int status);
  static void onReply(redisAsyncContext* context, void* reply, void* privdata);

  uv_loop_t* loop_;
  std::string host_;
  std::uint16_t port_;
  bool ipv6_;
  std::chrono::milliseconds timeout_;
  Hooks hooks_;
  redisAsyncContext* context_ = nullptr;
  State state_ = State::kIdle;
  std::chrono::steady_clock::time_point connect_deadline_;
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point retry_at_;
  std::string last_error_;
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, Pending> pending_;
  // One timer: connect deadline, command deadlines and the backoff, checked
  // every kTick.
  uv_timer_t* timer_ = nullptr;
};

}  // namespace portico::proxy::fleet
