// Portico's IMAP parser: incremental framers for both directions, the
// pre-login command parser, SASL user extraction and capability editing.
//
// Contract:
// - Pure: no I/O, no clocks, no exceptions. The framers allocate only in
//   their constructor and setLimits(): bounded buffers for the head (at
//   least Limits::max_head bytes, with room for a tag and a command name),
//   the tag and the command name. Never per byte, line or command.
// - Resumable: a framer is fed any split of a stream and produces the same
//   events at the same stream offsets whatever the split.
// - Views: string_views inside an event point into the framer's own buffers
//   (head, tag, command name) and stay valid until the next call to feed(),
//   setLimits() or reset() on that framer. Copy what must outlive that (the
//   tag) on purpose.
// - Literal bodies are skipped by count and never scanned.
// - Errors carry a message fit for a client (`TAG BAD <message>`) and say
//   whether the session can go on with the next line (recoverable) or must
//   end (fatal: a literal whose length is unknown or over the limit cannot
//   be skipped safely).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portico::parser {

// Every dimension has a bound; the defaults suit a relay after login.
// Pre-login the proxy passes much smaller ones.
struct Limits {
  std::size_t max_line = 64 * 1024;        // bytes of one line, literals excluded (no CRLF)
  std::size_t max_tag = 64;                // bytes of a tag
  std::uint64_t max_literal = UINT64_MAX;  // bytes of one literal
  std::size_t max_number_digits = 20;      // digits in a literal size
  std::size_t max_head = 1024;             // bytes of a line kept for the event
  std::size_t max_list_depth = 8;          // nesting of parenthesised lists
  // Bytes of one non-synchronizing literal `{N+}` / `~{N+}` from a client.
  // 4096 gives RFC 7888 LITERAL- semantics; a bigger one is a fatal
  // kLiteralTooLarge (the client sends the body without waiting).
  std::uint64_t max_nonsync_literal = UINT64_MAX;
  // Bytes of each line of an `ID` command (literals excluded, no CRLF) when
  // that is more than max_line. Before login max_line is small, but RFC 2971
  // lets ID carry 30 pairs of up to 30- and 1024-octet strings: pass
  // idMaxLine(max_tag) to accept every ID within those limits. 0: max_line.
  std::size_t max_id_line = 0;
};

// RFC 2971 section 3.3: field names up to 30 octets, values up to 1024
// octets, at most 30 field/value pairs.
inline constexpr std::size_t kIdMaxPairs = 30;
inline constexpr std::size_t kIdMaxFieldBytes = 30;
inline constexpr std::size_t kIdMaxValueBytes = 1024;
// The longest first line an ID within those limits takes, tag included (no
// CRLF): `TAG ID (` pairs `)` with every field and value a quoted string in
// which every octet is escaped. Literals, NIL and plain octets only make an
// ID shorter, so idMaxLine() + 2 (the CRLF) also bounds the whole command,
// literal bodies included.
constexpr std::size_t idMaxLine(std::size_t max_tag) {
  constexpr std::size_t kPair = (2 + 2 * kIdMaxFieldBytes) + 1 + (2 + 2 * kIdMaxValueBytes);
  return max_tag + 1 + 3 + 1 + kIdMaxPairs * kPair + (kIdMaxPairs - 1) + 1;
}

enum class ErrorCode : std::uint8_t {
  kNone = 0,
  kLineTooLong,
  kBareCR,  // CR not followed by LF
  kEmptyLine,
  kBadTag,  // empty, forbidden character, or missing
  kTagTooLong,
  kMissingCommand,
  kBadCommand,       // command name with forbidden characters
  kBadLiteral,       // '{' with no digits, junk inside the braces
  kNumberTooLong,    // more digits than Limits::max_number_digits
  kLiteralTooLarge,  // over Limits::max_literal (or a LITERAL- non-sync over 4096)
  kExpectedDone,     // a line other than DONE during IDLE
  kBadResponse,      // server line that is not *, + or TAG SP status
  kBadSyntax,        // pre-login argument grammar
  kUnknownCommand,   // pre-login: not a command Portico answers before login
  kCount,
};
const char* errorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kNone;
  bool fatal = false;        // true: the stream cannot be resynchronised; end the session
  const char* message = "";  // static text fit for `TAG BAD <message>`; never holds input bytes
};

