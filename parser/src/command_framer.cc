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
  std::size_t name_len = 0;
  bool tag_known = false;
  bool name_known = false;
  bool uid = false;
};

// Reads an atom at `pos` into `out` upper-cased; returns its length, or
// kMaxCommandName + 1 when longer. Stops at the first non-atom byte.
std::size_t readName(const char* head, std::size_t n, std::size_t pos, char* out) {
  std::size_t len = 0;
  const std::size_t limit = std::min(n - pos, detail::kMaxCommandName + 1);
  while (len < limit && detail::isAtomChar(head[pos + len])) {
    if (len < detail::kMaxCommandName) {
      out[len] = asciiUpper(head[pos + len]);
    }
    ++len;
  }
  return len;
}

// What follows a token of `len` bytes at `pos`: kNone when it ends with SP
// (*more = true) or with the line, else the error for a bad byte or a token
// that runs past the kept bytes of a longer line.
ErrorCode endOfName(const char* head, std::size_t n, std::size_t pos, std::size_t len,
                    bool complete, bool* more) {
  *more = false;
  if (len > detail::kMaxCommandName) {
    return ErrorCode::kBadCommand;
  }
  if (pos + len == n) {
    if (!complete) {
      return ErrorCode::kBadCommand;  // longer than the kept bytes
    }
    return len == 0 ? ErrorCode::kMissingCommand : ErrorCode::kNone;
  }
  if (head[pos + len] != ' ') {
    return ErrorCode::kBadCommand;
  }
  *more = true;
  return len == 0 ? ErrorCode::kMissingCommand : ErrorCode::kNone;
}

// Tag, command name and UID prefix from the kept head of a first line, in
// one pass that also copies the tag to `tag_out` and the upper-cased name to
// `name_out`. `complete`: `head` holds the whole line. Tag: the longest run
// of tag bytes, which must end with SP (kBadTag if another byte ends it,
// kMissingCommand if the line does).
CommandHead parseCommandHead(const char* head, std::size_t n, bool complete, const Limits& limits,
                             char* tag_out, char* name_out) {
  CommandHead result;
  std::size_t i = 0;
  const std::size_t tag_limit = std::min(n, limits.max_tag + 1);
  while (i < tag_limit && detail::isTagChar(head[i])) {
    if (i < limits.max_tag) {
      tag_out[i] = head[i];
    }
    ++i;
  }
  result.tag_len = i;
  if (i > limits.max_tag) {
    result.error = ErrorCode::kTagTooLong;
    return result;
  }
  if (i == n) {
    if (!complete) {  // only while a too-long line is still arriving
      result.error = ErrorCode::kLineTooLong;
      return result;
    }
    result.error = i == 0 ? ErrorCode::kBadTag : ErrorCode::kMissingCommand;
    result.tag_known = i != 0;
    return result;
  }
  if (i == 0 || head[i] != ' ') {
    result.error = ErrorCode::kBadTag;
    return result;
  }
  result.tag_known = true;
  std::size_t pos = i + 1;
  std::size_t len = readName(head, n, pos, name_out);
  bool more = false;
  result.error = endOfName(head, n, pos, len, complete, &more);
  if (result.error != ErrorCode::kNone) {
    return result;
  }
  if (len == 3 && name_out[0] == 'U' && name_out[1] == 'I' && name_out[2] == 'D') {
    result.uid = true;
    if (!more) {
      result.error = ErrorCode::kMissingCommand;
      return result;
    }
    pos += len + 1;
    len = readName(head, n, pos, name_out);
    result.error = endOfName(head, n, pos, len, complete, &more);
    if (result.error != ErrorCode::kNone) {
      return result;
    }
  }
  result.name_known = true;
  result.name_len = len;
  return result;
}

}  // namespace

CommandFramer::CommandFramer(const Limits& limits) : limits_(limits) {}

void CommandFramer::allocate() {
  head_.assign(detail::headCapacity(limits_), '\0');
  tag_.assign(limits_.max_tag, '\0');
  name_.assign(detail::kMaxCommandName, '\0');
}

bool CommandFramer::releaseBuffers() {
  if (head_.empty() || !(atCommandStart() || failed())) {
    return false;
  }
  std::string().swap(head_);
  std::string().swap(tag_);
  std::string().swap(name_);
  tag_len_ = 0;
  name_len_ = 0;
  head_len_ = 0;
  return true;
}

