// CommandFramer: client -> server framing (see parser.h for the contract).
//
// The framer is a loop over three states: a line (the command's first line,
// a line after a literal, a DONE or SASL line), a literal body skipped by
// count, and the rest of an over-long line skipped to its LF. Everything
// about a line (tag, name, literal header, errors) is decided at its LF from
// the kept head and the scan state, so the result cannot depend on how the
// bytes were split.
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
      return "Line too long";
    case ErrorCode::kBareCR:
      return "CR not followed by LF";
    case ErrorCode::kBadTag:
      return "Invalid tag";
    case ErrorCode::kTagTooLong:
      return "Tag too long";
    case ErrorCode::kMissingCommand:
      return "Missing command name";
    case ErrorCode::kBadCommand:
      return "Invalid command name";
    case ErrorCode::kBadLiteral:
      return "Invalid literal size";
    case ErrorCode::kNumberTooLong:
      return "Literal size too long";
    case ErrorCode::kLiteralTooLarge:
      return "Literal too large";
    case ErrorCode::kExpectedDone:
      return "Expected DONE";
    default:
      return "Invalid command";
  }
}

struct CommandHead {
  ErrorCode error = ErrorCode::kNone;
  std::size_t tag_len = 0;
  std::size_t name_pos = 0;
  std::size_t name_len = 0;
  bool tag_known = false;
  bool name_known = false;
  bool uid = false;
};

// One SP-delimited token from `pos`. `cut`: it runs into the end of the kept
// bytes while the line goes on, so its true length is unknown.
struct Token {
  std::size_t len = 0;
  bool ended_by_space = false;
  bool cut = false;
};

Token tokenAt(const char* head, std::size_t n, std::size_t pos, bool complete) {
  Token token;
  const void* space = pos < n ? std::memchr(head + pos, ' ', n - pos) : nullptr;
  token.ended_by_space = space != nullptr;
  token.len = space != nullptr ? static_cast<const char*>(space) - (head + pos) : n - pos;
  token.cut = space == nullptr && !complete;
  return token;
}

ErrorCode checkName(const char* name, const Token& token) {
  if (token.len == 0) {
    return ErrorCode::kMissingCommand;
  }
  if (token.cut || token.len > detail::kMaxCommandName) {
    return ErrorCode::kBadCommand;
  }
  for (std::size_t i = 0; i < token.len; ++i) {
    if (!detail::isAtomChar(name[i])) {
      return ErrorCode::kBadCommand;
    }
  }
  return ErrorCode::kNone;
}

// Tag, command name and UID prefix from the kept head of a first line.
// `complete`: `head` holds the whole line.
CommandHead parseCommandHead(const char* head, std::size_t n, bool complete,
                             const Limits& limits) {
  CommandHead result;
  const Token tag = tokenAt(head, n, 0, complete);
  result.tag_len = tag.len;
  if (tag.len == 0) {
    result.error = ErrorCode::kBadTag;
    return result;
  }
  if (tag.len > limits.max_tag) {
    result.error = ErrorCode::kTagTooLong;
    return result;
  }
  if (tag.cut) {  // only while a too-long line is still arriving
    result.error = ErrorCode::kLineTooLong;
    return result;
  }
  for (std::size_t i = 0; i < tag.len; ++i) {
    if (!detail::isTagChar(head[i])) {
      result.error = ErrorCode::kBadTag;
      return result;
    }
  }
  result.tag_known = true;
  if (!tag.ended_by_space) {
    result.error = ErrorCode::kMissingCommand;
    return result;
  }
  std::size_t pos = tag.len + 1;
  Token name = tokenAt(head, n, pos, complete);
  result.error = checkName(head + pos, name);
  if (result.error != ErrorCode::kNone) {
    return result;
  }
  if (detail::equalsUpper(std::string_view(head + pos, name.len), "UID")) {
    result.uid = true;
    if (!name.ended_by_space) {
      result.error = ErrorCode::kMissingCommand;
      return result;
    }
    pos += name.len + 1;
    name = tokenAt(head, n, pos, complete);
    result.error = checkName(head + pos, name);
    if (result.error != ErrorCode::kNone) {
      return result;
    }
  }
  result.name_known = true;
  result.name_pos = pos;
  result.name_len = name.len;
  return result;
}

}  // namespace

CommandFramer::CommandFramer(const Limits& limits) : limits_(limits) { allocate(); }

void CommandFramer::allocate() {
  head_.assign(detail::headCapacity(limits_), '\0');
  tag_.assign(limits_.max_tag, '\0');
  name_.assign(detail::kMaxCommandName, '\0');
}

