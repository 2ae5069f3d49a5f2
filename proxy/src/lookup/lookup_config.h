// [lookup]: where Portico asks which backend holds a user (docs/lookup.md).
// Key names are a contract with operators (issue 10); conf/portico.toml
// documents each key with its default.
//
// This header is plain data so that config.h can hold a LookupConfig without
// depending on toml++; lookup_toml.h reads one from a TOML table.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "portico/status.h"

namespace portico::proxy {

enum class LookupKind : std::uint8_t { kNone, kHttp, kRedis };
const char* lookupKindName(LookupKind kind);

// What a login gets when the directory has no entry for its user.
enum class LookupFallback : std::uint8_t { kHash, kRefuse };
const char* lookupFallbackName(LookupFallback fallback);

// Where the HTTP auth service listens, split from `url` the way nginx's
// auth_http splits it: "http://IP[:PORT][/URI]" (the "http://" is optional,
// the port defaults to 80, the URI to "/") or "unix:/PATH[:/URI]". Only IP
// literals: Portico resolves no names on its event loops.
struct AuthHttpTarget {
  std::string host;          // IP literal, no brackets; empty for a unix socket
  std::uint16_t port = 0;    // TCP port (0 for a unix socket)
  bool ipv6 = false;         // host is IPv6
  std::string unix_path;     // set for "unix:" URLs
  std::string uri = "/";     // as written, sent verbatim in the request line
  std::string host_header;   // what nginx sends as Host: the host without port,
                             // or "localhost" for a unix socket
  std::string text() const;  // "127.0.0.1:9000" or "unix:/run/auth.sock", for errors
  bool operator==(const AuthHttpTarget&) const = default;
};

struct LookupConfig {
  LookupKind kind = LookupKind::kNone;
  std::chrono::milliseconds timeout{5'000};     // bounds one whole directory query
  std::chrono::milliseconds cache_ttl{60'000};  // positive answers; 0 disables the cache
  std::uint32_t cache_size = 100'000;           // entries per worker
  LookupFallback fallback = LookupFallback::kHash;

  // kind = "http"
  std::string url;  // as written
  AuthHttpTarget http;
  // Extra request headers (nginx's auth_http_header), in file order.
  std::vector<std::pair<std::string, std::string>> headers;

  // kind = "redis"
  std::string redis_host = "127.0.0.1";  // IP literal, no brackets
  std::uint16_t redis_port = 6379;
  bool redis_ipv6 = false;
  std::string key = "route:{user}";               // {user}: the normalised user
  std::uint32_t shards = 0;                       // 0: no shard indirection
  std::string shard_key = "route:shard:{shard}";  // {shard}: 0 .. shards-1

  // A reload rebuilds the workers' stages only when [lookup] changed.
  bool operator==(const LookupConfig&) const = default;
  // What the directory is, for the health model and logs: "http
  // 127.0.0.1:9000", "redis 127.0.0.1:6379"; "" for kind = "none".
  std::string serviceText() const;
};

// Splits an auth_http URL into `out`; an error when it is not one.
Status parseAuthHttpUrl(const std::string& url, AuthHttpTarget& out);

}  // namespace portico::proxy