void CommandFramer::setLimits(const Limits& limits) {
  limits_ = limits;
  if (head_.empty()) {
    return;  // allocated with these limits by the next feed()
  }
  allocate();
  // Keep the lengths inside the new buffers if called mid-command.
  scan_.stored = std::min<std::uint32_t>(scan_.stored, static_cast<std::uint32_t>(head_.size()));
  head_len_ = std::min<std::uint32_t>(head_len_, scan_.stored);
  tag_len_ = std::min<std::uint32_t>(tag_len_, static_cast<std::uint32_t>(tag_.size()));
}

void CommandFramer::reset() {
  startCommand();
  mode_ = Mode::kCommand;
  head_len_ = 0;
  head_truncated_ = false;
  tag_len_ = 0;
  name_len_ = 0;
  uid_ = false;
  awaiting_ = false;
  failed_code_ = ErrorCode::kNone;
  failed_message_ = "";
}

bool CommandFramer::awaitingContinuation() const {
  return awaiting_;
}
bool CommandFramer::inLiteral() const {
  return state_ == State::kBody;
}
bool CommandFramer::idling() const {
  return mode_ == Mode::kIdle;
}
bool CommandFramer::authenticating() const {
  return mode_ == Mode::kAuth;
}
bool CommandFramer::failed() const {
  return state_ == State::kFailed;
}

