// ReplyScanner: splits an IMAP server's byte stream into responses for the
// load tool. It is deliberately small and self-contained (the proxy's
// ResponseFramer lives in parser/): the load tool needs only the first line
// of each response and must skip literal bodies by count.
//
// - feed() hands each response's first line (no CRLF) to
//   sink.onResponse(kind, line); the view is valid only during that call.
//   The sink returns false to stop scanning (e.g. it closed the session);
//   feed() then returns true without looking at the rest of the input.
// - A literal `{N}` / `~{N}` (also `{N+}`) at the end of a line of an untagged
//   data response is skipped by count; the line after it continues the same
//   response and is not reported. Status responses (`* OK/NO/BAD/BYE/
//   PREAUTH`), tagged lines and continuations never carry literals.
// - Lines longer than kMaxLine, or literal sizes with more than 19 digits,
//   are fatal: feed() returns false and error() says why.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace portico::load {

class ReplyScanner {
 public:
  enum class Kind : std::uint8_t { kTagged, kUntagged, kContinuation };
  static constexpr std::size_t kMaxLine = 1 << 20;

  template <class Sink>
  bool feed(const char* data, std::size_t len, Sink& sink) {
    while (len > 0) {
      if (literal_left_ > 0) {
        std::size_t take = literal_left_ < len ? static_cast<std::size_t>(literal_left_) : len;
        literal_left_ -= take;
        literal_bytes_ += take;
        data += take;
        len -= take;
        continue;
      }
      const char* nl = static_cast<const char*>(std::memchr(data, '\n', len));
      if (nl == nullptr) {
        if (carry_.size() + len > kMaxLine) {
          error_ = "response line longer than 1 MiB";
          return false;
        }
        carry_.append(data, len);
        return true;
      }
      std::size_t used = static_cast<std::size_t>(nl - data) + 1;
      std::string_view line;
      if (carry_.empty()) {
        line = std::string_view(data, used - 1);
      } else {
        if (carry_.size() + used > kMaxLine) {
          error_ = "response line longer than 1 MiB";
          return false;
        }
        carry_.append(data, used - 1);
        line = carry_;
      }
      data += used;
      len -= used;
      if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
      }
      bool keep_going = true;
      bool literals_allowed = in_response_;
      if (!in_response_) {
        Kind kind = classify(line);
        literals_allowed = kind == Kind::kUntagged && !isStatusResponse(line);
        keep_going = sink.onResponse(kind, line);
      }
      if (keep_going && !endOfLine(line, literals_allowed)) {
        return false;
      }
      carry_.clear();
      if (!keep_going) {
        return true;
      }
    }
    return true;
  }

  const char* error() const { return error_; }
  std::uint64_t literalBytes() const { return literal_bytes_; }
  // True between responses (no partial line, no literal pending).
  bool idle() const { return carry_.empty() && literal_left_ == 0 && !in_response_; }

  static Kind classify(std::string_view line) {
    if (!line.empty() && line[0] == '*') {
      return Kind::kUntagged;
    }
    if (!line.empty() && line[0] == '+') {
      return Kind::kContinuation;
    }
    return Kind::kTagged;
  }

  static bool isStatusResponse(std::string_view line) {
    std::string_view rest = line.size() > 2 ? line.substr(2) : std::string_view();
    for (std::string_view word : {"OK", "NO", "BAD", "BYE", "PREAUTH"}) {
      if (rest.size() >= word.size() && equalsNoCase(rest.substr(0, word.size()), word) &&
          (rest.size() == word.size() || rest[word.size()] == ' ')) {
        return true;
      }
    }
    return false;
  }

  static bool equalsNoCase(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
      return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
      char x = a[i] >= 'a' && a[i] <= 'z' ? static_cast<char>(a[i] - 32) : a[i];
      char y = b[i] >= 'a' && b[i] <= 'z' ? static_cast<char>(b[i] - 32) : b[i];
      if (x != y) {
        return false;
      }
    }
    return true;
  }

 private:
  // Notes a literal announced at the end of the line, if any.
  bool endOfLine(std::string_view line, bool literals_allowed) {
    in_response_ = false;
    if (!literals_allowed || line.empty() || line.back() != '}') {
      return true;
    }
    std::size_t i = line.size() - 1;
    if (i > 0 && line[i - 1] == '+') {
      --i;
    }
    std::size_t digits_end = i;
    while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9') {
      --i;
    }
    if (i == digits_end || i == 0 || line[i - 1] != '{') {
      return true;  // a `}` that ends something else
    }
    if (digits_end - i > 19) {
      error_ = "literal size with more than 19 digits";
      return false;
    }
    std::uint64_t n = 0;
    for (std::size_t k = i; k < digits_end; ++k) {
      n = n * 10 + static_cast<std::uint64_t>(line[k] - '0');
    }
    literal_left_ = n;
    in_response_ = true;
    return true;
  }

  std::string carry_;  // a line split across reads
  std::uint64_t literal_left_ = 0;
  std::uint64_t literal_bytes_ = 0;
  bool in_response_ = false;  // the next line continues a response after a literal
  const char* error_ = nullptr;
};

}  // namespace portico::load
