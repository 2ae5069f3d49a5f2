// ResponseFramer: server -> client framing (see parser.h for the contract).
//
// Same shape as CommandFramer: a line, a literal body skipped by count, or
// the rest of an over-long line skipped to its LF. A response's kind is read
// from its kept first line at that line's LF; only untagged data responses
// may go on with literals.
#include <algorithm>
#include <cstring>

#include "framer_internal.h"

namespace portico::parser {
namespace {

using detail::LineResult;
using detail::LineStatus;
using detail::Marker;
using detail::MarkerKind;

const char* messageFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kLineTooLong:
      return "Response line too long";
    case ErrorCode::kBareCR:
      return "CR not followed by LF";
    case ErrorCode::kBadLiteral:
      return "Invalid literal size";
    case ErrorCode::kNumberTooLong:
      return "Literal size too long";
    case ErrorCode::kLiteralTooLarge:
      return "Literal too large";
    default:
      return "Invalid response line";
  }
}

// The status word at `pos`, or kNone. `tagged` allows only OK, NO and BAD.
Status statusAt(const char* head, std::size_t n, std::size_t pos, bool complete, bool tagged,
                std::size_t* end) {
  const void* space = pos < n ? std::memchr(head + pos, ' ', n - pos) : nullptr;
  if (space == nullptr && !complete) {
    return Status::kNone;  // runs past the kept bytes: no status word is that long
  }
  const std::size_t len =
      space != nullptr ? static_cast<const char*>(space) - (head + pos) : n - std::min(pos, n);
  *end = pos + len;
  const std::string_view word(head + std::min(pos, n), len);
  if (detail::equalsUpper(word, "OK")) {
    return Status::kOk;
  }
  if (detail::equalsUpper(word, "NO")) {
    return Status::kNo;
  }
  if (detail::equalsUpper(word, "BAD")) {
    return Status::kBad;
  }
  if (tagged) {
    return Status::kNone;
  }
  if (detail::equalsUpper(word, "BYE")) {
    return Status::kBye;
  }
  if (detail::equalsUpper(word, "PREAUTH")) {
    return Status::kPreauth;
  }
  return Status::kNone;
}

}  // namespace

ResponseFramer::ResponseFramer(const Limits& limits) : limits_(limits) {}

bool ResponseFramer::releaseBuffers() {
  if (head_.empty() || !(atResponseStart() || failed())) {
    return false;
  }
  std::string().swap(head_);
  head_len_ = 0;
  tag_len_ = 0;
  return true;
}

void ResponseFramer::setLimits(const Limits& limits) {
  limits_ = limits;
  if (head_.empty()) {
    return;  // allocated with these limits by the next feed()
  }
  head_.assign(detail::headCapacity(limits_), '\0');
  scan_.stored = std::min<std::uint32_t>(scan_.stored, static_cast<std::uint32_t>(head_.size()));
  head_len_ = std::min<std::uint32_t>(head_len_, scan_.stored);
}

void ResponseFramer::reset() {
  startResponse();
  head_len_ = 0;
  head_truncated_ = false;
  failed_code_ = ErrorCode::kNone;
  failed_message_ = "";
}

bool ResponseFramer::atResponseStart() const {
  return state_ == State::kLine && first_line_ && scan_.line_bytes == 0;
}

bool ResponseFramer::failed() const {
  return state_ == State::kFailed;
}

void ResponseFramer::startResponse() {
  state_ = State::kLine;
  first_line_ = true;
  response_bytes_ = 0;
  literal_left_ = 0;
  literals_ = 0;
  type_ = ResponseEventType::kNeedMore;
  status_ = Status::kNone;
  tag_len_ = code_pos_ = code_len_ = text_pos_ = text_len_ = 0;
  detail::resetLine(scan_);
}

void ResponseFramer::fillResponse(ResponseEvent& event) const {
  event.type = type_;
  event.tag = std::string_view(head_.data(), tag_len_);
  event.status = status_;
  event.code = std::string_view(head_.data() + code_pos_, code_len_);
  event.text = std::string_view(head_.data() + text_pos_, text_len_);
  event.head = std::string_view(head_.data(), head_len_);
  event.head_truncated = head_truncated_;
  event.bytes = response_bytes_;
  event.literals = literals_;
}

void ResponseFramer::fail(ResponseEvent& event, ErrorCode code, bool fatal) {
  event.type = ResponseEventType::kError;
  event.head = std::string_view(head_.data(), head_len_);
  event.head_truncated = head_truncated_;
  event.bytes = response_bytes_;
  event.literals = literals_;
  event.error = Error{code, fatal, messageFor(code)};
  if (fatal) {
    state_ = State::kFailed;
    failed_code_ = code;
    failed_message_ = event.error.message;
  } else {
    startResponse();
  }
}

// Response code and text of a status response or continuation whose text
// starts at `pos`; both are cut at the reported head.
void ResponseFramer::codeAndText(std::size_t pos) {
  const char* head = head_.data();
  const std::size_t end = head_len_;
  if (pos >= end) {
    return;
  }
  if (head[pos] != '[') {
    text_pos_ = static_cast<std::uint32_t>(pos);
    text_len_ = static_cast<std::uint32_t>(end - pos);
    return;
  }
  code_pos_ = static_cast<std::uint32_t>(pos + 1);
  // The matching ']': nested brackets and quoted strings may hold others.
  std::size_t depth = 0;
  bool quote = false;
  bool escape = false;
  for (std::size_t i = pos + 1; i < end; ++i) {
    const char c = head[i];
    if (quote) {
      if (escape) {
        escape = false;
      } else if (c == '\\') {
        escape = true;
      } else if (c == '"') {
        quote = false;
      }
    } else if (c == '"') {
      quote = true;
    } else if (c == '[') {
      ++depth;
    } else if (c == ']') {
      if (depth == 0) {
        code_len_ = static_cast<std::uint32_t>(i - code_pos_);
        std::size_t text = i + 1;
        if (text < end && head[text] == ' ') {
          ++text;
        }
        text_pos_ = static_cast<std::uint32_t>(text);
        text_len_ = static_cast<std::uint32_t>(end - text);
        return;
      }
      --depth;
    }
  }
  code_len_ = static_cast<std::uint32_t>(end - code_pos_);
  text_pos_ = static_cast<std::uint32_t>(end);
}

