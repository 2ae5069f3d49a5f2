// Printable names for the parser's enums, kept beside each other so that a
// new enumerator without a name fails to compile.
#include <array>
#include <cstddef>

#include "portico/parser.h"

namespace portico::parser {
namespace {

constexpr std::array kErrorCodeNames = {
    "none",         "line_too_long",   "bare_cr",           "empty_line",
    "bad_tag",      "tag_too_long",    "missing_command",   "bad_command",
    "bad_literal",  "number_too_long", "literal_too_large", "expected_done",
    "bad_response", "bad_syntax",      "unknown_command",
};
static_assert(kErrorCodeNames.size() == static_cast<std::size_t>(ErrorCode::kCount));

constexpr std::array kCommandEventTypeNames = {
    "need_more", "literal", "command", "idle_done", "auth_line", "error",
};
static_assert(kCommandEventTypeNames.size() ==
              static_cast<std::size_t>(CommandEventType::kError) + 1);

constexpr std::array kResponseEventTypeNames = {
    "need_more", "untagged", "continuation", "tagged", "error",
};
static_assert(kResponseEventTypeNames.size() ==
              static_cast<std::size_t>(ResponseEventType::kError) + 1);

constexpr std::array kStatusNames = {"none", "OK", "NO", "BAD", "PREAUTH", "BYE"};
static_assert(kStatusNames.size() == static_cast<std::size_t>(Status::kBye) + 1);

template <typename Names, typename Enum>
const char* nameOf(const Names& names, Enum value) {
  const auto index = static_cast<std::size_t>(value);
  return index < names.size() ? names[index] : "unknown";
}

}  // namespace

const char* errorCodeName(ErrorCode code) {
  return nameOf(kErrorCodeNames, code);
}
const char* commandEventTypeName(CommandEventType type) {
  return nameOf(kCommandEventTypeNames, type);
}
const char* responseEventTypeName(ResponseEventType type) {
  return nameOf(kResponseEventTypeNames, type);
}
const char* statusName(Status status) {
  return nameOf(kStatusNames, status);
}

}  // namespace portico::parser
