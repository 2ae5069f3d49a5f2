// Small helpers the fleet client's source files share (fleet_client.cc,
// fleet_sessions.cc): key names, the time and tokens they write, and
// reading hiredis replies. Not part of any public interface.
#pragma once

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <string_view>

#include "fleet/fleet_client.h"

namespace portico::proxy::fleet {

// A key under this fleet's prefix (kKeyPrefix).
inline std::string key(std::string_view name) {
  return std::string(kKeyPrefix) + std::string(name);
}

inline std::uint64_t wallMs() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

inline std::string randomToken() {
  std::random_device device;
  std::uint64_t value = (static_cast<std::uint64_t>(device()) << 32) | device();
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

inline std::string_view textOf(const redisReply* reply) {
  return reply != nullptr && (reply->type == REDIS_REPLY_STRING ||
                              reply->type == REDIS_REPLY_STATUS || reply->type == REDIS_REPLY_ERROR)
             ? std::string_view(reply->str, reply->len)
             : std::string_view();
}

// The error of a reply: transport error, Redis error, or "".
inline std::string replyError(const redisReply* reply, const std::string& error) {
  if (reply == nullptr) {
    return error.empty() ? "no reply" : error;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    return "redis: " + std::string(textOf(reply).substr(0, 200));
  }
  return "";
}

}  // namespace portico::proxy::fleet