bool CommandFramer::atCommandStart() const {
  return state_ == State::kLine && mode_ == Mode::kCommand && first_line_ && scan_.line_bytes == 0;
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

void CommandFramer::returnToCommandMode() {
  if (state_ == State::kFailed) {
    return;
  }
  mode_ = Mode::kCommand;
  if (awaiting_) {
    // A synchronizing literal the server did not invite: the client sends
    // no body, so its next byte starts a new command.
    awaiting_ = false;
    startCommand();
  }
}

std::string_view CommandFramer::currentTag() const {
  return name_read_ ? std::string_view(tag_.data(), tag_len_) : std::string_view();
}

std::string_view CommandFramer::currentName() const {
  return name_read_ ? std::string_view(name_.data(), name_len_) : std::string_view();
}

void CommandFramer::startCommand() {
  state_ = State::kLine;
  first_line_ = true;
  command_bytes_ = 0;
  literal_left_ = 0;
  literals_ = 0;
  name_read_ = false;
  id_command_ = false;
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

void CommandFramer::parseHead(bool complete) {
  const CommandHead head =
      parseCommandHead(head_.data(), scan_.stored, complete, limits_, tag_.data(), name_.data());
  tag_len_ = head.tag_known ? static_cast<std::uint32_t>(head.tag_len) : 0;
  name_len_ = head.name_known ? static_cast<std::uint32_t>(head.name_len) : 0;
  uid_ = head.name_known && head.uid;
  head_error_ = head.error;
  name_read_ = head.name_known;
}

std::uint64_t CommandFramer::lineLimit() const {
  return id_command_ ? std::max(limits_.max_line, limits_.max_id_line) : limits_.max_line;
}

// Whether the first line that just passed max_line is an ID command's, which
// may go on up to Limits::max_id_line. Decided from its first max_line + 1
// bytes only, which every split of the input has kept by then (at the byte
// that showed the line too long, or at its LF), so the answer is the same
// whatever the split.
bool CommandFramer::startsIdCommand() {
  if (id_command_ || !first_line_ || mode_ != Mode::kCommand ||
      limits_.max_id_line <= limits_.max_line) {
    return false;
  }
  const std::size_t kept = std::min<std::uint64_t>(scan_.stored, limits_.max_line + 1);
  const CommandHead head =
      parseCommandHead(head_.data(), kept, false, limits_, tag_.data(), name_.data());
  // No error with a line known to go on means "ID" was followed by SP.
  if (head.error == ErrorCode::kNone && head.name_known && !head.uid && head.name_len == 2 &&
      name_[0] == 'I' && name_[1] == 'D') {
    id_command_ = true;
    tag_len_ = static_cast<std::uint32_t>(head.tag_len);
    name_len_ = 2;
    uid_ = false;
    name_read_ = true;
  }
  return id_command_;
}

FeedResult CommandFramer::feed(std::string_view input) {
  FeedResult result;
  CommandEvent& event = result.event;
  if (state_ == State::kFailed) {
    event.type = CommandEventType::kError;
    event.error = Error{failed_code_, true, failed_message_};
    return result;
  }
  if (head_.empty()) {
    allocate();
  }
  const char* data = input.data();
  const std::size_t size = input.size();
  std::size_t pos = 0;
  while (pos < size) {
    awaiting_ = false;  // any byte after a sync literal header is the client going on
    bool line_skipped = false;
    if (detail::passBodyOrSkip(state_, literal_left_, command_bytes_, data, size, pos,
                               line_skipped)) {
      if (line_skipped) {
        startCommand();
      }
      continue;
    }
    const bool keep = first_line_ && mode_ != Mode::kAuth;  // SASL lines carry credentials
    const LineResult line =
        detail::scanLine(scan_, data + pos, size - pos, lineLimit(), head_.data(),
                         keep ? head_.size() : 0, mode_ == Mode::kCommand);
    pos += line.used;
    command_bytes_ += line.used;
    if (line.status == LineStatus::kPartial) {
      continue;
    }
    if (line.status == LineStatus::kTooLong) {
      if (startsIdCommand()) {
        continue;  // an ID: the same line goes on under its larger limit
      }
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
  if (mode_ == Mode::kAuth) {
    head_len_ = 0;  // SASL lines are never shown
    head_truncated_ = false;
  } else if (first_line_) {
    head_len_ = std::min<std::uint32_t>(scan_.stored, static_cast<std::uint32_t>(limits_.max_head));
    head_truncated_ = true;
    if (mode_ == Mode::kCommand) {
      parseHead(false);
    }
  }
  if (mode_ == Mode::kIdle) {
    mode_ = Mode::kCommand;
  }
  fail(event, ErrorCode::kLineTooLong, false);
  state_ = State::kSkip;
}

bool CommandFramer::authLineEnded(const LineResult& line, CommandEvent& event) {
  const std::uint64_t content = line.content_len;
  head_len_ = 0;
  head_truncated_ = false;
  if (content > limits_.max_line || line.bare_cr) {
    fail(event, content > limits_.max_line ? ErrorCode::kLineTooLong : ErrorCode::kBareCR, false);
    return true;
  }
  fillCommand(event);
  event.type = CommandEventType::kAuthLine;
  startCommand();
  return true;
}

bool CommandFramer::idleLineEnded(const LineResult& line, CommandEvent& event) {
  const std::uint64_t content = line.content_len;
  head_len_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(content, limits_.max_head));
  head_truncated_ = content > limits_.max_head;
  mode_ = Mode::kCommand;  // DONE or not, IDLE is over
  if (content > limits_.max_line || line.bare_cr) {
    fail(event, content > limits_.max_line ? ErrorCode::kLineTooLong : ErrorCode::kBareCR, false);
    return true;
  }
  if (!detail::equalsUpper(std::string_view(head_.data(), scan_.stored), "DONE") || content != 4) {
    fail(event, ErrorCode::kExpectedDone, false);
    return true;
  }
  fillCommand(event);
  event.type = CommandEventType::kIdleDone;
  startCommand();
  return true;
}

bool CommandFramer::lineEnded(const LineResult& line, CommandEvent& event) {
  const std::uint64_t content = line.content_len;
  if (mode_ == Mode::kAuth) {
    return authLineEnded(line, event);
  }
  if (mode_ == Mode::kIdle) {
    return idleLineEnded(line, event);
  }
  ErrorCode error = ErrorCode::kNone;
  const bool first_line = first_line_;
  if (first_line) {
    if (content == 0) {  // an empty line between commands: ignored
      startCommand();
      return false;
    }
    if (content > limits_.max_line) {
      startsIdCommand();  // an ID's line may be longer
    }
    first_line_ = false;
    head_len_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(content, limits_.max_head));
    head_truncated_ = content > limits_.max_head;
    parseHead(content == scan_.stored);
    error = head_error_;
  }
  if (content > lineLimit()) {
    error = ErrorCode::kLineTooLong;
  } else if (line.bare_cr) {
    error = ErrorCode::kBareCR;
  }
  if (limits_.max_id_line > limits_.max_line && first_line && error == ErrorCode::kNone && !uid_ &&
      currentName() == "ID") {
    id_command_ = true;  // its lines after literals get the ID allowance too
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
