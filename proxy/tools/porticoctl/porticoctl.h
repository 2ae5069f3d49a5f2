// porticoctl's parts: the admin-socket client (client.cc), the
// human-readable rendering of replies (render.cc) and the command line
// (main.cc). Private to the porticoctl executable.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace portico::ctl {

using nlohmann::json;

inline constexpr int kExitOk = 0;
inline constexpr int kExitRefused = 1;
inline constexpr int kExitUsage = 2;
inline constexpr std::size_t kMaxReply = 256u << 20;

// A usage, connection or protocol problem: message, exit status 2.
struct Failure {
  std::string message;
};

// client.cc
// The request line for `words`, quoted the way admin.cc's splitAdminLine
// reads it, with its '\n'.
std::string requestLine(const std::vector<std::string>& words);
// "10s", "500ms", "2m", "1.5s", "3" (seconds) -> milliseconds.
std::optional<std::chrono::milliseconds> parseTimeout(const std::string& text);
// Sends `line` to the admin socket at `path` and returns the reply line
// (without its '\n'); throws Failure.
std::string exchange(const std::string& path, const std::string& line,
                     std::chrono::milliseconds timeout);

// render.cc
// Everything printed for humans goes through shown(): a value can hold a
// client's bytes (a user name with ESC or CR LF in it), which must not
// drive the operator's terminal or forge output lines.
std::string shown(const std::string& s);
// Text of a scalar JSON value ("-" for null or absent), safe to print.
std::string text(const json& v);
// Prints an ok:true reply to `command` as tables / "key: value" lines.
void printHuman(const std::string& command, const std::vector<std::string>& words, const json& r);

}  // namespace portico::ctl
