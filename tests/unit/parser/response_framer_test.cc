// ResponseFramer: table of server streams and expected events. Every case
// runs whole, byte by byte and split at every offset (split_harness.h).
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

using testing::OwnedResponseEvent;
using Type = ResponseEventType;

struct Expect {
  Type type = Type::kUntagged;
  std::uint64_t offset = 0;
  std::optional<std::string> tag;
  std::optional<Status> status;
  std::optional<std::string> code;
  std::optional<std::string> text;
  std::optional<std::string> head;
  std::optional<bool> truncated;
  std::optional<std::uint64_t> bytes;
  std::optional<std::uint32_t> literals;
  std::optional<ErrorCode> error;
  std::optional<bool> fatal;
};

struct Case {
  std::string name;
  std::string input;
  std::vector<Expect> events;
  Limits limits = {};
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

Limits limits(std::size_t max_line, std::uint64_t max_literal = UINT64_MAX,
              std::size_t max_head = 1024) {
  Limits l;
  l.max_line = max_line;
  l.max_literal = max_literal;
  l.max_head = max_head;
  return l;
}

Expect error(std::uint64_t offset, ErrorCode code, bool fatal) {
  return Expect{.type = Type::kError, .offset = offset, .error = code, .fatal = fatal};
}

const std::string kRfcHeader =  // RFC 3501 6.4.5, 342 bytes
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    "From: Terry Gray <gray@cac.washington.edu>\r\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    "To: imap@cac.washington.edu\r\n"
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    "\r\n";

std::vector<Case> cases() {
  std::vector<Case> c;
  // RFC 9051 / RFC 3501 examples.
  c.push_back({"RfcUidValidity",
               "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n",
               {{.offset = 42,
                 .tag = "",
                 .status = Status::kOk,
                 .code = "UIDVALIDITY 3857529045",
                 .text = "UIDs valid",
                 .head = "* OK [UIDVALIDITY 3857529045] UIDs valid",
                 .truncated = false,
                 .bytes = 42,
                 .literals = 0}}});
  c.push_back({"RfcTaggedReadWrite",
               "A142 OK [READ-WRITE] SELECT completed\r\n",
               {{.type = Type::kTagged,
                 .offset = 39,
                 .tag = "A142",
                 .status = Status::kOk,
                 .code = "READ-WRITE",
                 .text = "SELECT completed",
                 .bytes = 39}}});
  c.push_back({"RfcContinuation",
               "+ Ready for additional command text\r\n",
               {{.type = Type::kContinuation,
                 .offset = 37,
                 .status = Status::kNone,
                 .code = "",
                 .text = "Ready for additional command text"}}});
  c.push_back({"RfcBye",
               "* BYE IMAP4rev2 Server logging out\r\n",
               {{.offset = 36, .status = Status::kBye, .text = "IMAP4rev2 Server logging out"}}});
  c.push_back({"RfcPreauth",
               "* PREAUTH IMAP4rev2 server logged in as Smith\r\n",
               {{.offset = 47,
                 .status = Status::kPreauth,
                 .text = "IMAP4rev2 server logged in as Smith"}}});
  c.push_back({"RfcExists",
               "* 172 EXISTS\r\n* 1 RECENT\r\n",
               {{.offset = 14, .status = Status::kNone, .code = "", .text = "172 EXISTS"},
                {.offset = 26, .text = "1 RECENT"}}});
  {
    const std::string first = "* 12 FETCH (BODY[HEADER] {342}\r\n";
    const std::string all = first + kRfcHeader + ")\r\n";
    c.push_back({"RfcFetchLiteral",
                 all + "a004 OK FETCH completed\r\n",
                 {{.offset = all.size(),
                   .status = Status::kNone,
                   .text = "12 FETCH (BODY[HEADER] {342}",
                   .head = "* 12 FETCH (BODY[HEADER] {342}",
                   .bytes = all.size(),
                   .literals = 1},
                  {.type = Type::kTagged,
                   .offset = all.size() + 25,
                   .tag = "a004",
                   .status = Status::kOk,
                   .text = "FETCH completed",
                   .bytes = 25}}});
  }
  c.push_back({"RfcIdleExchange",
               "+ idling\r\n* 4 EXISTS\r\nA002 OK IDLE terminated\r\n",
               {{.type = Type::kContinuation, .offset = 10, .text = "idling"},
                {.offset = 22, .text = "4 EXISTS"},
                {.type = Type::kTagged, .offset = 47, .tag = "A002", .status = Status::kOk}}});

  // Status responses, codes and texts.
  c.push_back({"CapabilityData",
               "* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\n",
               {{.offset = 38,
                 .status = Status::kNone,
                 .code = "",
                 .text = "CAPABILITY IMAP4rev1 IDLE LITERAL+"}}});
  c.push_back({"CapabilityCode",
               "* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] Portico ready\r\n",
               {{.offset = 59,
                 .status = Status::kOk,
                 .code = "CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN",
                 .text = "Portico ready"}}});
  c.push_back({"TaggedNoUnavailable",
               "a1 NO [UNAVAILABLE] Backend down\r\n",
               {{.type = Type::kTagged,
                 .offset = 34,
                 .tag = "a1",
                 .status = Status::kNo,
                 .code = "UNAVAILABLE",
                 .text = "Backend down"}}});
  c.push_back({"TaggedBadLowerCase",
               "a1 bad oops\n",
               {{.type = Type::kTagged,
                 .offset = 12,
                 .tag = "a1",
                 .status = Status::kBad,
                 .text = "oops"}}});
  c.push_back({"StatusWithoutText",
               "* OK\r\na OK\r\n",
               {{.offset = 6, .status = Status::kOk, .code = "", .text = ""},
                {.type = Type::kTagged, .offset = 12, .tag = "a", .text = ""}}});
  c.push_back({"CodeWithoutText",
               "* NO [ALERT]\r\n",
               {{.offset = 14, .status = Status::kNo, .code = "ALERT", .text = ""}}});
  c.push_back({"NestedAndQuotedBrackets",
               "* NO [BADCHARSET (\"a]b\" [x])] No such charset\r\n",
               {{.offset = 47, .code = "BADCHARSET (\"a]b\" [x])", .text = "No such charset"}}});
  c.push_back(
      {"UnclosedCode", "* OK [ALERT oops\r\n", {{.offset = 18, .code = "ALERT oops", .text = ""}}});
  c.push_back({"OkayIsNotOk", "* OKAY 1\r\n", {{.offset = 10, .status = Status::kNone}}});
  c.push_back({"BareContinuation",
               "+\r\n+ \r\n",
               {{.type = Type::kContinuation, .offset = 3, .text = ""},
                {.type = Type::kContinuation, .offset = 7, .text = ""}}});
  c.push_back({"ContinuationBase64",
               "+ YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzg==\r\n",
               {{.type = Type::kContinuation,
                 .offset = 48,
                 .code = "",
                 .text = "YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzg=="}}});

  // Literals inside responses.
  c.push_back({"TwoLiterals",
               "* 1 FETCH (BODY[1] {3}\r\nabc BODY[2] {7}\r\n{9}\r\n\r\n)\r\n",
               {{.offset = 51, .bytes = 51, .literals = 2}}});
  c.push_back({"BinaryLiteral",
               std::string("* 1 FETCH (BINARY[] ~{4}\r\na\0\r\n)\r\n", 33),
               {{.offset = 33, .literals = 1}}});
  c.push_back({"ZeroLiteral", "* 1 FETCH (BODY[] {0}\r\n)\r\n", {{.offset = 26, .literals = 1}}});
  c.push_back({"NonSyncTakenAsLiteral",
               "* 1 FETCH (BODY[] {2+}\r\nab)\r\n",
               {{.offset = 29, .literals = 1}}});
  c.push_back({"LiteralInsideQuote",
               "* LIST () \"/\" \"foo {5}\r\n* 1 EXISTS\r\n",
               {{.offset = 24, .literals = 0}, {.offset = 36}}});
  c.push_back({"QuotedThenLiteral",
               "* LIST () \"/\" {3}\r\nfoo\r\n",
               {{.offset = 24, .head = "* LIST () \"/\" {3}", .literals = 1}}});
  c.push_back({"NoLiteralInStatus",
               "* OK text {5}\r\na1 OK done {3}\r\n+ {2}\r\n",
               {{.offset = 15, .status = Status::kOk, .literals = 0},
                {.type = Type::kTagged, .offset = 31, .literals = 0},
                {.type = Type::kContinuation, .offset = 38, .literals = 0}}});

  // Malformed responses.
  c.push_back({"BadLines",
               "garbage\r\n*X\r\n*\r\n\r\na1 FOO bar\r\na%1 OK x\r\n* OK fine\r\n",
               {error(9, ErrorCode::kBadResponse, false),
                error(13, ErrorCode::kBadResponse, false),
                error(16, ErrorCode::kBadResponse, false),
                error(18, ErrorCode::kBadResponse, false),
                error(30, ErrorCode::kBadResponse, false),
                error(40, ErrorCode::kBadResponse, false),
                {.offset = 51, .status = Status::kOk, .text = "fine"}}});
  c.push_back(
      {"BareCr", "* OK a\rb\r\n* OK\r\n", {error(10, ErrorCode::kBareCR, false), {.offset = 16}}});
  c.push_back({"BareCrOnLiteralLineIsFatal",
               "* 1 FETCH (X\r {1}\r\nz)\r\n",
               {error(19, ErrorCode::kBareCR, true)}});
  c.push_back(
      {"BadLiteral", "* 1 FETCH (BODY[] {x1}\r\n", {error(24, ErrorCode::kBadLiteral, true)}});
  c.push_back({"TwentyFiveDigits",
               "* 1 FETCH (BODY[] {1234567890123456789012345}\r\n",
               {error(47, ErrorCode::kNumberTooLong, true)}});
  c.push_back({"Overflow",
               "* 1 FETCH (BODY[] {99999999999999999999}\r\n",
               {error(42, ErrorCode::kNumberTooLong, true)}});
  c.push_back({"LiteralTooLarge",
               "* 1 FETCH (BODY[] {101}\r\n",
               {error(25, ErrorCode::kLiteralTooLarge, true)},
               limits(64 * 1024, 100)});
  c.push_back({"TagTooLong",
               std::string(65, 't') + " OK x\r\n",
               {error(72, ErrorCode::kBadResponse, false)}});
  c.push_back({"LineTooLong",
               "* SEARCH 1 2 3 4 5 6 7 8 9\r\n* OK\r\n",
               {Expect{.type = Type::kError,
                       .offset = 18,
                       .head = "* SEARCH 1 2 3 4 5",
                       .truncated = true,
                       .bytes = 18,
                       .error = ErrorCode::kLineTooLong,
                       .fatal = false},
                {.offset = 34, .status = Status::kOk}},
               limits(16)});
  c.push_back({"ContinuationLineTooLong",
               "* 1 FETCH (A {1}\r\nx 0123456789abcdefgh)\r\n* OK\r\n",
               {error(37, ErrorCode::kLineTooLong, false), {.offset = 47}},
               limits(16)});

  // Head limits: code and text are cut with the head.
  c.push_back({"HeadTruncated",
               "A1 OK [READ-WRITE] SELECT completed\r\n",
               {{.type = Type::kTagged,
                 .offset = 37,
                 .tag = "A1",
                 .code = "READ-W",
                 .text = "",
                 .head = "A1 OK [READ-W",
                 .truncated = true}},
               limits(64 * 1024, UINT64_MAX, 13)});
  c.push_back({"NoHead",
               "A1 OK [READ-WRITE] SELECT completed\r\n",
               {{.type = Type::kTagged,
                 .offset = 37,
                 .tag = "A1",
                 .status = Status::kOk,
                 .code = "",
                 .text = "",
                 .head = "",
                 .truncated = true}},
               limits(64 * 1024, UINT64_MAX, 0)});
  return c;
}

template <typename T, typename U>
void expectIfSet(const std::optional<T>& want, const U& got, const char* what) {
  if (want) {
    EXPECT_EQ(*want, got) << what;
  }
}

void expectEvent(const Expect& want, const OwnedResponseEvent& got) {
  EXPECT_STREQ(responseEventTypeName(want.type), responseEventTypeName(got.type));
  EXPECT_EQ(want.offset, got.offset);
  expectIfSet(want.tag, got.tag, "tag");
  if (want.status) {
    EXPECT_STREQ(statusName(*want.status), statusName(got.status));
  }
  expectIfSet(want.code, got.code_text, "code");
  expectIfSet(want.text, got.text, "text");
  expectIfSet(want.head, got.head, "head");
  expectIfSet(want.truncated, got.head_truncated, "head truncated");
  expectIfSet(want.bytes, got.bytes, "bytes");
  expectIfSet(want.literals, got.literals, "literals");
  if (want.error) {
    EXPECT_STREQ(errorCodeName(*want.error), errorCodeName(got.code));
  }
  expectIfSet(want.fatal, got.fatal, "fatal");
}

class ResponseFramerTable : public ::testing::TestWithParam<Case> {};

TEST_P(ResponseFramerTable, SameEventsWholeAndSplit) {
  const Case& c = GetParam();
  std::string mismatch;
  const auto run = testing::runAllSplits<ResponseFramer>(c.limits, c.input, &mismatch);
  EXPECT_EQ("", mismatch);
  ASSERT_EQ(c.events.size(), run.events.size()) << testing::describeAll(run.events);
  for (std::size_t i = 0; i < c.events.size(); ++i) {
    SCOPED_TRACE("event " + std::to_string(i) + ": " + testing::describe(run.events[i]));
    expectEvent(c.events[i], run.events[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ResponseFramerTable, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(ResponseFramer, RfcHeaderIs342Bytes) {
  EXPECT_EQ(342u, kRfcHeader.size());
}

TEST(ResponseFramer, AtResponseStart) {
  ResponseFramer framer;
  EXPECT_TRUE(framer.atResponseStart());
  auto r = framer.feed("* 1 FETCH (BODY[] {3}\r\nab");
  EXPECT_EQ(Type::kNeedMore, r.event.type);
  EXPECT_FALSE(framer.atResponseStart());
  r = framer.feed("c)\r\n");
  EXPECT_EQ(Type::kUntagged, r.event.type);
  EXPECT_EQ(1u, r.event.literals);
  EXPECT_TRUE(framer.atResponseStart());
}

TEST(ResponseFramer, HeadBufferExistsFromTheFirstFeedUntilReleasedBetweenResponses) {
  ResponseFramer framer;
  EXPECT_FALSE(framer.holdsBuffers());
  auto r = framer.feed("* 1 FETCH (BODY[] {3}\r\nab");
  EXPECT_TRUE(framer.holdsBuffers());
  EXPECT_FALSE(framer.releaseBuffers());  // mid-response: kept
  r = framer.feed("c)\r\n");
  EXPECT_EQ(Type::kUntagged, r.event.type);
  EXPECT_TRUE(framer.releaseBuffers());
  EXPECT_FALSE(framer.holdsBuffers());
  r = framer.feed("a1 NO [UNAVAILABLE] try later\r\n");
  EXPECT_EQ(Type::kTagged, r.event.type);
  EXPECT_EQ("a1", r.event.tag);
  EXPECT_EQ(Status::kNo, r.event.status);
  EXPECT_EQ("UNAVAILABLE", r.event.code);
  EXPECT_EQ("try later", r.event.text);
}

TEST(ResponseFramer, FatalErrorIsStickyUntilReset) {
  ResponseFramer framer;
  auto r = framer.feed("* 1 FETCH (BODY[] {}\r\n* OK\r\n");
  EXPECT_EQ(ErrorCode::kBadLiteral, r.event.error.code);
  EXPECT_TRUE(framer.failed());
  r = framer.feed("* OK\r\n");
  EXPECT_EQ(0u, r.consumed);
  EXPECT_EQ(Type::kError, r.event.type);
  framer.reset();
  r = framer.feed("* OK\r\n");
  EXPECT_EQ(Type::kUntagged, r.event.type);
  EXPECT_EQ(Status::kOk, r.event.status);
}

TEST(ResponseFramer, HugeLiteralSkippedByCount) {
  // 64 MiB of body announced, fed in 1 MiB chunks that are never read.
  const std::uint64_t size = 64ull << 20;
  ResponseFramer framer;
  auto r = framer.feed("* 1 FETCH (BODY[] {67108864}\r\n");
  EXPECT_EQ(Type::kNeedMore, r.event.type);
  const std::string chunk(1 << 20, '\n');
  for (std::uint64_t left = size; left > 0; left -= chunk.size()) {
    r = framer.feed(chunk);
    ASSERT_EQ(chunk.size(), r.consumed);
    ASSERT_EQ(Type::kNeedMore, r.event.type);
  }
  r = framer.feed(")\r\n");
  EXPECT_EQ(Type::kUntagged, r.event.type);
  EXPECT_EQ(size + 30 + 3, r.event.bytes);
}

TEST(ResponseFramer, NamesArePrintable) {
  EXPECT_STREQ("continuation", responseEventTypeName(Type::kContinuation));
  EXPECT_STREQ("PREAUTH", statusName(Status::kPreauth));
  EXPECT_STREQ("bad_response", errorCodeName(ErrorCode::kBadResponse));
}

}  // namespace
}  // namespace portico::parser