// Reads the kind of response from the kept first line; false: none of them.
bool ResponseFramer::classify(std::uint64_t content) {
  const char* head = head_.data();
  const std::size_t n = scan_.stored;
  const bool complete = content == n;
  if (n == 0) {
    return false;
  }
  std::size_t end = 0;
  if (head[0] == '*') {
    if (n < 2 || head[1] != ' ') {
      return false;
    }
    type_ = ResponseEventType::kUntagged;
    status_ = statusAt(head, n, 2, complete, false, &end);
    if (status_ != Status::kNone) {
      codeAndText(end + 1);
    } else if (head_len_ > 2) {
      text_pos_ = 2;
      text_len_ = head_len_ - 2;
    }
    return true;
  }
  if (head[0] == '+') {
    if (n >= 2 && head[1] != ' ') {
      return false;
    }
    type_ = ResponseEventType::kContinuation;
    codeAndText(2);
    return true;
  }
  const void* space = std::memchr(head, ' ', n);
  if (space == nullptr) {
    return false;
  }
  const std::size_t tag_len = static_cast<const char*>(space) - head;
  if (tag_len == 0 || tag_len > limits_.max_tag) {
    return false;
  }
  for (std::size_t i = 0; i < tag_len; ++i) {
    if (!detail::isTagChar(head[i])) {
      return false;
    }
  }
  status_ = statusAt(head, n, tag_len + 1, complete, true, &end);
  if (status_ == Status::kNone) {
    return false;
  }
  type_ = ResponseEventType::kTagged;
  tag_len_ = static_cast<std::uint32_t>(tag_len);
  codeAndText(end + 1);
  return true;
}

ResponseFeedResult ResponseFramer::feed(std::string_view input) {
  ResponseFeedResult result;
  ResponseEvent& event = result.event;
  if (state_ == State::kFailed) {
    event.type = ResponseEventType::kError;
    event.error = Error{failed_code_, true, failed_message_};
    return result;
  }
  if (head_.empty()) {
    head_.assign(detail::headCapacity(limits_), '\0');
  }
  const char* data = input.data();
  const std::size_t size = input.size();
  std::size_t pos = 0;
  while (pos < size) {
    bool line_skipped = false;
    if (detail::passBodyOrSkip(state_, literal_left_, response_bytes_, data, size, pos,
                               line_skipped)) {
      if (line_skipped) {
        startResponse();
      }
      continue;
    }
    const LineResult line = detail::scanLine(scan_, data + pos, size - pos, limits_.max_line,
                                             head_.data(), first_line_ ? head_.size() : 0, true);
    pos += line.used;
    response_bytes_ += line.used;
    if (line.status == LineStatus::kPartial) {
      continue;
    }
    if (line.status == LineStatus::kTooLong) {
      if (first_line_) {
        head_len_ =
            std::min<std::uint32_t>(scan_.stored, static_cast<std::uint32_t>(limits_.max_head));
        head_truncated_ = true;
      }
      fail(event, ErrorCode::kLineTooLong, false);
      state_ = State::kSkip;
      result.consumed = pos;
      return result;
    }
    if (lineEnded(line, event)) {
      result.consumed = pos;
      return result;
    }
  }
  result.consumed = pos;
  return result;
}

bool ResponseFramer::lineEnded(const LineResult& line, ResponseEvent& event) {
  const std::uint64_t content = line.content_len;
  ErrorCode error = ErrorCode::kNone;
  if (first_line_) {
    first_line_ = false;
    head_len_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(content, limits_.max_head));
    head_truncated_ = content > limits_.max_head;
    if (!classify(content)) {
      type_ = ResponseEventType::kError;
      error = ErrorCode::kBadResponse;
    }
  }
  if (content > limits_.max_line) {
    error = ErrorCode::kLineTooLong;
  } else if (line.bare_cr) {
    error = ErrorCode::kBareCR;
  }
  Marker marker;
  if (type_ == ResponseEventType::kUntagged && status_ == Status::kNone) {
    marker = detail::markerOf(scan_, line, limits_.max_number_digits);
  }
  if (marker.kind == MarkerKind::kBadLiteral) {
    fail(event, ErrorCode::kBadLiteral, true);
    return true;
  }
  if (marker.kind == MarkerKind::kNumberTooLong) {
    fail(event, ErrorCode::kNumberTooLong, true);
    return true;
  }
  const bool literal = marker.kind == MarkerKind::kLiteral;
  if (error != ErrorCode::kNone) {
    fail(event, error, literal);  // a literal follows a line we could not read
    return true;
  }
  if (literal) {
    if (marker.size > limits_.max_literal) {
      fail(event, ErrorCode::kLiteralTooLarge, true);
      return true;
    }
    ++literals_;
    literal_left_ = marker.size;
    state_ = marker.size != 0 ? State::kBody : State::kLine;
    detail::resetLine(scan_);
    return false;
  }
  fillResponse(event);
  startResponse();
  return true;
}

}  // namespace portico::parser
