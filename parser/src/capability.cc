// Capability lists: splitting, lookup and the rewrite the proxy applies to
// what a backend advertises (for example dropping COMPRESS=DEFLATE, which
// a byte relay that watches commands cannot pass through).

#include <string>
#include <string_view>
#include <vector>

#include "portico/parser.h"
#include "prelogin_internal.h"

namespace portico::parser {
namespace {

using internal::equalsIgnoreCase;
using internal::startsWithIgnoreCase;

constexpr std::string_view kKeyword = "CAPABILITY";

// Calls f(atom) for each space-separated atom of `list`.
template <typename F>
void forEachCapability(std::string_view list, F&& f) {
  std::size_t i = 0;
  while (i < list.size()) {
    if (list[i] == ' ') {
      ++i;
      continue;
    }
    const std::size_t end = list.find(' ', i);
    const std::size_t stop = end == std::string_view::npos ? list.size() : end;
    f(list.substr(i, stop - i));
    i = stop;
  }
}

// The word starting at `pos` (up to the next SP or the end).
std::string_view wordAt(std::string_view text, std::size_t pos) {
  if (pos >= text.size()) {
    return {};
  }
  const std::size_t end = text.find(' ', pos);
  return text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
}

bool isStatusWord(std::string_view word) {
  return equalsIgnoreCase(word, "OK") || equalsIgnoreCase(word, "NO") ||
         equalsIgnoreCase(word, "BAD") || equalsIgnoreCase(word, "PREAUTH") ||
         equalsIgnoreCase(word, "BYE");
}

// Finds the capability list in a response line without its line end:
// [list_begin, list_end) is everything between the CAPABILITY keyword and the
// end of the line (untagged CAPABILITY response) or the closing ']' (response
// code). The list, when not empty, starts with a SP.
bool findCapabilityList(std::string_view body, std::size_t& list_begin, std::size_t& list_end) {
  const std::string_view first = wordAt(body, 0);
  if (first.empty() || first == "+") {
    return false;
  }
  const std::size_t second_pos = first.size() + 1;
  if (second_pos > body.size()) {
    return false;
  }
  const std::string_view second = wordAt(body, second_pos);
  if (first == "*" && equalsIgnoreCase(second, kKeyword)) {
    list_begin = second_pos + kKeyword.size();
    list_end = body.size();
    return true;
  }
  if (!isStatusWord(second)) {
    return false;
  }
  const std::size_t code_pos = second_pos + second.size() + 1;
  if (code_pos >= body.size() || body[code_pos] != '[' ||
      !startsWithIgnoreCase(body.substr(code_pos + 1), kKeyword)) {
    return false;
  }
  list_begin = code_pos + 1 + kKeyword.size();
  if (list_begin >= body.size() || (body[list_begin] != ' ' && body[list_begin] != ']')) {
    return false;  // e.g. [CAPABILITYX ...]
  }
  list_end = body.find(']', list_begin);
  return list_end != std::string_view::npos;
}

bool matchesRemoval(std::string_view capability, const std::vector<std::string_view>& remove) {
  for (std::string_view entry : remove) {
    if (entry.empty()) {
      continue;
    }
    if (entry.back() == '=' ? startsWithIgnoreCase(capability, entry)
                            : equalsIgnoreCase(capability, entry)) {
      return true;
    }
  }
  return false;
}

bool containsIgnoreCase(const std::vector<std::string_view>& list, std::string_view item) {
  for (std::string_view entry : list) {
    if (equalsIgnoreCase(entry, item)) {
      return true;
    }
  }
  return false;
}

}  // namespace

std::vector<std::string_view> parseCapabilities(std::string_view list) {
  std::vector<std::string_view> out;
  forEachCapability(list, [&out](std::string_view atom) { out.push_back(atom); });
  return out;
}

bool hasCapability(std::string_view list, std::string_view capability) {
  bool found = false;
  forEachCapability(
      list, [&](std::string_view atom) { found = found || equalsIgnoreCase(atom, capability); });
  return found;
}

std::string editCapabilities(std::string_view line, const std::vector<std::string_view>& remove,
                             const std::vector<std::string_view>& add) {
  std::string_view body = line;
  if (body.size() >= 2 && body.substr(body.size() - 2) == "\r\n") {
    body.remove_suffix(2);
  } else if (!body.empty() && body.back() == '\n') {
    body.remove_suffix(1);
  }
  std::size_t list_begin = 0;
  std::size_t list_end = 0;
  if (!findCapabilityList(body, list_begin, list_end)) {
    return std::string(line);
  }
  const std::vector<std::string_view> present =
      parseCapabilities(body.substr(list_begin, list_end - list_begin));
  std::vector<std::string_view> kept;
  kept.reserve(present.size() + add.size());
  for (std::string_view capability : present) {
    if (!matchesRemoval(capability, remove)) {
      kept.push_back(capability);
    }
  }
  bool changed = kept.size() != present.size();
  for (std::string_view capability : add) {
    // Entries with a space would break the list into other atoms.
    if (!capability.empty() && capability.find(' ') == std::string_view::npos &&
        !containsIgnoreCase(kept, capability)) {
      kept.push_back(capability);
      changed = true;
    }
  }
  if (!changed) {
    return std::string(line);
  }
  std::string out(line.substr(0, list_begin));
  for (std::string_view capability : kept) {
    out.push_back(' ');
    out.append(capability);
  }
  out.append(line.substr(list_end));
  return out;
}

}  // namespace portico::parser
