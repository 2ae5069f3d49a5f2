#include "lookup/redis_lookup.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>
#include <zlib.h>

#include <algorithm>
#include <cassert>
#include <utility>

#include "config/config.h"
#include "lookup/redis_uv.h"
#include "routing.h"

namespace portico::proxy {

namespace {

bool isBackendNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

std::string trimmed(std::string_view text) {
  const char* space = " \t\r\n";
  std::size_t begin = text.find_first_not_of(space);
  if (begin == std::string_view::npos) {
    return "";
  }
  std::size_t end = text.find_last_not_of(space);
  return std::string(text.substr(begin, end - begin + 1));
}

std::string printableForLog(std::string_view text) {
  constexpr std::size_t kMax = 64;
  std::string out;
  for (char ch : text.substr(0, kMax)) {
    auto c = static_cast<unsigned char>(ch);
    out += (c < 0x20 || c >= 0x7f) ? '?' : ch;
  }
  return text.size() > kMax ? out + "..." : out;
}

// privdata for a GET: the lookup id and which of its two GETs.
void* encodeTag(LookupId id, int slot) {
  return reinterpret_cast<void*>(
      static_cast<std::uintptr_t>((id << 1) | static_cast<unsigned>(slot)));
}

}  // namespace

std::uint32_t lookupShard(std::string_view normalised_user, std::uint32_t shards) {
  if (shards == 0) {
    return 0;
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(normalised_user.data()),
              static_cast<uInt>(normalised_user.size()));
  return static_cast<std::uint32_t>(crc % shards);
}

std::string expandKeyTemplate(std::string_view pattern, std::string_view placeholder,
                              std::string_view value) {
  std::size_t at = pattern.find(placeholder);
  if (at == std::string_view::npos) {
    return std::string(pattern);
  }
  std::string out(pattern.substr(0, at));
  out += value;
  out += pattern.substr(at + placeholder.size());
  return out;
}

std::optional<LookupRoute> parseRouteValue(std::string_view value) {
  std::string text = trimmed(value);
  if (text.empty()) {
    return std::nullopt;
  }
  LookupRoute route;
  if (std::optional<HostPort> address = parseHostPort(text)) {
    route.host = address->host;
    route.port = address->port;
    route.ipv6 = address->ipv6;
    return route;
  }
  if (text.size() <= 128 && std::all_of(text.begin(), text.end(), isBackendNameChar)) {
    route.backend = text;
    return route;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// RedisLookup.

struct RedisLookup::Query {
  LookupId id = 0;
  LookupCallback callback;
  TimerPtr timer;
  std::uint64_t connection = 0;  // the connection its GETs went out on
  int expected = 0;
  int answered = 0;
  std::string keys[2];                   // per-user key, shard key
  std::optional<std::string> values[2];  // their values (absent: nil or empty)
};

RedisLookup::RedisLookup(const LookupConfig& config, LookupLoop& loop)
    : loop_(loop),
      config_(config),
      connect_timer_(loop.createTimer([this] {
        if (state_ == State::kConnecting) {
          dropConnection("no connection within " + std::to_string(config_.timeout.count()) + "ms");
        }
      })),
      backoff_timer_(loop.createTimer([this] { connect(); })),
      deferred_(loop) {
  assert(loop_.uvLoop() != nullptr);
  connect();
}

RedisLookup::~RedisLookup() {
  closing_ = true;
  queries_.clear();
  if (context_ != nullptr) {
    redisAsyncContext* context = context_;
    context_ = nullptr;
    redisAsyncFree(context);  // its callbacks see closing_ and do nothing
  }
}

std::string RedisLookup::where() const {
  return "redis " + (config_.redis_ipv6 ? "[" + config_.redis_host + "]" : config_.redis_host) +
         ":" + std::to_string(config_.redis_port);
}

void RedisLookup::connect() {
  if (closing_ || context_ != nullptr) {
    return;
  }
  redisAsyncContext* context = redisAsyncConnect(config_.redis_host.c_str(), config_.redis_port);
  if (context == nullptr) {
    connectFailed("out of memory");
    return;
  }
  if (context->err != 0) {
    std::string error = context->errstr;
    redisAsyncFree(context);
    connectFailed(error);
    return;
  }
  if (!uvRedisAttach(context, loop_.uvLoop())) {
    redisAsyncFree(context);
    connectFailed("cannot watch the socket");
    return;
  }
  context->data = this;
  redisAsyncSetConnectCallback(context, &RedisLookup::onConnect);
  redisAsyncSetDisconnectCallback(context, &RedisLookup::onDisconnect);
  // hiredis learns that a non-blocking connect finished from the first
  // write event; ask for one even before any command is queued.
  uvRedisAddWrite(context->ev.data);
  context_ = context;
  ++connection_;
  state_ = State::kConnecting;
  connect_timer_->arm(config_.timeout);
}

void RedisLookup::connectFailed(std::string error) {
  last_error_ = std::move(error);
  state_ = State::kBackoff;
  backoff_ = backoff_.count() == 0 ? kMinBackoff : std::min(kMaxBackoff, backoff_ * 2);
  backoff_timer_->arm(backoff_);
}

void RedisLookup::onConnect(const redisAsyncContext* context, int status) {
  auto* self = static_cast<RedisLookup*>(context->data);
  if (self == nullptr || self->closing_ || context != self->context_) {
    return;
  }
  self->connect_timer_->cancel();
  if (status != REDIS_OK) {
    // hiredis frees the context after this callback.
    self->context_ = nullptr;
    self->connectFailed(context->errstr[0] != '\0' ? context->errstr : "cannot connect");
    return;
  }
  self->state_ = State::kConnected;
  self->backoff_ = std::chrono::milliseconds{0};
}

void RedisLookup::onDisconnect(const redisAsyncContext* context, int status) {
  auto* self = static_cast<RedisLookup*>(context->data);
  if (self == nullptr || self->closing_ || context != self->context_) {
    return;
  }
  // A connection that worked is re-made at once; if that fails, the
  // backoff starts.
  self->context_ = nullptr;
  self->last_error_ =
      status == REDIS_OK || context->errstr[0] == '\0' ? "connection closed" : context->errstr;
  self->state_ = State::kBackoff;
  self->connect();
}

void RedisLookup::dropConnection(std::string why) {
  if (context_ == nullptr) {
    return;
  }
  redisAsyncContext* context = context_;
  context_ = nullptr;
  connect_timer_->cancel();
  connectFailed(std::move(why));
  // Fails the GETs still waiting on it (their callbacks get no reply).
  redisAsyncFree(context);
}

LookupId RedisLookup::lookup(const LookupRequest& request, LookupCallback callback) {
  const LookupId id = next_id_++;
  if (state_ == State::kBackoff || context_ == nullptr) {
    deferred_.post(id, std::move(callback),
                   LookupResult::unavailable(where() + " unavailable: " + last_error_));
    return id;
  }
  const std::string user = normaliseUser(request.user);
  auto query = std::make_unique<Query>();
  query->id = id;
  query->callback = std::move(callback);
  query->connection = connection_;
  query->keys[0] = expandKeyTemplate(config_.key, "{user}", user);
  if (config_.shards > 0) {
    query->keys[1] = expandKeyTemplate(config_.shard_key, "{shard}",
                                       std::to_string(lookupShard(user, config_.shards)));
  }
  query->timer = loop_.createTimer([this, id] {
    // This closure belongs to the query's timer, which goes with the query:
    // take the query out of the map so that it lives to the end of this
    // call, and use only locals from here on.
    RedisLookup* self = this;
    auto it = self->queries_.find(id);
    if (it == self->queries_.end()) {
      return;
    }
    std::unique_ptr<Query> query = std::move(it->second);
    self->queries_.erase(it);
    LookupCallback callback = std::move(query->callback);
    if (query->connection == self->connection_ && self->context_ != nullptr) {
      self->dropConnection("stopped answering");
    }
    callback(LookupResult::unavailable(self->where() + ": no answer within " +
                                       std::to_string(self->config_.timeout.count()) + "ms"));
  });
  if (loop_.uvLoop() != nullptr) {
    uv_update_time(loop_.uvLoop());  // from now, not from the loop's cached time
  }
  query->timer->arm(config_.timeout);
  Query& ref = *query;
  queries_.emplace(id, std::move(query));
  // Both GETs leave in one write: hiredis sends its output buffer when the
  // socket is next writable.
  sendGet(ref, ref.keys[0], 0);
  if (config_.shards > 0 && queries_.count(id) != 0) {
    sendGet(ref, ref.keys[1], 1);
  }
  return id;
}

void RedisLookup::sendGet(Query& query, const std::string& key, int slot) {
  const char* argv[2] = {"GET", key.c_str()};
  const std::size_t lengths[2] = {3, key.size()};
  ++query.expected;
  if (redisAsyncCommandArgv(context_, &RedisLookup::onReplyThunk, encodeTag(query.id, slot), 2,
                            argv, lengths) != REDIS_OK) {
    // Only when the context is being torn down; answer from the loop.
    LookupId id = query.id;
    LookupCallback callback = std::move(query.callback);
    queries_.erase(id);
    deferred_.post(id, std::move(callback),
                   LookupResult::unavailable(where() + " unavailable: connection closing"));
  }
}

void RedisLookup::onReplyThunk(redisAsyncContext* context, void* reply, void* privdata) {
  auto* self = static_cast<RedisLookup*>(context->data);
  if (self == nullptr || self->closing_) {
    return;
  }
  auto tag = reinterpret_cast<std::uintptr_t>(privdata);
  self->onReply(static_cast<LookupId>(tag >> 1), static_cast<int>(tag & 1), context, reply);
}

void RedisLookup::onReply(LookupId id, int slot, redisAsyncContext* context, void* raw) {
  auto it = queries_.find(id);
  if (it == queries_.end()) {
    return;  // cancelled or timed out
  }
  Query& query = *it->second;
  auto* reply = static_cast<redisReply*>(raw);
  if (reply == nullptr) {
    std::string why =
        context->err != 0 && context->errstr[0] != '\0' ? context->errstr : "connection closed";
    complete(id, LookupResult::unavailable(where() + ": " + why));
    return;
  }
  switch (reply->type) {
    case REDIS_REPLY_NIL:
      break;
    case REDIS_REPLY_STRING: {
      std::string value = trimmed(std::string_view(reply->str, reply->len));
      if (!value.empty()) {
        query.values[slot] = std::move(value);
      }
      break;
    }
    case REDIS_REPLY_ERROR:
      complete(
          id, LookupResult::unavailable(where() + ": GET " + query.keys[slot] + ": " +
                                        printableForLog(std::string_view(reply->str, reply->len))));
      return;
    default:
      complete(id,
               LookupResult::unavailable(where() + ": GET " + query.keys[slot] +
                                         ": unexpected reply type " + std::to_string(reply->type)));
      return;
  }
  if (++query.answered == query.expected) {
    decide(query);
  }
}

void RedisLookup::decide(Query& query) {
  const LookupId id = query.id;
  int slot = query.values[0] ? 0 : query.values[1] ? 1 : -1;
  if (slot < 0) {
    complete(id, LookupResult::noEntry());
    return;
  }
  const std::string& value = *query.values[slot];
  std::optional<LookupRoute> route = parseRouteValue(value);
  if (!route) {
    complete(id, LookupResult::unavailable(where() + ": key " + query.keys[slot] + " holds \"" +
                                           printableForLog(value) +
                                           "\", neither IP:PORT nor a backend name"));
    return;
  }
  LookupResult result;
  result.outcome = LookupOutcome::kRoute;
  result.route = std::move(*route);
  complete(id, std::move(result));
}

void RedisLookup::complete(LookupId id, LookupResult result) {
  auto it = queries_.find(id);
  if (it == queries_.end()) {
    return;
  }
  LookupCallback callback = std::move(it->second->callback);
  queries_.erase(it);
  callback(std::move(result));
}

void RedisLookup::cancel(LookupId id) {
  // A cancelled GET still gets its reply; onReply() then finds no query.
  if (queries_.erase(id) == 0) {
    deferred_.cancel(id);
  }
}

}  // namespace portico::proxy