void CommandFramer::setLimits(const Limits& limits) {
  limits_ = limits;
  allocate();
  // Keep the lengths inside the new buffers if called mid-command.
  scan_.stored = std::min<std::uint32_t>(scan_.stored, static_cast<std::uint32_t>(head_.size()));
  head_len_ = std::min<std::uint32_t>(head_len_, scan_.stored);
  tag_len_ = std::min<std::uint32_t>(tag_len_, static_cast<std::uint32_t>(tag_.size()));
}

void CommandFramer::reset() {
  startCommand();
  mode_ = Mode::kCommand;
  tag_len_ = 0;
  name_len_ = 0;
  uid_ = false;
  awaiting_ = false;
  failed_code_ = ErrorCode::kNone;
  failed_message_ = "";
}

bool CommandFramer::awaitingContinuation() const { return awaiting_; }
bool CommandFramer::inLiteral() const { return state_ == State::kBody; }
bool CommandFramer::idling() const { return mode_ == Mode::kIdle; }
bool CommandFramer::authenticating() const { return mode_ == Mode::kAuth; }
bool CommandFramer::failed() const { return state_ == State::kFailed; }

bool CommandFramer::atCommandStart() const {
  return state_ == State::kLine && mode_ == Mode::kCommand && first_line_ &&
         scan_.line_bytes == 0;
}

void CommandFramer::endAuthentication() {
  if (mode_ == Mode::kAuth) {
    mode_ = Mode::kCommand;
  }
}

void CommandFramer::endIdle() {
  if (mode_ == Mode::kIdle) {
    mode_ = Mode::kCommand;
  }
}

void CommandFramer::startCommand() {
  state_ = State::kLine;
  first_line_ = true;
  command_bytes_ = 0;
  literal_left_ = 0;
  literals_ = 0;
  detail::resetLine(scan_);
}

void CommandFramer::fillCommand(CommandEvent& event) const {
  event.tag = std::string_view(tag_.data(), tag_len_);
  event.name = std::string_view(name_.data(), name_len_);
  event.uid = uid_;
  event.bytes = command_bytes_;
  event.literals = literals_;
  event.head = std::string_view(head_.data(), head_len_);
  event.head_truncated = head_truncated_;
}

void CommandFramer::fail(CommandEvent& event, ErrorCode code, bool fatal) {
  fillCommand(event);
  event.type = CommandEventType::kError;
  event.error = Error{code, fatal, messageFor(code)};
  if (fatal) {
    state_ = State::kFailed;
    failed_code_ = code;
    failed_message_ = event.error.message;
  } else {
    startCommand();
  }
}

void CommandFramer::keepTagAndName(const char* head, std::size_t tag_len, bool tag_known,
                                   std::size_t name_pos, std::size_t name_len, bool name_known,
                                   bool uid) {
  tag_len_ = 0;
  name_len_ = 0;
  uid_ = false;
  if (tag_known) {
    std::memcpy(tag_.data(), head, tag_len);
    tag_len_ = static_cast<std::uint32_t>(tag_len);
  }
  if (name_known) {
    for (std::size_t i = 0; i < name_len; ++i) {
      name_[i] = detail::toUpper(head[name_pos + i]);
    }
    name_len_ = static_cast<std::uint32_t>(name_len);
    uid_ = uid;
  }
}