enum class LiteralKind : std::uint8_t { kSync, kNonSync, kBinarySync, kBinaryNonSync };
inline bool isSync(LiteralKind k) {
  return k == LiteralKind::kSync || k == LiteralKind::kBinarySync;
}

// ---------------------------------------------------------------------------
// Scanning state shared by both framers. An implementation detail
// (parser/src/framer_internal.h), declared here only so that a framer holds
// it inline and needs no heap.
namespace detail {
struct LineScan {
  std::uint64_t line_bytes = 0;    // bytes of the current line so far (a pending CR included)
  std::uint64_t brace_chars = 0;   // bytes after the last '{' of the line
  std::uint64_t brace_digits = 0;  // leading digits after that '{'
  std::uint64_t brace_value = 0;   // their value (brace_overflow: did not fit)
  std::uint32_t stored = 0;        // bytes of the line kept in the head buffer
  char last[2] = {};               // last two content bytes, last[1] the newest
  bool pending_cr = false;         // the last byte seen was CR: a terminator if LF follows
  bool bare_cr = false;            // a CR followed by something other than LF
  bool in_quote = false;           // inside a quoted string
  bool escape = false;             // after a backslash inside a quoted string
  bool brace = false;              // a '{' was seen on this line
  bool brace_tilde = false;        // ... preceded by '~'
  bool brace_lead = false;         // still in the leading digits after it
  bool brace_overflow = false;
  bool brace_quote = false;  // a '"' came after it
};
struct LineResult;
}  // namespace detail

// ---------------------------------------------------------------------------
// Client -> server.
//
// Events from CommandFramer::feed():
// - kLiteral: a literal header `{N}`, `{N+}`, `~{N}`, `~{N+}` ended its line.
//   For a synchronizing literal the client now waits for the server's `+`
//   (awaitingContinuation() is true until its first body byte arrives, or
//   for `{0}` the first byte after it). The body (N bytes) is then skipped
//   by count.
// - kCommand: the command's last byte (literals included) was consumed.
//   tag/name/uid describe it. After `IDLE` the framer expects `DONE`;
//   after `AUTHENTICATE` it treats lines as SASL responses until the caller
//   says endAuthentication(). Both assume the server accepts the command:
//   when it refuses it instead (a tagged reply, no continuation), or answers
//   it itself, call returnToCommandMode().
// - kIdleDone: the `DONE` line (any case) that ends IDLE; tag/name are the
//   IDLE command's.
// - kAuthLine: one client line answering an AUTHENTICATE continuation
//   (content not reported: it carries credentials; head stays empty); tag and
//   name are the AUTHENTICATE command's. An empty line is a valid answer.
// - kError: a malformed line; see Error::fatal. After a recoverable error the
//   framer resumes at the next line (the command it belonged to is dropped).
//   A fatal error is sticky: every later feed() returns it again, consuming
//   nothing, until reset().
//
// Lines end with CRLF or a bare LF. A literal header counts only at the very
// end of a line and outside quoted strings; a line whose quote never closes is
// an ordinary line; a line ending in `{...}` (no '"' inside) whose braces
// hold anything but digits and one optional trailing `+` is kBadLiteral. A
// tag is 1..max_tag ASTRING-CHARs other than '+' and (as Dovecot) ']'.
// Empty lines between commands are ignored (no event, like Dovecot). Each line of a command
// (before, between and after literals) has its own Limits::max_line, or Limits::max_id_line for
// an `ID` command (one whose first max_line + 1 bytes start with `TAG SP ID SP`, any case, or
// whose first line ended as an ID). Recoverable errors:
// kLineTooLong (reported once: at byte max_line + 2 of a line with no LF yet, the rest of the line
// then skipped unread; or at the LF of a line whose content exceeds
// max_line), kBareCR, kBadTag, kTagTooLong,
// kMissingCommand, kBadCommand (reported at the LF), kExpectedDone (a line
// other than DONE during IDLE; it also ends IDLE, as servers do), and
// kLiteralTooLarge for a synchronizing literal (the server answers BAD and
// never sends `+`, so no body follows). Fatal: kBadLiteral, kNumberTooLong,
// any literal error on a non-synchronizing literal, and any line error on a
// line that announces a non-synchronizing literal (its body will follow and
// cannot be told apart from commands).
enum class CommandEventType : std::uint8_t {
  kNeedMore,
  kLiteral,
  kCommand,
  kIdleDone,
  kAuthLine,
  kError
};
const char* commandEventTypeName(CommandEventType type);

