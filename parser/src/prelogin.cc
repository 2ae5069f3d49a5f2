// The pre-login command parser: the IMAP argument grammar (RFC 9051 and
// RFC 3501: atom, quoted string, literal, NIL, parenthesised list) over one
// whole command, then the shape each pre-login verb expects.
//
// Arguments are first read into a flat token list (lists become open/close
// tokens), so nesting needs no recursion and is bounded by
// Limits::max_list_depth; the token count is bounded too. Every error message
// is a string literal: nothing from the input (a password above all) can reach
// it.

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "portico/parser.h"
#include "prelogin_internal.h"

namespace portico::parser {
namespace {

using internal::equalsIgnoreCase;
using internal::upperAscii;

// ID needs at most 30 pairs plus the parentheses; a few hundred tokens leave
// room for a precise error about too many fields before this bound hits.
constexpr std::size_t kMaxTokens = 256;
// Longest command name kept; real IMAP command names are far shorter.
constexpr std::size_t kMaxNameBytes = 64;

constexpr std::array<const char*, static_cast<std::size_t>(Verb::kOther) + 1> kVerbNames = {
    "CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS", "LOGIN", "AUTHENTICATE", "OTHER",
};
static_assert(kVerbNames.size() == 8, "one name per Verb");

bool isCtl(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

// ATOM-CHAR: any 7-bit CHAR except atom-specials.
bool isAtomChar(unsigned char c) {
  if (c >= 0x80 || isCtl(c)) {
    return false;
  }
  switch (c) {
    case '(':
    case ')':
    case '{':
    case ' ':
    case '%':
    case '*':
    case '"':
    case '\\':
    case ']':
      return false;
    default:
      return true;
  }
}

// ASTRING-CHAR adds resp-specials (']') to ATOM-CHAR.
bool isAstringChar(unsigned char c) {
  return c == ']' || isAtomChar(c);
}

// tag = 1*<any ASTRING-CHAR except "+">; Portico also refuses ']' in tags.
bool isTagChar(unsigned char c) {
  return c != '+' && isAtomChar(c);
}

bool isDigit(unsigned char c) {
  return c >= '0' && c <= '9';
}

enum class TokenType : std::uint8_t { kAtom, kQuoted, kLiteral, kOpen, kClose };

struct Token {
  TokenType type;
  std::string value;  // decoded bytes for atoms and strings; empty for parentheses
};

bool isString(const Token& t) {
  return t.type == TokenType::kQuoted || t.type == TokenType::kLiteral;
}
bool isAstring(const Token& t) {
  return t.type == TokenType::kAtom || isString(t);
}
bool isNil(const Token& t) {
  return t.type == TokenType::kAtom && equalsIgnoreCase(t.value, "NIL");
}

Verb verbFromName(std::string_view upper) {
  for (std::size_t i = 0; i < static_cast<std::size_t>(Verb::kOther); ++i) {
    if (upper == kVerbNames[i]) {
      return static_cast<Verb>(i);
    }
  }
  return Verb::kOther;
}

class PreloginParser {
 public:
  PreloginParser(std::string_view input, const Limits& limits) : in_(input), limits_(limits) {}

  PreloginResult run() {
    if (readTag() && readName() && readArguments() && readLineEnd() && checkArguments()) {
      result_.ok = true;
      result_.error = Error{};
    }
    return std::move(result_);
  }

 private:
  bool fail(ErrorCode code, const char* message) {
    result_.ok = false;
    result_.error = Error{code, false, message};
    return false;
  }
  bool syntax(const char* message) { return fail(ErrorCode::kBadSyntax, message); }

  bool atEnd() const { return pos_ >= in_.size(); }
  unsigned char cur() const { return static_cast<unsigned char>(in_[pos_]); }
  bool atLineEnd() const { return atEnd() || cur() == '\r' || cur() == '\n'; }

  // The command ends with CRLF, a bare LF, or the end of the input; nothing
  // may follow.
  bool readLineEnd() {
    const std::size_t max_line = result_.command.verb == Verb::kId
                                     ? std::max(limits_.max_line, limits_.max_id_line)
                                     : limits_.max_line;
    if (pos_ - literal_bytes_ > max_line) {
      return fail(ErrorCode::kLineTooLong, "Command line too long");
    }
    if (!atEnd() && cur() == '\r') {
      if (pos_ + 1 >= in_.size() || in_[pos_ + 1] != '\n') {
        return fail(ErrorCode::kBareCR, "CR not followed by LF");
      }
      ++pos_;
    }
    if (!atEnd() && cur() == '\n') {
      ++pos_;
    }
    if (!atEnd()) {
      return syntax("Data after end of command");
    }
    return true;
  }

  bool readTag() {
    std::size_t end = pos_;
    while (end < in_.size() && isTagChar(static_cast<unsigned char>(in_[end]))) {
      ++end;
    }
    const std::size_t len = end - pos_;
    if (len == 0) {
      if (atLineEnd()) {
        return fail(ErrorCode::kEmptyLine, "Empty command line");
      }
      return fail(ErrorCode::kBadTag, cur() == ' ' ? "Missing tag" : "Invalid characters in tag");
    }
    if (end < in_.size() && in_[end] != ' ' && in_[end] != '\r' && in_[end] != '\n') {
      return fail(ErrorCode::kBadTag, "Invalid characters in tag");
    }
    if (len > limits_.max_tag) {
      return fail(ErrorCode::kTagTooLong, "Tag too long");
    }
    result_.command.tag.assign(in_.substr(pos_, len));
    pos_ = end;
    if (atLineEnd()) {
      return fail(ErrorCode::kMissingCommand, "Missing command");
    }
    ++pos_;  // the SP after the tag
    return true;
  }

  bool readName() {
    std::size_t end = pos_;
    while (end < in_.size() && isAtomChar(static_cast<unsigned char>(in_[end]))) {
      ++end;
    }
    const std::size_t len = end - pos_;
    const bool terminated =
        end == in_.size() || in_[end] == ' ' || in_[end] == '\r' || in_[end] == '\n';
    if (len == 0) {
      if (terminated) {
        return fail(ErrorCode::kMissingCommand, "Missing command");
      }
      return fail(ErrorCode::kBadCommand, "Invalid characters in command name");
    }
    if (!terminated) {
      return fail(ErrorCode::kBadCommand, "Invalid characters in command name");
    }
    if (len > kMaxNameBytes) {
      return fail(ErrorCode::kBadCommand, "Command name too long");
    }
    result_.command.name = upperAscii(in_.substr(pos_, len));
    result_.command.verb = verbFromName(result_.command.name);
    pos_ = end;
    if (result_.command.verb == Verb::kOther) {
      // Arguments of commands Portico does not answer are not read at all.
      return fail(ErrorCode::kUnknownCommand, "Command not allowed before login");
    }
    return true;
  }

  // Reads `SP arg *(SP arg)` up to the line end into tokens_.
  bool readArguments() {
    std::size_t depth = 0;
    while (true) {
      if (atLineEnd()) {
        return depth == 0 ? true : syntax("Unterminated list");
      }
      if (cur() == ')') {
        if (depth == 0) {
          return syntax("Unexpected ')'");
        }
        --depth;
        if (!push(TokenType::kClose, {})) {
          return false;
        }
        ++pos_;
        continue;
      }
      if (cur() != ' ') {
        return syntax("Missing space between arguments");
      }
      ++pos_;
      if (!readItem(depth)) {
        return false;
      }
    }
  }

  // One argument after a SP: opens lists as needed, then reads the first
  // item (or the `)` of an empty list).
  bool readItem(std::size_t& depth) {
    bool opened = false;
    while (!atEnd() && cur() == '(') {
      if (depth >= limits_.max_list_depth) {
        return syntax("Lists nested too deeply");
      }
      ++depth;
      if (!push(TokenType::kOpen, {})) {
        return false;
      }
      ++pos_;
      opened = true;
      if (!atEnd() && cur() == ')') {
        return true;  // empty list; the caller consumes the ')'
      }
    }
    if (atLineEnd()) {
      return syntax(opened ? "Unterminated list" : "Unexpected space at end of line");
    }
    std::string value;
    switch (cur()) {
      case ' ':
        return syntax("Unexpected space");
      case ')':
        return syntax("Unexpected space before ')'");
      case '"':
        return readQuoted(value) && push(TokenType::kQuoted, std::move(value));
      case '{':
        return readLiteral(value) && push(TokenType::kLiteral, std::move(value));
      default:
        return readAtom(value) && push(TokenType::kAtom, std::move(value));
    }
  }

  bool push(TokenType type, std::string value) {
    if (tokens_.size() >= kMaxTokens) {
      return syntax("Too many arguments");
    }
    tokens_.push_back(Token{type, std::move(value)});
    return true;
  }

  bool readAtom(std::string& out) {
    const std::size_t start = pos_;
    while (!atEnd() && isAstringChar(cur())) {
      ++pos_;
    }
    if (!atEnd() && cur() != ' ' && cur() != ')' && cur() != '\r' && cur() != '\n') {
      return syntax("Invalid characters in atom");
    }
    out.assign(in_.substr(start, pos_ - start));
    return true;
  }

  // RFC 9051 QUOTED-CHAR: 7-bit text other than CR and LF (Portico also
  // refuses the other controls), `\"` and `\\`, and well-formed UTF-8
  // (UTF8-2 / UTF8-3 / UTF8-4), as UTF8=ACCEPT clients send in LOGIN.
  bool readQuoted(std::string& out) {
    ++pos_;  // opening quote
    while (true) {
      if (atEnd() || cur() == '\r' || cur() == '\n') {
        return syntax("Unterminated quoted string");
      }
      const unsigned char c = cur();
      if (c >= 0x80) {
        const std::size_t n = internal::utf8SequenceLength(in_.substr(pos_));
        if (n == 0) {
          return syntax("Invalid UTF-8 in quoted string");
        }
        out.append(in_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      ++pos_;
      if (c == '"') {
        return true;
      }
      if (c == '\\') {
        if (atEnd()) {
          return syntax("Unterminated quoted string");
        }
        if (cur() != '\\' && cur() != '"') {
          return syntax("Invalid escape in quoted string");
        }
        out.push_back(static_cast<char>(cur()));
        ++pos_;
        continue;
      }
      if (isCtl(c)) {
        return syntax("Invalid characters in quoted string");
      }
      out.push_back(static_cast<char>(c));
    }
  }

  // `{N}` or `{N+}`, its line end, then N bytes taken by count.
  bool readLiteral(std::string& out) {
    ++pos_;  // '{'
    std::uint64_t size = 0;
    std::size_t digits = 0;
    bool overflow = false;
    while (!atEnd() && isDigit(cur())) {
      if (digits >= limits_.max_number_digits) {
        return fail(ErrorCode::kNumberTooLong, "Literal size has too many digits");
      }
      const std::uint64_t digit = cur() - '0';
      if (size > (UINT64_MAX - digit) / 10) {
        overflow = true;
      } else {
        size = size * 10 + digit;
      }
      ++digits;
      ++pos_;
    }
    if (digits == 0) {
      return fail(ErrorCode::kBadLiteral, "Invalid literal size");
    }
    if (!atEnd() && cur() == '+') {
      ++pos_;
    }
    if (atEnd() || cur() != '}') {
      return fail(ErrorCode::kBadLiteral, "Invalid literal size");
    }
    ++pos_;
    if (overflow || size > limits_.max_literal) {
      return fail(ErrorCode::kLiteralTooLarge, "Literal too large");
    }
    if (!atEnd() && cur() == '\r' && pos_ + 1 < in_.size() && in_[pos_ + 1] == '\n') {
      pos_ += 2;
    } else if (!atEnd() && cur() == '\n') {
      ++pos_;
    } else {
      return fail(ErrorCode::kBadLiteral, "Literal size must end the line");
    }
    if (size > in_.size() - pos_) {
      return syntax("Literal longer than the command");
    }
    const std::string_view body = in_.substr(pos_, static_cast<std::size_t>(size));
    // CHAR8 excludes NUL; a NUL in a user name or password would also break
    // a SASL PLAIN payload built from them.
    if (body.find('\0') != std::string_view::npos) {
      return syntax("NUL in literal");
    }
    out.assign(body);
    pos_ += body.size();
    literal_bytes_ += body.size();
    return true;
  }

  // Index one past the top-level item that starts at `i`.
  std::size_t itemEnd(std::size_t i) const {
    if (tokens_[i].type != TokenType::kOpen) {
      return i + 1;
    }
    std::size_t depth = 0;
    for (; i < tokens_.size(); ++i) {
      if (tokens_[i].type == TokenType::kOpen) {
        ++depth;
      } else if (tokens_[i].type == TokenType::kClose && --depth == 0) {
        return i + 1;
      }
    }
    return tokens_.size();  // unreachable: readArguments() balances lists
  }

  bool checkArguments() {
    // Start index of each top-level argument.
    std::vector<std::size_t> args;
    for (std::size_t i = 0; i < tokens_.size(); i = itemEnd(i)) {
      args.push_back(i);
    }
    PreloginCommand& cmd = result_.command;
    switch (cmd.verb) {
      case Verb::kCapability:
      case Verb::kNoop:
      case Verb::kLogout:
      case Verb::kStarttls:
        return args.empty() ? true : syntax("Extra arguments");
      case Verb::kLogin: {
        if (args.empty()) {
          return syntax("Missing user name");
        }
        if (!isAstring(tokens_[args[0]])) {
          return syntax("User name must be a string");
        }
        if (args.size() < 2) {
          return syntax("Missing password");
        }
        if (!isAstring(tokens_[args[1]])) {
          return syntax("Password must be a string");
        }
        if (args.size() > 2) {
          return syntax("Extra arguments");
        }
        cmd.user = std::move(tokens_[args[0]].value);
        cmd.password = std::move(tokens_[args[1]].value);
        return true;
      }
      case Verb::kAuthenticate:
        return checkAuthenticate(args);
      case Verb::kId:
        return checkId(args);
      case Verb::kOther:
        break;
    }
    return fail(ErrorCode::kUnknownCommand, "Command not allowed before login");
  }

  bool checkAuthenticate(const std::vector<std::size_t>& args) {
    if (args.empty()) {
      return syntax("Missing SASL mechanism");
    }
    const Token& mechanism = tokens_[args[0]];
    if (mechanism.type != TokenType::kAtom || mechanism.value.find(']') != std::string::npos) {
      return syntax("Invalid SASL mechanism");
    }
    if (args.size() > 2) {
      return syntax("Extra arguments");
    }
    std::optional<std::string> initial;
    if (args.size() == 2) {
      Token& response = tokens_[args[1]];
      if (response.type != TokenType::kAtom) {
        return syntax("Invalid initial response");
      }
      if (response.value == "=") {
        initial.emplace();
      } else if (!decodeBase64(response.value)) {
        return syntax("Invalid base64 in initial response");
      } else {
        initial = std::move(response.value);
      }
    }
    result_.command.mechanism = upperAscii(mechanism.value);
    result_.command.initial_response = std::move(initial);
    return true;
  }

  bool checkId(const std::vector<std::size_t>& args) {
    if (args.empty()) {
      return syntax("Missing ID parameters");
    }
    if (args.size() > 1) {
      return syntax("Extra arguments");
    }
    if (isNil(tokens_[0])) {
      result_.command.id.reset();
      return true;
    }
    if (tokens_[0].type != TokenType::kOpen) {
      return syntax("ID parameters must be a list or NIL");
    }
    // tokens_ is exactly `( item ... )` here.
    const std::size_t first = 1;
    const std::size_t last = tokens_.size() - 1;
    std::vector<IdField> fields;
    for (std::size_t i = first; i < last; i += 2) {
      if (fields.size() >= kIdMaxPairs) {
        return syntax("Too many ID fields");
      }
      Token& key = tokens_[i];
      if (key.type == TokenType::kOpen) {
        return syntax("Nested list in ID parameters");
      }
      if (!isString(key)) {
        return syntax("ID field name must be a string");
      }
      if (key.value.size() > kIdMaxFieldBytes) {
        return syntax("ID field name too long");
      }
      if (i + 1 >= last) {
        return syntax("ID field without a value");
      }
      Token& value = tokens_[i + 1];
      if (value.type == TokenType::kOpen) {
        return syntax("Nested list in ID parameters");
      }
      IdField field;
      field.key = std::move(key.value);
      if (isString(value)) {
        if (value.value.size() > kIdMaxValueBytes) {
          return syntax("ID field value too long");
        }
        field.value = std::move(value.value);
      } else if (!isNil(value)) {
        return syntax("ID field value must be a string or NIL");
      }
      fields.push_back(std::move(field));
    }
    result_.command.id = std::move(fields);
    return true;
  }

  std::string_view in_;
  const Limits& limits_;
  std::size_t pos_ = 0;
  std::size_t literal_bytes_ = 0;  // literal bodies read, excluded from the line length
  std::vector<Token> tokens_;
  PreloginResult result_;
};

}  // namespace

const char* verbName(Verb verb) {
  const auto index = static_cast<std::size_t>(verb);
  return index < kVerbNames.size() ? kVerbNames[index] : "UNKNOWN";
}

PreloginResult parsePrelogin(std::string_view command, const Limits& limits) {
  return PreloginParser(command, limits).run();
}

}  // namespace portico::parser