FeedResult CommandFramer::feed(std::string_view input) {
  FeedResult result;
  CommandEvent& event = result.event;
  if (state_ == State::kFailed) {
    event.type = CommandEventType::kError;
    event.error = Error{failed_code_, true, failed_message_};
    return result;
  }
  const char* data = input.data();
  const std::size_t size = input.size();
  std::size_t pos = 0;
  while (pos < size) {
    awaiting_ = false;  // any byte after a sync literal header is the client going on
    if (state_ == State::kBody) {
      const std::uint64_t take = std::min<std::uint64_t>(literal_left_, size - pos);
      pos += take;
      literal_left_ -= take;
      command_bytes_ += take;
      if (literal_left_ == 0) {
        state_ = State::kLine;
      }
      continue;
    }
    if (state_ == State::kSkip) {
      const void* lf = std::memchr(data + pos, '\n', size - pos);
      if (lf == nullptr) {
        pos = size;
        break;
      }
      pos = static_cast<const char*>(lf) - data + 1;
      startCommand();
      continue;
    }
    const bool keep = first_line_ && mode_ != Mode::kAuth;  // SASL lines carry credentials
    const LineResult line =
        detail::scanLine(scan_, data + pos, size - pos, limits_.max_line, head_.data(),
                         keep ? head_.size() : 0, mode_ == Mode::kCommand);
    pos += line.used;
    command_bytes_ += line.used;
    if (line.status == LineStatus::kPartial) {
      continue;
    }
    if (line.status == LineStatus::kTooLong) {
      lineTooLong(event);
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

void CommandFramer::lineTooLong(CommandEvent& event) {
  if (first_line_ && mode_ != Mode::kAuth) {
    head_len_ = std::min<std::uint32_t>(scan_.stored, static_cast<std::uint32_t>(limits_.max_head));
    head_truncated_ = true;
    if (mode_ == Mode::kCommand) {
      const CommandHead head = parseCommandHead(head_.data(), scan_.stored, false, limits_);
      keepTagAndName(head_.data(), head.tag_len, head.tag_known, head.name_pos, head.name_len,
                     head.name_known, head.uid);
    }
  }
  if (mode_ == Mode::kIdle) {
    mode_ = Mode::kCommand;
  }
  fail(event, ErrorCode::kLineTooLong, false);
  state_ = State::kSkip;
}

bool CommandFramer::lineEnded(const LineResult& line, CommandEvent& event) {
  const std::uint64_t content = line.content_len;
  if (mode_ == Mode::kAuth) {
    head_len_ = 0;
    head_truncated_ = false;
    if (content > limits_.max_line || line.bare_cr) {
      fail(event, content > limits_.max_line ? ErrorCode::kLineTooLong : ErrorCode::kBareCR,
           false);
      return true;
    }
    fillCommand(event);
    event.type = CommandEventType::kAuthLine;
    startCommand();
    return true;
  }
  if (mode_ == Mode::kIdle) {
    head_len_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(content, limits_.max_head));
    head_truncated_ = content > limits_.max_head;
    mode_ = Mode::kCommand;  // DONE or not, IDLE is over
    if (content > limits_.max_line || line.bare_cr) {
      fail(event, content > limits_.max_line ? ErrorCode::kLineTooLong : ErrorCode::kBareCR,
           false);
      return true;
    }
    if (!detail::equalsUpper(std::string_view(head_.data(), scan_.stored), "DONE") ||
        content != 4) {
      fail(event, ErrorCode::kExpectedDone, false);
      return true;
    }
    fillCommand(event);
    event.type = CommandEventType::kIdleDone;
    startCommand();
    return true;
  }
  ErrorCode error = ErrorCode::kNone;
  if (first_line_) {
    if (content == 0) {  // an empty line between commands: ignored
      startCommand();
      return false;
    }
    first_line_ = false;
    head_len_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(content, limits_.max_head));
    head_truncated_ = content > limits_.max_head;
    const CommandHead head =
        parseCommandHead(head_.data(), scan_.stored, content == scan_.stored, limits_);
    keepTagAndName(head_.data(), head.tag_len, head.tag_known, head.name_pos, head.name_len,
                   head.name_known, head.uid);
    error = head.error;
  }
  if (content > limits_.max_line) {
    error = ErrorCode::kLineTooLong;
  } else if (line.bare_cr) {
    error = ErrorCode::kBareCR;
  }
  const Marker marker = detail::markerOf(scan_, line, limits_.max_number_digits);
  if (marker.kind == MarkerKind::kBadLiteral) {
    fail(event, ErrorCode::kBadLiteral, true);
    return true;
  }
  if (marker.kind == MarkerKind::kNumberTooLong) {
    fail(event, ErrorCode::kNumberTooLong, true);
    return true;
  }
  const bool literal = marker.kind == MarkerKind::kLiteral;
  const bool nonsync = literal && !isSync(marker.literal);
  if (error != ErrorCode::kNone) {
    // A non-synchronizing body follows whatever we say: it cannot be skipped
    // as part of a command we did not understand.
    fail(event, error, nonsync);
    return true;
  }
  if (literal) {
    if (marker.size > limits_.max_literal ||
        (nonsync && marker.size > limits_.max_nonsync_literal)) {
      fail(event, ErrorCode::kLiteralTooLarge, nonsync);
      return true;
    }
    ++literals_;
    fillCommand(event);
    event.type = CommandEventType::kLiteral;
    event.literal_size = marker.size;
    event.literal_kind = marker.literal;
    awaiting_ = !nonsync;
    literal_left_ = marker.size;
    state_ = marker.size != 0 ? State::kBody : State::kLine;
    detail::resetLine(scan_);
    return true;
  }
  fillCommand(event);
  event.type = CommandEventType::kCommand;
  if (!uid_) {
    const std::string_view name(name_.data(), name_len_);
    if (name == "IDLE") {
      mode_ = Mode::kIdle;
    } else if (name == "AUTHENTICATE") {
      mode_ = Mode::kAuth;
    }
  }
  startCommand();
  return true;
}

}  // namespace portico::parser
