// CommandFramer: table of inputs and expected events. Every case runs whole,
// byte by byte and split at every offset (split_harness.h); all runs must
// give the same events, which must match the table.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "parser/split_harness.h"
#include "portico/parser.h"

// The tables use designated initializers and leave unchecked fields out on
// purpose; GCC 12 warns about that under -Wextra.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace portico::parser {
namespace {

using testing::OwnedCommandEvent;
using Type = CommandEventType;

// Fields left unset are not checked (the harness still compares every field
// between the whole and the split runs).
struct Expect {
  Type type = Type::kCommand;
  std::uint64_t offset = 0;
  std::optional<std::string> tag;
  std::optional<std::string> name;
  std::optional<bool> uid;
  std::optional<std::uint64_t> size;
  std::optional<LiteralKind> kind;
  std::optional<std::uint64_t> bytes;
  std::optional<std::uint32_t> literals;
  std::optional<std::string> head;
  std::optional<bool> truncated;
  std::optional<ErrorCode> code;
  std::optional<bool> fatal;
};

struct Case {
  std::string name;
  std::string input;
  std::vector<Expect> events;
  Limits limits = {};
  bool end_auth_after_auth_line = false;  // call endAuthentication() after each kAuthLine
  // The "server" refuses: returnToCommandMode() after each kCommand, or after
  // each kLiteral of a synchronizing literal.
  bool refuse_commands = false;
  bool refuse_sync_literals = false;
};

// A case whose server refuses what the hook says (see Case).
Case refusing(std::string name, std::string input, std::vector<Expect> events, bool commands,
              bool literals) {
  Case c{std::move(name), std::move(input), std::move(events)};
  c.refuse_commands = commands;
  c.refuse_sync_literals = literals;
  return c;
}

// Small limits for ID allowance cases, so they run split at every offset.
Limits idLimits(std::size_t max_line = 16, std::size_t max_id_line = 40) {
  Limits l;
  l.max_line = max_line;
  l.max_id_line = max_id_line;
  return l;
}

Limits limits(std::size_t max_line, std::size_t max_tag = 64,
              std::uint64_t max_literal = UINT64_MAX, std::size_t max_head = 1024,
              std::uint64_t max_nonsync = UINT64_MAX) {
  Limits l;
  l.max_line = max_line;
  l.max_tag = max_tag;
  l.max_literal = max_literal;
  l.max_head = max_head;
  l.max_nonsync_literal = max_nonsync;
  return l;
}

const std::string kRfcMessage =  // RFC 3501 6.3.11, 310 bytes
    "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    "From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
    "Subject: afternoon meeting\r\n"
    "To: mooch@owatagu.siam.edu\r\n"
    "Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    "\r\n"
    "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n";

Expect error(std::uint64_t offset, ErrorCode code, bool fatal, std::string tag = "") {
  return Expect{.type = Type::kError, .offset = offset, .tag = tag, .code = code, .fatal = fatal};
}

std::vector<Case> cases() {
  std::vector<Case> c;
  // Plain commands.
  c.push_back({"Noop",
               "a1 NOOP\r\n",
               {{.offset = 9,
                 .tag = "a1",
                 .name = "NOOP",
                 .uid = false,
                 .bytes = 9,
                 .literals = 0,
                 .head = "a1 NOOP",
                 .truncated = false}}});
  c.push_back({"LowerCaseName",
               "a1 noop\r\n",
               {{.offset = 9, .tag = "a1", .name = "NOOP", .head = "a1 noop"}}});
  c.push_back({"RfcUidFetch",
               "a002 UID FETCH 1:* FLAGS\r\n",
               {{.offset = 26, .tag = "a002", .name = "FETCH", .uid = true, .bytes = 26}}});
  c.push_back({"UidLowerCase",
               "x uid store 1 +FLAGS (\\Deleted)\r\n",
               {{.offset = 33, .tag = "x", .name = "STORE", .uid = true}}});
  c.push_back({"BareLf", "a1 NOOP\n", {{.offset = 8, .tag = "a1", .name = "NOOP", .bytes = 8}}});
  c.push_back({"Pipelined",
               "a1 NOOP\r\na2 CAPABILITY\r\na3 LOGOUT\n",
               {{.offset = 9, .tag = "a1", .name = "NOOP", .bytes = 9},
                {.offset = 24, .tag = "a2", .name = "CAPABILITY", .bytes = 15},
                {.offset = 34, .tag = "a3", .name = "LOGOUT", .bytes = 10}}});
  c.push_back({"EmptyLinesIgnored",
               "\r\n\n\r\na1 NOOP\r\n\r\n",
               {{.offset = 14, .tag = "a1", .name = "NOOP", .bytes = 9}}});
  c.push_back({"TagWithOddButValidChars",
               "a.b-c_d!#$&'/ NOOP\r\n",
               {{.offset = 20, .tag = "a.b-c_d!#$&'/", .name = "NOOP"}}});

  // Literals.
  {
    const std::string header = "A003 APPEND saved-messages (\\Seen) {310}\r\n";
    const std::string all = header + kRfcMessage + "\r\n";
    c.push_back({"RfcAppend",
                 all,
                 {{.type = Type::kLiteral,
                   .offset = header.size(),
                   .tag = "A003",
                   .name = "APPEND",
                   .size = 310,
                   .kind = LiteralKind::kSync,
                   .bytes = header.size(),
                   .literals = 1,
                   .head = "A003 APPEND saved-messages (\\Seen) {310}"},
                  {.offset = all.size(),
                   .tag = "A003",
                   .name = "APPEND",
                   .bytes = all.size(),
                   .literals = 1,
                   .head = "A003 APPEND saved-messages (\\Seen) {310}"}}});
  }
  c.push_back({"RfcLoginTwoLiterals",
               "A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n",
               {{.type = Type::kLiteral,
                 .offset = 17,
                 .tag = "A001",
                 .name = "LOGIN",
                 .size = 11,
                 .kind = LiteralKind::kSync,
                 .literals = 1},
                {.type = Type::kLiteral, .offset = 34, .size = 7, .literals = 2},
                {.offset = 43,
                 .tag = "A001",
                 .name = "LOGIN",
                 .bytes = 43,
                 .literals = 2,
                 .head = "A001 LOGIN {11}"}}});
  c.push_back({"LiteralPlus",
               "a1 APPEND box {5+}\r\nhello\r\n",
               {{.type = Type::kLiteral, .offset = 20, .size = 5, .kind = LiteralKind::kNonSync},
                {.offset = 27, .bytes = 27, .literals = 1}}});
  c.push_back({"BinaryLiteral",
               std::string("a1 APPEND box ~{5}\r\nh\0\r\n{\r\n", 27),
               {{.type = Type::kLiteral, .offset = 20, .size = 5, .kind = LiteralKind::kBinarySync},
                {.offset = 27, .name = "APPEND", .literals = 1}}});
  c.push_back(
      {"BinaryLiteralPlus",
       "a1 APPEND box ~{3+}\r\nabc\n",
       {{.type = Type::kLiteral, .offset = 21, .size = 3, .kind = LiteralKind::kBinaryNonSync},
        {.offset = 25, .bytes = 25}}});
  c.push_back({"LiteralBodyNeverScanned",
               "a APPEND x {12}\r\n\r\nb NOOP {9}\r\n\r\n",
               {{.type = Type::kLiteral, .offset = 17, .size = 12},
                {.offset = 31, .tag = "a", .name = "APPEND", .literals = 1}}});
  c.push_back({"ZeroLiterals",
               "a LOGIN {0}\r\n {0+}\r\n\r\n",
               {{.type = Type::kLiteral, .offset = 13, .size = 0},
                {.type = Type::kLiteral, .offset = 20, .size = 0, .kind = LiteralKind::kNonSync},
                {.offset = 22, .bytes = 22, .literals = 2}}});
  c.push_back({"LiteralBareLf",
               "a LOGIN {2}\nab x\n",
               {{.type = Type::kLiteral, .offset = 12, .size = 2}, {.offset = 17}}});
  c.push_back({"MaxDigitsLiteral",
               "a X {18446744073709551615}\r\n",
               {{.type = Type::kLiteral, .offset = 28, .size = UINT64_MAX}}});
  c.push_back({"LeadingZeros",
               "a X {0005}\r\nabcde\r\n",
               {{.type = Type::kLiteral, .offset = 12, .size = 5}, {.offset = 19}}});
  c.push_back({"MarkerNotAtEnd", "a1 X {5} foo\r\n", {{.offset = 14, .literals = 0}}});
  c.push_back({"ClosingBraceAtom", "a1 STORE 1 +FLAGS (a}\r\n", {{.offset = 23}}});
  c.push_back({"MarkerInsideQuote", "a1 SEARCH SUBJECT \"{5}\"\r\n", {{.offset = 25}}});
  c.push_back({"QuotedBraceThenBrace",
               "a1 SEARCH SUBJECT \"{\" KEYWORD x}\r\n",
               {{.offset = 34, .literals = 0}}});
  c.push_back(
      {"UnterminatedQuote",
       "a1 LOGIN \"user {5}\r\nb NOOP\r\n",
       {{.offset = 20, .tag = "a1", .name = "LOGIN", .literals = 0}, {.offset = 28, .tag = "b"}}});
  c.push_back({"EscapedQuoteKeepsQuoteOpen", "a1 SELECT \"a\\\"{5}\r\n", {{.offset = 19}}});
  c.push_back({"EscapedBackslashClosesQuote",
               "a1 LOGIN \"a\\\\\" {1}\r\nx\r\n",
               {{.type = Type::kLiteral, .offset = 20, .size = 1}, {.offset = 23}}});
  c.push_back({"QuoteThenLiteral",
               "a1 LOGIN \"fred\" {3}\r\nabc\r\n",
               {{.type = Type::kLiteral, .offset = 21, .size = 3}, {.offset = 26}}});
  // The body is a lone '"': it is not scanned, so the next line starts unquoted.
  c.push_back({"QuoteStateResetsAfterLiteral",
               "a X {1}\r\n\" {2}\r\nab\r\n",
               {{.type = Type::kLiteral, .offset = 9},
                {.type = Type::kLiteral, .offset = 16, .size = 2},
                {.offset = 20, .literals = 2}}});
  c.push_back(
      {"TildeInsideQuoteNotBinary",
       "a X \"~\"{1}\r\nz\r\n",
       {{.type = Type::kLiteral, .offset = 12, .kind = LiteralKind::kSync}, {.offset = 15}}});

  // IDLE (RFC 2177 example) and AUTHENTICATE.
  c.push_back({"RfcIdle",
               "A002 IDLE\r\nDONE\r\nA003 NOOP\r\n",
               {{.offset = 11, .tag = "A002", .name = "IDLE", .bytes = 11},
                {.type = Type::kIdleDone,
                 .offset = 17,
                 .tag = "A002",
                 .name = "IDLE",
                 .bytes = 6,
                 .head = "DONE"},
                {.offset = 28, .tag = "A003", .name = "NOOP"}}});
  c.push_back({"IdleDoneLowerCase",
               "a idle\ndone\n",
               {{.offset = 7, .name = "IDLE"}, {.type = Type::kIdleDone, .offset = 12}}});
  c.push_back({"IdleExpectedDone",
               "a IDLE\r\nNOOP\r\nb NOOP\r\n",
               {{.offset = 8, .name = "IDLE"},
                error(14, ErrorCode::kExpectedDone, false, "a"),
                {.offset = 22, .tag = "b", .name = "NOOP"}}});
  c.push_back({"IdleEmptyLineIsNotDone",
               "a IDLE\r\n\r\nb NOOP\r\n",
               {{.offset = 8}, error(10, ErrorCode::kExpectedDone, false, "a"), {.offset = 18}}});
  c.push_back({"UidIdleIsNotIdle",
               "a UID IDLE\r\nb NOOP\r\n",
               {{.offset = 12, .name = "IDLE", .uid = true}, {.offset = 20, .name = "NOOP"}}});
  c.push_back({"Authenticate",
               "a AUTHENTICATE PLAIN\r\ndGVzdAB0ZXN0AHRlc3Q=\r\n\r\n*\r\n",
               {{.offset = 22, .tag = "a", .name = "AUTHENTICATE"},
                {.type = Type::kAuthLine,
                 .offset = 44,
                 .tag = "a",
                 .name = "AUTHENTICATE",
                 .bytes = 22,
                 .head = ""},
                {.type = Type::kAuthLine, .offset = 46, .bytes = 2},
                {.type = Type::kAuthLine, .offset = 49, .bytes = 3}}});
  c.push_back({"AuthenticateThenEnd",
               "a AUTHENTICATE PLAIN\r\nAGZyZWQAc2VjcmV0\r\nb NOOP\r\n",
               {{.offset = 22, .name = "AUTHENTICATE"},
                {.type = Type::kAuthLine, .offset = 40},
                {.offset = 48, .tag = "b", .name = "NOOP"}},
               {},
               true});
  c.push_back({"AuthLineWithBareCr",
               "a AUTHENTICATE X\r\nab\rc\r\nd\r\n",
               {{.offset = 18},
                error(24, ErrorCode::kBareCR, false, "a"),
                {.type = Type::kAuthLine, .offset = 27}}});

  c.push_back({"AuthLineTooLongShowsNoHead",
               "a AUTHENTICATE PLAIN\r\n" + std::string(28, 'A') + "\r\nb\r\n",
               {{.offset = 22, .name = "AUTHENTICATE", .head = "a AUTHENTICATE PLAIN"},
                Expect{.type = Type::kError,
                       .offset = 44,
                       .tag = "a",
                       .head = "",
                       .truncated = false,
                       .code = ErrorCode::kLineTooLong,
                       .fatal = false},
                {.type = Type::kAuthLine, .offset = 55, .head = ""}},
               limits(20)});
  c.push_back({"IdleLineTooLongEndsIdle",
               "a IDLE\r\nDONEDONEDONEDONE\r\nb NOOP\r\n",
               {{.offset = 8, .name = "IDLE"},
                Expect{.type = Type::kError,
                       .offset = 20,
                       .tag = "a",
                       .name = "IDLE",
                       .head = "DONEDONEDONE",
                       .truncated = true,
                       .code = ErrorCode::kLineTooLong,
                       .fatal = false},
                {.offset = 34, .tag = "b", .name = "NOOP"}},
               limits(10)});

  // A refused command (or one the server answers itself) puts the framer back
  // in command mode: the next line is a command, not DONE or a SASL line.
  c.push_back(refusing("RefusedAuthenticate", "a1 AUTHENTICATE PLAIN dXNlcg\r\na2 NOOP\r\n",
                       {{.offset = 30, .tag = "a1", .name = "AUTHENTICATE"},
                        {.offset = 39, .tag = "a2", .name = "NOOP", .bytes = 9}},
                       true, false));
  c.push_back(refusing("RefusedIdle", "i1 IDLE\r\na2 NOOP\r\nDONE\r\n",
                       {{.offset = 9, .tag = "i1", .name = "IDLE"},
                        {.offset = 18, .tag = "a2", .name = "NOOP"},
                        error(24, ErrorCode::kMissingCommand, false, "DONE")},
                       true, false));
  c.push_back(refusing("AcceptedCommandsAreUnchangedByRefusal",
                       "a1 NOOP\r\na2 LOGIN {1}\r\nx y\r\n",
                       {{.offset = 9, .tag = "a1"},
                        {.type = Type::kLiteral, .offset = 23, .tag = "a2"},
                        {.offset = 28, .tag = "a2", .name = "LOGIN", .bytes = 19}},
                       true, false));
  // A synchronizing literal answered with a tagged reply instead of `+`: the
  // client sends no body, so the next line is a new command.
  c.push_back(refusing("RefusedSyncLiteral", "a1 LOGIN {5}\r\na2 NOOP\r\n",
                       {{.type = Type::kLiteral, .offset = 14, .tag = "a1", .size = 5},
                        {.offset = 23, .tag = "a2", .name = "NOOP", .bytes = 9}},
                       false, true));
  c.push_back(refusing("RefusedZeroLiteral", "a1 LOGIN {0}\r\na2 NOOP\r\n",
                       {{.type = Type::kLiteral, .offset = 14, .tag = "a1", .size = 0},
                        {.offset = 23, .tag = "a2", .name = "NOOP", .bytes = 9}},
                       false, true));
  c.push_back(refusing("RefusedSecondLiteral", "a1 LOGIN {1+}\r\nu {5}\r\na2 NOOP\r\n",
                       {{.type = Type::kLiteral, .offset = 15, .tag = "a1", .size = 1},
                        {.type = Type::kLiteral, .offset = 22, .tag = "a1", .size = 5},
                        {.offset = 31, .tag = "a2", .name = "NOOP", .bytes = 9}},
                       false, true));
  // A non-synchronizing body comes whatever the server says: it stays a body.
  c.push_back(refusing("NonSyncLiteralIsNotDropped", "a1 LOGIN {5+}\r\nb NOOP pw\r\na2 NOOP\r\n",
                       {{.type = Type::kLiteral, .offset = 15, .tag = "a1"},
                        {.offset = 26, .tag = "a1", .name = "LOGIN"},
                        {.offset = 35, .tag = "a2", .name = "NOOP"}},
                       false, true));

  // ID lines get Limits::max_id_line (here 40; max_line 16).
  c.push_back({"IdLineUsesItsAllowance",
               "a ID (\"k\" \"" + std::string(24, 'v') + "\")\r\nb NOOP\r\n",
               {{.offset = 39, .tag = "a", .name = "ID", .bytes = 39},
                {.offset = 47, .tag = "b", .name = "NOOP"}},
               idLimits()});
  c.push_back({"IdLineAtItsAllowance",
               "a id (\"k\" \"" + std::string(27, 'v') + "\")\n",
               {{.offset = 41, .tag = "a", .name = "ID", .bytes = 41}},
               idLimits()});
  c.push_back({"IdLineOverItsAllowance",
               "a ID (\"k\" \"" + std::string(28, 'v') + "\")\r\nb NOOP\r\n",
               {Expect{.type = Type::kError,
                       .offset = 42,
                       .tag = "a",
                       .name = "ID",
                       .code = ErrorCode::kLineTooLong,
                       .fatal = false},
                {.offset = 51, .tag = "b", .name = "NOOP"}},
               idLimits()});
  c.push_back({"IdLineOfMaxLinePlusOne",
               "a ID (\"kkkkkkkk\")\na ID (\"kkkkkkkk\")\r\n",
               {{.offset = 18, .name = "ID"}, {.offset = 37, .name = "ID"}},
               idLimits()});
  c.push_back({"OtherLinesKeepMaxLine",
               "a NOOP " + std::string(20, 'x') + "\r\nb NOOP\r\n",
               {error(18, ErrorCode::kLineTooLong, false, "a"), {.offset = 37, .tag = "b"}},
               idLimits()});
  c.push_back({"UidIdIsNotId",
               "a UID ID " + std::string(20, 'x') + "\r\n",
               {error(18, ErrorCode::kLineTooLong, false, "a")},
               idLimits()});
  c.push_back({"IdMustBeTheWholeName",
               "a IDX (" + std::string(20, 'x') + ")\r\n",
               {error(18, ErrorCode::kLineTooLong, false, "a")},
               idLimits()});
  // Decided from the first max_line + 1 bytes: a tag that pushes "ID " past
  // them leaves the line at max_line, also when its LF comes right after.
  c.push_back({"IdNameBeyondMaxLinePlusOne",
               std::string(15, 't') + " ID (\"x\")\r\n" + std::string(14, 't') + " ID\n",
               {error(18, ErrorCode::kLineTooLong, false, std::string(15, 't')),
                error(44, ErrorCode::kLineTooLong, false, std::string(14, 't'))},
               idLimits()});
  c.push_back({"IdLinesAfterALiteralUseTheAllowance",
               "a ID ({1}\r\nk \"" + std::string(30, 'v') + "\")\r\n",
               {{.type = Type::kLiteral, .offset = 11, .name = "ID"},
                {.offset = 48, .tag = "a", .name = "ID", .literals = 1}},
               idLimits()});
  c.push_back({"NoAllowanceWhenNotLarger",
               "a ID (\"k\" \"" + std::string(24, 'v') + "\")\r\n",
               {error(18, ErrorCode::kLineTooLong, false, "a")},
               idLimits(16, 16)});

  // Malformed lines.
  c.push_back({"BareCr",
               "a1 NO\rOP\r\nb NOOP\r\n",
               {error(10, ErrorCode::kBareCR, false, "a1"), {.offset = 18, .tag = "b"}}});
  c.push_back({"CrCrLf",
               "a1 NOOP\r\r\nb NOOP\r\n",
               {error(10, ErrorCode::kBareCR, false, "a1"), {.offset = 18, .tag = "b"}}});
  c.push_back({"BareCrAfterLiteral",
               "a APPEND x {3}\r\nabc\rX\r\nb NOOP\r\n",
               {{.type = Type::kLiteral, .offset = 16},
                Expect{.type = Type::kError,
                       .offset = 23,
                       .tag = "a",
                       .name = "APPEND",
                       .bytes = 23,
                       .literals = 1,
                       .code = ErrorCode::kBareCR,
                       .fatal = false},
                {.offset = 31, .tag = "b"}}});
  c.push_back({"BareCrBeforeNonSyncLiteralIsFatal",
               "a AP\rPEND {5+}\r\nhello\r\n",
               {error(16, ErrorCode::kBareCR, true, "a")}});
  c.push_back({"MissingCommand",
               "a1\r\na1 \r\na1 UID\r\na1 UID \r\n",
               {error(4, ErrorCode::kMissingCommand, false, "a1"),
                error(9, ErrorCode::kMissingCommand, false, "a1"),
                error(17, ErrorCode::kMissingCommand, false, "a1"),
                error(26, ErrorCode::kMissingCommand, false, "a1")}});
  c.push_back({"BadCommandName",
               "a1 NO(OP\r\na2 " + std::string(65, 'X') + "\r\n",
               {error(10, ErrorCode::kBadCommand, false, "a1"),
                error(80, ErrorCode::kBadCommand, false, "a2")}});
  c.push_back({"EmptyTag", " NOOP\r\n", {error(7, ErrorCode::kBadTag, false)}});
  for (char bad : std::string("(){%*\"\\]+\x01\x7f\x80")) {
    std::string input = std::string("a") + bad + "1 NOOP\r\nb NOOP\r\n";
    c.push_back({"ForbiddenTagChar" + std::to_string(static_cast<unsigned char>(bad)),
                 input,
                 {error(10, ErrorCode::kBadTag, false), {.offset = 18, .tag = "b"}}});
  }
  c.push_back({"TagTooLong",
               "abcde NOOP\r\nabcd NOOP\r\n",
               {error(12, ErrorCode::kTagTooLong, false), {.offset = 23, .tag = "abcd"}},
               limits(64 * 1024, 4)});
  c.push_back({"BadTagWithSyncLiteral",
               "a*1 APPEND x {5}\r\nb NOOP\r\n",
               {error(18, ErrorCode::kBadTag, false), {.offset = 26, .tag = "b"}}});
  c.push_back({"BadTagWithNonSyncLiteral",
               "a*1 APPEND x {5+}\r\nhello\r\n",
               {error(19, ErrorCode::kBadTag, true)}});
  c.push_back({"LiteralOnlyLine",
               "{5}\r\nb NOOP\r\n",
               {error(5, ErrorCode::kBadTag, false), {.offset = 13}}});

  // Literal headers that cannot be read: fatal.
  c.push_back({"TwentyFiveDigits",
               "a1 APPEND x {1234567890123456789012345}\r\nb NOOP\r\n",
               {error(41, ErrorCode::kNumberTooLong, true, "a1")}});
  c.push_back({"SizeOverflow",
               "a1 APPEND x {99999999999999999999}\r\n",
               {error(36, ErrorCode::kNumberTooLong, true, "a1")}});
  c.push_back({"SizeOverflowByOne",
               "a1 APPEND x {18446744073709551616+}\r\n",
               {error(37, ErrorCode::kNumberTooLong, true, "a1")}});
  c.push_back({"NoDigits", "a1 APPEND x {}\r\n", {error(16, ErrorCode::kBadLiteral, true, "a1")}});
  c.push_back(
      {"OnlyPlus", "a1 APPEND x ~{+}\r\n", {error(18, ErrorCode::kBadLiteral, true, "a1")}});
  c.push_back(
      {"JunkInBraces", "a1 APPEND x {5 }\r\n", {error(18, ErrorCode::kBadLiteral, true, "a1")}});
  c.push_back(
      {"DoublePlus", "a1 APPEND x {5++}\r\n", {error(19, ErrorCode::kBadLiteral, true, "a1")}});
  c.push_back({"LettersInBraces",
               "a1 APPEND x {abc}\r\n",
               {error(19, ErrorCode::kBadLiteral, true, "a1")}});

  // Literal size limits.
  c.push_back({"SyncLiteralTooLargeIsRecoverable",
               "a APPEND x {101}\r\nb NOOP\r\n",
               {error(18, ErrorCode::kLiteralTooLarge, false, "a"), {.offset = 26, .tag = "b"}},
               limits(64 * 1024, 64, 100)});
  c.push_back({"NonSyncLiteralTooLargeIsFatal",
               "a APPEND x {101+}\r\n",
               {error(19, ErrorCode::kLiteralTooLarge, true, "a")},
               limits(64 * 1024, 64, 100)});
  c.push_back({"LiteralMinusAtLimit",
               "a APPEND x {4096+}\r\n",
               {{.type = Type::kLiteral, .offset = 20, .size = 4096}},
               limits(64 * 1024, 64, UINT64_MAX, 1024, 4096)});
  c.push_back({"LiteralMinusOverLimit",
               "a APPEND x {4097+}\r\n",
               {error(20, ErrorCode::kLiteralTooLarge, true, "a")},
               limits(64 * 1024, 64, UINT64_MAX, 1024, 4096)});
  c.push_back({"LiteralMinusSyncUnaffected",
               "a APPEND x {5000}\r\n",
               {{.type = Type::kLiteral, .offset = 19, .size = 5000}},
               limits(64 * 1024, 64, UINT64_MAX, 1024, 4096)});

  // Line and head limits.
  c.push_back({"LineTooLongMidLine",
               "a1 NOOP 1234567890\r\nb NOOP\r\n",
               {Expect{.type = Type::kError,
                       .offset = 14,
                       .tag = "a1",
                       .name = "NOOP",
                       .bytes = 14,
                       .head = "a1 NOOP 123456",
                       .truncated = true,
                       .code = ErrorCode::kLineTooLong,
                       .fatal = false},
                {.offset = 28, .tag = "b"}},
               limits(12)});
  c.push_back({"LineTooLongAtLf",
               "a1 NOOP 12345\nb NOOP\r\n",
               {error(14, ErrorCode::kLineTooLong, false, "a1"), {.offset = 22}},
               limits(12)});
  c.push_back({"LineTooLongCrAtLimit",
               "a1 NOOP 12345\r\nb NOOP\r\n",
               {error(14, ErrorCode::kLineTooLong, false, "a1"), {.offset = 23}},
               limits(12)});
  c.push_back({"LineExactlyMaxLine",
               "a1 NOOP 1234\r\na1 NOOP 1234\n",
               {{.offset = 14}, {.offset = 27}},
               limits(12)});
  c.push_back({"LineTooLongTagUnknown",
               "abcdefghijklmnop\r\nb NOOP\r\n",
               {error(8, ErrorCode::kLineTooLong, false), {.offset = 26}},
               limits(6)});
  c.push_back({"ContinuationLineTooLong",
               "a X {1}\r\nz 1234567890\r\nb NOOP\r\n",
               {{.type = Type::kLiteral, .offset = 9},
                Expect{.type = Type::kError,
                       .offset = 20,
                       .tag = "a",
                       .literals = 1,
                       .code = ErrorCode::kLineTooLong,
                       .fatal = false},
                {.offset = 31, .tag = "b"}},
               limits(8)});
  c.push_back({"HeadTruncated",
               "a1 NOOP\r\n",
               {{.offset = 9, .tag = "a1", .name = "NOOP", .head = "a1 NO", .truncated = true}},
               limits(64 * 1024, 64, UINT64_MAX, 5)});
  c.push_back(
      {"NoHead",
       "a1 UID FETCH 1 (FLAGS)\r\n",
       {{.offset = 24, .tag = "a1", .name = "FETCH", .uid = true, .head = "", .truncated = true}},
       limits(64 * 1024, 64, UINT64_MAX, 0)});
  return c;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class CommandFramerTable : public ::testing::TestWithParam<Case> {};

template <typename T, typename U>
void expectIfSet(const std::optional<T>& want, const U& got, const char* what) {
  if (want) {
    EXPECT_EQ(*want, got) << what;
  }
}

void expectEvent(const Expect& want, const OwnedCommandEvent& got) {
  EXPECT_STREQ(commandEventTypeName(want.type), commandEventTypeName(got.type));
  EXPECT_EQ(want.offset, got.offset);
  expectIfSet(want.tag, got.tag, "tag");
  expectIfSet(want.name, got.name, "name");
  expectIfSet(want.uid, got.uid, "uid");
  expectIfSet(want.size, got.literal_size, "literal size");
  expectIfSet(want.kind, got.literal_kind, "literal kind");
  expectIfSet(want.bytes, got.bytes, "bytes");
  expectIfSet(want.literals, got.literals, "literals");
  expectIfSet(want.head, got.head, "head");
  expectIfSet(want.truncated, got.head_truncated, "head truncated");
  if (want.code) {
    EXPECT_STREQ(errorCodeName(*want.code), errorCodeName(got.code));
  }
  expectIfSet(want.fatal, got.fatal, "fatal");
  if (got.type == Type::kError) {
    EXPECT_STRNE("", got.message.c_str());
  }
}

TEST_P(CommandFramerTable, SameEventsWholeAndSplit) {
  const Case& c = GetParam();
  testing::EventHook<CommandFramer> hook = [&c](CommandFramer& framer, const OwnedCommandEvent& e) {
    if (c.end_auth_after_auth_line && e.type == Type::kAuthLine) {
      framer.endAuthentication();
    }
    if ((c.refuse_commands && e.type == Type::kCommand) ||
        (c.refuse_sync_literals && e.type == Type::kLiteral && isSync(e.literal_kind))) {
      framer.returnToCommandMode();
    }
  };
  std::string mismatch;
  const auto run = testing::runAllSplits<CommandFramer>(c.limits, c.input, &mismatch, hook);
  EXPECT_EQ("", mismatch);
  ASSERT_EQ(c.events.size(), run.events.size()) << testing::describeAll(run.events);
  for (std::size_t i = 0; i < c.events.size(); ++i) {
    SCOPED_TRACE("event " + std::to_string(i) + ": " + testing::describe(run.events[i]));
    expectEvent(c.events[i], run.events[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CommandFramerTable, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(CommandFramer, RfcAppendMessageIs310Bytes) {
  EXPECT_EQ(310u, kRfcMessage.size());
}

TEST(CommandFramer, StateAccessorsAcrossALiteral) {
  CommandFramer framer;
  EXPECT_TRUE(framer.atCommandStart());
  auto r = framer.feed("a APPEND x {3}\r");
  EXPECT_EQ(Type::kNeedMore, r.event.type);
  EXPECT_FALSE(framer.atCommandStart());
  r = framer.feed("\nab");
  EXPECT_EQ(Type::kLiteral, r.event.type);
  EXPECT_EQ(1u, r.consumed);
  EXPECT_TRUE(framer.awaitingContinuation());
  EXPECT_TRUE(framer.inLiteral());
  EXPECT_TRUE(framer.awaitingContinuation());  // an empty feed changes nothing
  r = framer.feed("");
  EXPECT_TRUE(framer.awaitingContinuation());
  r = framer.feed("ab");
  EXPECT_EQ(2u, r.consumed);
  EXPECT_FALSE(framer.awaitingContinuation());
  EXPECT_TRUE(framer.inLiteral());
  r = framer.feed("c\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_FALSE(framer.inLiteral());
  EXPECT_TRUE(framer.atCommandStart());
}

TEST(CommandFramer, BuffersExistFromTheFirstFeedUntilReleasedBetweenCommands) {
  CommandFramer framer;
  EXPECT_FALSE(framer.holdsBuffers());  // a connection that sent nothing holds none
  EXPECT_FALSE(framer.releaseBuffers());
  auto r = framer.feed("a1 APPEND x {3}\r\nab");
  EXPECT_EQ(Type::kLiteral, r.event.type);
  EXPECT_TRUE(framer.holdsBuffers());
  EXPECT_FALSE(framer.releaseBuffers());  // mid-command: kept
  r = framer.feed("abc");
  EXPECT_FALSE(framer.releaseBuffers());  // still inside the command (no CRLF yet)
  r = framer.feed("\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_EQ("a1", r.event.tag);
  EXPECT_TRUE(framer.releaseBuffers());
  EXPECT_FALSE(framer.holdsBuffers());
  EXPECT_EQ("", framer.currentTag());
  // Framing after a release is the same as before it.
  r = framer.feed("b2 uid fetch 1:* (FLAGS)\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_EQ("b2", r.event.tag);
  EXPECT_EQ("FETCH", r.event.name);
  EXPECT_TRUE(r.event.uid);
  EXPECT_EQ("b2 uid fetch 1:* (FLAGS)", r.event.head);
  // A partial line is never released.
  r = framer.feed("c3 NO");
  EXPECT_EQ(Type::kNeedMore, r.event.type);
  EXPECT_FALSE(framer.releaseBuffers());
  r = framer.feed("OP\r\n");
  EXPECT_EQ("c3", r.event.tag);
  EXPECT_EQ("NOOP", r.event.name);
}

TEST(CommandFramer, SetLimitsBeforeTheFirstFeedAppliesThem) {
  CommandFramer framer;
  Limits small;
  small.max_tag = 4;
  framer.setLimits(small);
  EXPECT_FALSE(framer.holdsBuffers());
  auto r = framer.feed("toolong NOOP\r\n");
  EXPECT_EQ(Type::kError, r.event.type);
}

TEST(CommandFramer, NonSyncLiteralNeverAwaitsContinuation) {
  CommandFramer framer;
  auto r = framer.feed("a APPEND x {3+}\r\n");
  EXPECT_EQ(Type::kLiteral, r.event.type);
  EXPECT_FALSE(framer.awaitingContinuation());
  EXPECT_TRUE(framer.inLiteral());
}

TEST(CommandFramer, ZeroSyncLiteralAwaitsUntilNextByte) {
  CommandFramer framer;
  auto r = framer.feed("a LOGIN {0}\r\n");
  EXPECT_EQ(Type::kLiteral, r.event.type);
  EXPECT_TRUE(framer.awaitingContinuation());
  EXPECT_FALSE(framer.inLiteral());
  r = framer.feed(" x\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_FALSE(framer.awaitingContinuation());
}

TEST(CommandFramer, IdleAndAuthenticateModes) {
  CommandFramer framer;
  framer.feed("a IDLE\r\n");
  EXPECT_TRUE(framer.idling());
  EXPECT_FALSE(framer.atCommandStart());
  framer.endIdle();  // the server refused IDLE
  EXPECT_FALSE(framer.idling());
  EXPECT_TRUE(framer.atCommandStart());
  auto r = framer.feed("b AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ("AUTHENTICATE", r.event.name);
  EXPECT_TRUE(framer.authenticating());
  r = framer.feed("c NOOP\r\n");
  EXPECT_EQ(Type::kAuthLine, r.event.type);
  EXPECT_EQ("b", r.event.tag);
  framer.endAuthentication();
  EXPECT_FALSE(framer.authenticating());
  r = framer.feed("c NOOP\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
}

TEST(CommandFramer, ReturnToCommandModeLeavesIdleAndAuthenticate) {
  CommandFramer framer;
  framer.feed("a IDLE\r\n");
  EXPECT_TRUE(framer.idling());
  framer.returnToCommandMode();
  EXPECT_FALSE(framer.idling());
  EXPECT_TRUE(framer.atCommandStart());
  framer.feed("b AUTHENTICATE PLAIN\r\n");
  EXPECT_TRUE(framer.authenticating());
  framer.returnToCommandMode();
  EXPECT_FALSE(framer.authenticating());
  EXPECT_TRUE(framer.atCommandStart());
  auto r = framer.feed("c NOOP\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_EQ("c", r.event.tag);
}

TEST(CommandFramer, ReturnToCommandModeDropsOnlyAnUninvitedLiteral) {
  CommandFramer framer;
  auto r = framer.feed("a LOGIN {5}\r\n");
  ASSERT_EQ(Type::kLiteral, r.event.type);
  framer.returnToCommandMode();  // answered `a NO ...` instead of `+`
  EXPECT_FALSE(framer.awaitingContinuation());
  EXPECT_FALSE(framer.inLiteral());
  EXPECT_TRUE(framer.atCommandStart());
  // Once the body has begun, the literal is the client's and stays one.
  r = framer.feed("b LOGIN {5}\r\n");
  ASSERT_EQ(Type::kLiteral, r.event.type);
  r = framer.feed("al");
  framer.returnToCommandMode();
  EXPECT_TRUE(framer.inLiteral());
  r = framer.feed("ice pw\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_EQ("b", r.event.tag);
  EXPECT_EQ(23u, r.event.bytes);
}

TEST(CommandFramer, ReturnToCommandModeKeepsAFatalError) {
  CommandFramer framer;
  auto r = framer.feed("a X {}\r\n");
  ASSERT_TRUE(r.event.error.fatal);
  framer.returnToCommandMode();
  EXPECT_TRUE(framer.failed());
  r = framer.feed("b NOOP\r\n");
  EXPECT_EQ(0u, r.consumed);
  EXPECT_EQ(ErrorCode::kBadLiteral, r.event.error.code);
}

TEST(CommandFramer, CurrentNameOnceTheFramerHasReadIt) {
  CommandFramer framer(limits(16));
  EXPECT_EQ("", framer.currentName());
  framer.feed("a login {5}\r\n");
  EXPECT_EQ("LOGIN", framer.currentName()) << "after a literal header";
  EXPECT_EQ("a", framer.currentTag());
  framer.feed("alice x\r\n");
  EXPECT_EQ("", framer.currentName()) << "between commands";
  EXPECT_EQ("", framer.currentTag());
  framer.feed("a NOOP");
  EXPECT_EQ("", framer.currentName()) << "the first line has not ended";
  framer.feed("\r\n");
  Limits id = limits(16);
  id.max_id_line = 100;
  framer.setLimits(id);
  framer.feed("a ID (\"name\" \"long enough\"");
  EXPECT_EQ("ID", framer.currentName()) << "an ID line past max_line";
  EXPECT_EQ("a", framer.currentTag());
}

// The limits the proxy uses before login: an 8 KiB line, but every ID within
// RFC 2971 (30 pairs of 30- and 1024-octet strings) is whole.
Limits preloginLimits() {
  Limits l;
  l.max_line = 8192;
  l.max_literal = 8192;
  l.max_id_line = idMaxLine(l.max_tag);
  return l;
}

std::string idCommand(const std::string& tag, const std::string& field, const std::string& value,
                      std::size_t pairs) {
  std::string line = tag + " ID (";
  for (std::size_t i = 0; i < pairs; ++i) {
    line += (i ? " \"" : "\"") + field + "\" \"" + value + "\"";
  }
  return line + ")\r\n";
}

TEST(CommandFramer, IdAtRfc2971LimitsFitsThePreloginAllowance) {
  const std::string tag(64, 't');
  // Every octet escaped: the longest line such an ID takes.
  const std::string longest = idCommand(tag, std::string(60, '\\'), std::string(2048, '\\'), 30);
  ASSERT_EQ(idMaxLine(64) + 2, longest.size());
  const std::string plain = idCommand("a1", std::string(30, 'k'), std::string(1024, 'v'), 30);
  // One byte more than the longest.
  std::string over =
      idCommand(std::string(63, 't') + "2", std::string(60, '\\'), std::string(2048, '\\'), 30);
  over.insert(over.size() - 4, "v");
  const std::string input = longest + plain + over + "a3 NOOP\r\n";
  std::string mismatch;
  const auto run =
      testing::runAllSplits<CommandFramer>(preloginLimits(), input, &mismatch, {}, 4096, 16);
  EXPECT_EQ("", mismatch);
  ASSERT_EQ(4u, run.events.size()) << testing::describeAll(run.events);
  EXPECT_EQ(Type::kCommand, run.events[0].type);
  EXPECT_EQ("ID", run.events[0].name);
  EXPECT_EQ(longest.size(), run.events[0].bytes);
  EXPECT_EQ(Type::kCommand, run.events[1].type);
  EXPECT_EQ(plain.size(), run.events[1].bytes);
  EXPECT_EQ(Type::kError, run.events[2].type);
  EXPECT_EQ(ErrorCode::kLineTooLong, run.events[2].code);
  EXPECT_FALSE(run.events[2].fatal);
  EXPECT_EQ(std::string(63, 't') + "2", run.events[2].tag);
  EXPECT_EQ(longest.size() + plain.size() + idMaxLine(64) + 2, run.events[2].offset);
  EXPECT_EQ("a3", run.events[3].tag);
  // Any other command keeps the 8 KiB line.
  CommandFramer framer(preloginLimits());
  auto r = framer.feed("a LOGIN " + std::string(9000, 'x') + "\r\n");
  EXPECT_EQ(ErrorCode::kLineTooLong, r.event.error.code);
  EXPECT_EQ(8194u, r.consumed);
}

TEST(CommandFramer, FatalErrorIsStickyUntilReset) {
  CommandFramer framer;
  auto r = framer.feed("a X {}\r\nb NOOP\r\n");
  EXPECT_EQ(Type::kError, r.event.type);
  EXPECT_EQ(ErrorCode::kBadLiteral, r.event.error.code);
  EXPECT_TRUE(r.event.error.fatal);
  EXPECT_EQ(8u, r.consumed);
  EXPECT_TRUE(framer.failed());
  r = framer.feed("b NOOP\r\n");
  EXPECT_EQ(0u, r.consumed);
  EXPECT_EQ(ErrorCode::kBadLiteral, r.event.error.code);
  framer.reset();
  EXPECT_FALSE(framer.failed());
  r = framer.feed("b NOOP\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
  EXPECT_EQ("b", r.event.tag);
}

TEST(CommandFramer, SetLimitsBetweenCommands) {
  Limits pre;
  pre.max_line = 16;
  CommandFramer framer(pre);
  auto r = framer.feed("a LOGIN fred secret12345\r\n");
  EXPECT_EQ(ErrorCode::kLineTooLong, r.event.error.code);
  framer.feed(std::string_view("a LOGIN fred secret12345\r\n").substr(r.consumed));
  framer.setLimits(Limits{});
  r = framer.feed("a LOGIN fred secret12345\r\n");
  EXPECT_EQ(Type::kCommand, r.event.type);
}

TEST(CommandFramer, ViewsPointIntoTheFramer) {
  CommandFramer framer;
  std::string input = "tag1 noop\r\n";
  auto r = framer.feed(input);
  input.assign(input.size(), 'x');  // the caller reuses its buffer
  EXPECT_EQ("tag1", r.event.tag);
  EXPECT_EQ("NOOP", r.event.name);
  EXPECT_EQ("tag1 noop", r.event.head);
}

TEST(CommandFramer, EightMebibyteLineIsSkippedAndNextCommandParses) {
  const std::string line = "a1 APPEND x " + std::string(8 * 1024 * 1024, 'x') + "\r\n";
  const std::string input = line + "b2 NOOP\r\n";
  Limits limits;  // max_line 64 KiB
  std::string mismatch;
  const auto run = testing::runAllSplits<CommandFramer>(limits, input, &mismatch, {}, 4096, 48);
  EXPECT_EQ("", mismatch);
  ASSERT_EQ(2u, run.events.size()) << testing::describeAll(run.events);
  EXPECT_EQ(Type::kError, run.events[0].type);
  EXPECT_EQ(ErrorCode::kLineTooLong, run.events[0].code);
  EXPECT_FALSE(run.events[0].fatal);
  EXPECT_EQ(limits.max_line + 2, run.events[0].offset);
  EXPECT_EQ("a1", run.events[0].tag);
  EXPECT_EQ("APPEND", run.events[0].name);
  EXPECT_EQ(1024u, run.events[0].head.size());
  EXPECT_TRUE(run.events[0].head_truncated);
  EXPECT_EQ(Type::kCommand, run.events[1].type);
  EXPECT_EQ("b2", run.events[1].tag);
  EXPECT_EQ("NOOP", run.events[1].name);
  EXPECT_EQ(input.size(), run.events[1].offset);
  EXPECT_EQ(9u, run.events[1].bytes);
}

TEST(CommandFramer, LongLineWithinLimitSplitManyWays) {
  // A 100 KiB line under a raised limit, quotes and a literal at its end.
  std::string line = "a1 SEARCH";
  for (int i = 0; i < 5000; ++i) {
    line += " \"q\\\"{" + std::to_string(i) + "}\" OR";
  }
  line += " {3}\r\n";
  const std::string input = line + "xyz\r\n";
  Limits limits;
  limits.max_line = 1024 * 1024;
  std::string mismatch;
  const auto run = testing::runAllSplits<CommandFramer>(limits, input, &mismatch, {}, 4096, 48);
  EXPECT_EQ("", mismatch);
  ASSERT_EQ(2u, run.events.size()) << testing::describeAll(run.events);
  EXPECT_EQ(Type::kLiteral, run.events[0].type);
  EXPECT_EQ(3u, run.events[0].literal_size);
  EXPECT_EQ(Type::kCommand, run.events[1].type);
  EXPECT_EQ(input.size(), run.events[1].bytes);
}

TEST(CommandFramer, NamesArePrintable) {
  EXPECT_STREQ("literal", commandEventTypeName(Type::kLiteral));
  EXPECT_STREQ("number_too_long", errorCodeName(ErrorCode::kNumberTooLong));
  EXPECT_STREQ("unknown_command", errorCodeName(ErrorCode::kUnknownCommand));
  EXPECT_STREQ("unknown", errorCodeName(ErrorCode::kCount));
}

}  // namespace
}  // namespace portico::parser