struct CommandEvent {
  CommandEventType type = CommandEventType::kNeedMore;
  std::string_view tag;   // all events but kNeedMore (kError: when it could be read)
  std::string_view name;  // upper-cased command name; "UID" prefix stripped
  bool uid = false;       // command had the UID prefix
  // kLiteral
  std::uint64_t literal_size = 0;
  LiteralKind literal_kind = LiteralKind::kSync;
  // kCommand: the whole command, literals and CRLFs included. kLiteral and
  // kError: the command's bytes so far. kIdleDone, kAuthLine: the line.
  std::uint64_t bytes = 0;
  std::uint32_t literals = 0;  // literals inside the command (so far)
  std::string_view head;       // first line, up to Limits::max_head bytes, no CRLF
  bool head_truncated = false;
  Error error;  // kError
};

struct FeedResult {
  std::size_t consumed = 0;  // bytes of the input taken; never more than given
  CommandEvent event;
};

class CommandFramer {
 public:
  explicit CommandFramer(const Limits& limits = {});

  // Consumes bytes up to and including the next event (or all of them when
  // the result is kNeedMore). Call again with the rest of the input.
  FeedResult feed(std::string_view input);

  bool awaitingContinuation() const;  // sync literal header sent, body not started
  bool inLiteral() const;             // inside a literal body
  bool idling() const;                // after IDLE, before DONE
  bool authenticating() const;        // after AUTHENTICATE, before endAuthentication()
  bool atCommandStart() const;        // between commands (no partial line), not IDLE/AUTH
  bool failed() const;                // a fatal error was reported; only reset() helps
  void endAuthentication();           // the server sent the tagged reply to AUTHENTICATE
  void endIdle();                     // the server answered IDLE with a tagged reply before DONE
  // The server refused the command just framed (a tagged reply and no
  // continuation), or answers it itself: back to command mode. Leaves IDLE
  // or AUTHENTICATE mode, and while awaitingContinuation() drops the
  // command, since no literal body follows a refused `+`. Call it right
  // after the command's event (kCommand, or kLiteral for a synchronizing
  // literal the server will not invite), before feeding more. No effect
  // once failed().
  void returnToCommandMode();
  // The tag and upper-cased name of the command being framed once the
  // framer has read them (its first line ended, or passed max_line); ""
  // before that and between commands. Valid until the next feed(),
  // setLimits() or reset().
  std::string_view currentTag() const;
  std::string_view currentName() const;
  // Resizes the buffers if they exist; call between commands, not per feed.
  void setLimits(const Limits& limits);
  void reset();
  // The buffers (about 1.2 KiB with the default limits) are allocated by the
  // first feed(), not by the constructor, so a connection that has sent
  // nothing holds none. releaseBuffers() gives them back between commands
  // (atCommandStart(), or failed()) so an idle session holds none either;
  // the next feed() allocates them again. Returns whether it released them.
  // Views from earlier events are invalid afterwards.
  bool releaseBuffers();
  bool holdsBuffers() const { return !head_.empty(); }

 private:
  enum class State : std::uint8_t { kLine, kBody, kSkip, kFailed };
  enum class Mode : std::uint8_t { kCommand, kIdle, kAuth };

  void allocate();
  void startCommand();
  void fillCommand(CommandEvent& event) const;
  void fail(CommandEvent& event, ErrorCode code, bool fatal);
  void parseHead(bool complete);
  std::uint64_t lineLimit() const;
  bool startsIdCommand();
  void lineTooLong(CommandEvent& event);
  bool lineEnded(const detail::LineResult& line, CommandEvent& event);
  // lineEnded() for the line after AUTHENTICATE (a SASL response) and
  // during IDLE (DONE).
  bool authLineEnded(const detail::LineResult& line, CommandEvent& event);
  bool idleLineEnded(const detail::LineResult& line, CommandEvent& event);

