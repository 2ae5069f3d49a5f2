// JSON text for everything Portico serves: admin socket replies, the status
// endpoint, probe results and porticoctl's output.
//
// Contract: jsonText() never throws for content. Strings in Portico's JSON
// carry bytes from peers (a user name from a LOGIN literal, a backend's
// error text, an admin request word, a URL's percent-decoded target) that
// need not be UTF-8. nlohmann's plain dump() throws type_error 316 on such
// a string, which on the event loop aborts the process; here every invalid
// sequence becomes U+FFFD instead, so the output is always valid UTF-8 JSON.
// Use it for every serialisation; never call dump() directly.
//
// Header-only so that porticoctl, which links none of Portico's libraries,
// uses the same rule.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace portico {

// Compact (indent < 0, the default) or pretty-printed JSON text of `value`.
// With ascii_only, every character beyond ASCII is written as \uXXXX, so
// not one byte of the text can act as a terminal control (for output to a
// terminal, such as porticoctl --json).
inline std::string jsonText(const nlohmann::json& value, int indent = -1, bool ascii_only = false) {
  return value.dump(indent, ' ', ascii_only, nlohmann::json::error_handler_t::replace);
}

}  // namespace portico