  Limits limits_;
  // Sized by allocate() (from the first feed() on), empty while released.
  std::string head_;  // first line of the command (see headCapacity())
  std::string tag_;   // Limits::max_tag
  std::string name_;  // upper-cased
  detail::LineScan scan_;
  std::uint64_t literal_left_ = 0;
  std::uint64_t command_bytes_ = 0;
  std::uint32_t literals_ = 0;
  std::uint32_t head_len_ = 0;  // reported head length of the current command
  std::uint32_t tag_len_ = 0;
  std::uint32_t name_len_ = 0;
  State state_ = State::kLine;
  Mode mode_ = Mode::kCommand;
  bool first_line_ = true;  // the current line is the command's first
  bool head_truncated_ = false;
  bool uid_ = false;
  bool awaiting_ = false;
  bool name_read_ = false;   // tag_ and name_ hold the current command's
  bool id_command_ = false;  // the current command is ID: lines get Limits::max_id_line
  ErrorCode head_error_ = ErrorCode::kNone;
  ErrorCode failed_code_ = ErrorCode::kNone;
  const char* failed_message_ = "";
};

// ---------------------------------------------------------------------------
// Server -> client.
//
// Events from ResponseFramer::feed(), each at the last byte of a whole
// response (literals included):
// - kUntagged: `* ...`; status is set for `* OK/NO/BAD/PREAUTH/BYE`; text is
//   everything after `* ` for other (data) responses, e.g. "3 EXISTS".
// - kContinuation: `+ ...` (or a bare `+`), with code and text.
// - kTagged: `TAG OK|NO|BAD ...`, with its response code.
// - kError: a line that is none of these, kBadResponse (an empty line too),
//   or kLineTooLong / kBareCR: recoverable, the framer resumes at the next
//   line. A literal the framer cannot skip (kBadLiteral, kNumberTooLong,
//   kLiteralTooLarge) is fatal and sticky, as in CommandFramer.
// Literals (`{N}`, `~{N}`) count only at the end of a line of an untagged data
// response (status kNone), outside quoted strings: status responses and
// continuations carry text, never literals. code and text are views into the
// head, so they are cut at Limits::max_head; a code with no closing `]` runs
// to the end of the head.
enum class ResponseEventType : std::uint8_t {
  kNeedMore,
  kUntagged,
  kContinuation,
  kTagged,
  kError
};
const char* responseEventTypeName(ResponseEventType type);

enum class Status : std::uint8_t { kNone, kOk, kNo, kBad, kPreauth, kBye };
const char* statusName(Status status);

struct ResponseEvent {
  ResponseEventType type = ResponseEventType::kNeedMore;
  std::string_view tag;  // kTagged
  Status status = Status::kNone;
  std::string_view code;  // inside [...], e.g. "UNAVAILABLE" or "CAPABILITY IMAP4rev1 ..."
  std::string_view text;  // human text after the code
  std::string_view head;  // first line, up to Limits::max_head bytes, no CRLF
  bool head_truncated = false;
  std::uint64_t bytes = 0;  // whole response, literals included (kError: bytes so far)
  std::uint32_t literals = 0;
  Error error;
};

struct ResponseFeedResult {
  std::size_t consumed = 0;
  ResponseEvent event;
};

class ResponseFramer {
 public:
  explicit ResponseFramer(const Limits& limits = {});
  ResponseFeedResult feed(std::string_view input);
  bool atResponseStart() const;
  bool failed() const;  // a fatal error was reported; only reset() helps
  // Resizes the head buffer if it exists; call between responses.
  void setLimits(const Limits& limits);
  void reset();
  // As CommandFramer's: the head buffer exists from the first feed() until
  // releaseBuffers() between responses (atResponseStart(), or failed()).
  bool releaseBuffers();
  bool holdsBuffers() const { return !head_.empty(); }

 private:
  enum class State : std::uint8_t { kLine, kBody, kSkip, kFailed };

  void startResponse();
  void fillResponse(ResponseEvent& event) const;
  void fail(ResponseEvent& event, ErrorCode code, bool fatal);
  bool classify(std::uint64_t content);
  void codeAndText(std::size_t pos);
  bool lineEnded(const detail::LineResult& line, ResponseEvent& event);

  Limits limits_;
  std::string head_;  // first line of the response; sized by the first feed(), empty while released
  detail::LineScan scan_;
  std::uint64_t literal_left_ = 0;
  std::uint64_t response_bytes_ = 0;
  std::uint32_t literals_ = 0;
  std::uint32_t head_len_ = 0;
  std::uint32_t tag_len_ = 0;
  std::uint32_t code_pos_ = 0;
  std::uint32_t code_len_ = 0;
  std::uint32_t text_pos_ = 0;
  std::uint32_t text_len_ = 0;
  State state_ = State::kLine;
  ResponseEventType type_ = ResponseEventType::kNeedMore;
  Status status_ = Status::kNone;
  bool first_line_ = true;
  bool head_truncated_ = false;
  ErrorCode failed_code_ = ErrorCode::kNone;
  const char* failed_message_ = "";
};

// ---------------------------------------------------------------------------
// Pre-login commands: full argument grammar over one whole command (the
// bytes the CommandFramer framed, literal bodies inline after their
// `{N}\r\n` headers, final CRLF included). Quoted strings may hold
// well-formed UTF-8 (RFC 9051, UTF8=ACCEPT); malformed UTF-8 and control
// characters are kBadSyntax. The line bytes of a command (literal bodies
// excluded) are bounded by Limits::max_line, for ID by Limits::max_id_line
// when that is larger; ID arguments must keep to RFC 2971 (kIdMax*).

enum class Verb : std::uint8_t {
  kCapability,
  kNoop,
  kLogout,
  kId,
  kStarttls,
  kLogin,
  kAuthenticate,
  kOther,
};
const char* verbName(Verb verb);

struct IdField {
  std::string key;
  std::optional<std::string> value;  // NIL -> nullopt
};

struct PreloginCommand {
  std::string tag;
  Verb verb = Verb::kOther;
  std::string name;  // upper-cased as sent
  // kLogin. The password is a secret: never log it or put it in an error.
  std::string user;
  std::string password;
  // kAuthenticate: mechanism upper-cased; initial response as sent (base64),
  // "" for `=` (empty), nullopt when absent.
  std::string mechanism;
  std::optional<std::string> initial_response;
  // kId: nullopt for `ID NIL`.
  std::optional<std::vector<IdField>> id;
};

struct PreloginResult {
  bool ok = false;
  PreloginCommand command;  // tag is filled when it could be read, even on error
  Error error;
};

PreloginResult parsePrelogin(std::string_view command, const Limits& limits = {});

// SASL helpers. decodeBase64 returns nullopt on malformed input.
std::optional<std::string> decodeBase64(std::string_view text);
std::string encodeBase64(std::string_view bytes);
// The user a SASL exchange authenticates as, from the *decoded* payload:
// PLAIN (authzid if present, else authcid), XOAUTH2 (`user=`), OAUTHBEARER
// (gs2 header `a=`, with =2C and =3D unescaped). nullopt if not found.
std::optional<std::string> saslUser(std::string_view mechanism, std::string_view decoded);

// ---------------------------------------------------------------------------
// Capabilities.

// Splits a capability list ("IMAP4rev1 IDLE AUTH=PLAIN") into atoms.
std::vector<std::string_view> parseCapabilities(std::string_view list);
bool hasCapability(std::string_view list, std::string_view capability);  // case-insensitive

// Rewrites a capability list found in a whole response line (with or
// without CRLF): either an untagged `* CAPABILITY ...` response or a
// `[CAPABILITY ...]` response code in any status response. Removes every
// capability in `remove` (case-insensitive; an entry ending in '=' removes
// all with that prefix, e.g. "AUTH=") and appends those in `add` that are
// not present. Lines without a capability list come back unchanged.
std::string editCapabilities(std::string_view line, const std::vector<std::string_view>& remove,
                             const std::vector<std::string_view>& add);

}  // namespace portico::parser
