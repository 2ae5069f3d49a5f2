// Pre-login command parser: every construct of the argument grammar, the
// RFC examples, each verb's shape, the limits, and every error path with its
// code and message. Inputs are copied into a buffer of their exact size so a
// read past the end shows up under AddressSanitizer.

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "portico/parser.h"

namespace portico::parser {
namespace {

using namespace std::string_literals;

PreloginResult parseExact(const std::string& input, const Limits& limits = {}) {
  std::unique_ptr<char[]> buffer(new char[input.size()]);
  std::memcpy(buffer.get(), input.data(), input.size());
  return parsePrelogin(std::string_view(buffer.get(), input.size()), limits);
}

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// --- Commands without arguments ---------------------------------------------

struct SimpleCase {
  std::string input;
  std::string tag;
  Verb verb;
  std::string name;
};

class PreloginSimpleTest : public ::testing::TestWithParam<SimpleCase> {};

TEST_P(PreloginSimpleTest, Parses) {
  const SimpleCase& c = GetParam();
  SCOPED_TRACE(printable(c.input));
  const PreloginResult r = parseExact(c.input);
  ASSERT_TRUE(r.ok) << r.error.message;
  EXPECT_EQ(r.error.code, ErrorCode::kNone);
  EXPECT_EQ(r.command.tag, c.tag);
  EXPECT_EQ(r.command.verb, c.verb);
  EXPECT_EQ(r.command.name, c.name);
  EXPECT_TRUE(r.command.user.empty());
  EXPECT_TRUE(r.command.password.empty());
  EXPECT_TRUE(r.command.mechanism.empty());
  EXPECT_FALSE(r.command.initial_response.has_value());
}

INSTANTIATE_TEST_SUITE_P(
    Table, PreloginSimpleTest,
    ::testing::Values(SimpleCase{"a1 CAPABILITY\r\n", "a1", Verb::kCapability, "CAPABILITY"},
                      SimpleCase{"a2 capability\r\n", "a2", Verb::kCapability, "CAPABILITY"},
                      SimpleCase{"A3 NoOp\r\n", "A3", Verb::kNoop, "NOOP"},
                      SimpleCase{"x.1 LOGOUT\r\n", "x.1", Verb::kLogout, "LOGOUT"},
                      SimpleCase{"t STARTTLS\r\n", "t", Verb::kStarttls, "STARTTLS"},
                      // A bare LF and a missing line end are accepted too.
                      SimpleCase{"a NOOP\n", "a", Verb::kNoop, "NOOP"},
                      SimpleCase{"a NOOP", "a", Verb::kNoop, "NOOP"},
                      // Tags may hold any ATOM-CHAR except '+'.
                      SimpleCase{"!#$&'-./:;<=>?@[^_`|~ NOOP\r\n", "!#$&'-./:;<=>?@[^_`|~",
                                 Verb::kNoop, "NOOP"}));

// --- LOGIN ------------------------------------------------------------------

struct LoginCase {
  std::string input;
  std::string user;
  std::string password;
};

class PreloginLoginTest : public ::testing::TestWithParam<LoginCase> {};

TEST_P(PreloginLoginTest, Parses) {
  const LoginCase& c = GetParam();
  SCOPED_TRACE(printable(c.input));
  const PreloginResult r = parseExact(c.input);
  ASSERT_TRUE(r.ok) << r.error.message;
  EXPECT_EQ(r.command.verb, Verb::kLogin);
  EXPECT_EQ(r.command.name, "LOGIN");
  EXPECT_EQ(r.command.user, c.user);
  EXPECT_EQ(r.command.password, c.password);
}

INSTANTIATE_TEST_SUITE_P(
    Table, PreloginLoginTest,
    ::testing::Values(
        // RFC 3501 section 6.2.3.
        LoginCase{"a001 login SMITH SESAME\r\n", "SMITH", "SESAME"},
        LoginCase{"a LOGIN {4}\r\nuser {8}\r\npassword\r\n", "user", "password"},
        LoginCase{"a LOGIN {4+}\r\nuser {8+}\r\npassword\r\n", "user", "password"},
        LoginCase{"a LOGIN {4}\nuser {8}\npassword\n", "user", "password"},
        // Literal bodies are taken by count: CRLF, quotes and 8-bit bytes
        // inside them are data.
        LoginCase{"a LOGIN {9}\r\nu\r\n\"(){}\xff {0}\r\n\r\n", "u\r\n\"(){}\xff", ""},
        LoginCase{"a LOGIN \"fred \\\"the\\\" user\" \"p\\\\w d\"\r\n", "fred \"the\" user",
                  "p\\w d"},
        LoginCase{"a LOGIN \"\" \"\"\r\n", "", ""},
        LoginCase{"a LOGIN user@example.com \"p a s s\"\r\n", "user@example.com", "p a s s"},
        // astring allows ']' (resp-specials); NIL is an ordinary atom here.
        LoginCase{"a LOGIN us]er NIL\r\n", "us]er", "NIL"},
        LoginCase{"a LOGIN {4}\r\nuser \"pw\"\r\n", "user", "pw"},
        LoginCase{"a LOGIN \"user\" {2}\r\npw", "user", "pw"},
        LoginCase{"a LOGIN {004}\r\nuser pw\r\n", "user", "pw"},
        // RFC 9051 QUOTED-CHAR includes UTF8-2, UTF8-3 and UTF8-4.
        LoginCase{"a LOGIN \"j\xc3\xb6rg\" \"p\xc3\xa4ssword\"\r\n", "j\xc3\xb6rg",
                  "p\xc3\xa4ssword"},
        LoginCase{"a LOGIN \"\xe6\x9d\xb1\\\"\" \"\xf0\x9f\x94\x91\"\r\n", "\xe6\x9d\xb1\"",
                  "\xf0\x9f\x94\x91"},
        // The ends of each range: U+0080, U+07FF, U+0800, U+D7FF, U+E000,
        // U+FFFF, U+10000, U+10FFFF.
        LoginCase{"a LOGIN \"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\" "
                  "\"\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"\r\n",
                  "\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf",
                  "\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"}));

// --- AUTHENTICATE -----------------------------------------------------------

struct AuthCase {
  std::string input;
  std::string mechanism;
  std::optional<std::string> initial_response;
};

class PreloginAuthenticateTest : public ::testing::TestWithParam<AuthCase> {};

TEST_P(PreloginAuthenticateTest, Parses) {
  const AuthCase& c = GetParam();
  SCOPED_TRACE(printable(c.input));
  const PreloginResult r = parseExact(c.input);
  ASSERT_TRUE(r.ok) << r.error.message;
  EXPECT_EQ(r.command.verb, Verb::kAuthenticate);
  EXPECT_EQ(r.command.name, "AUTHENTICATE");
  EXPECT_EQ(r.command.mechanism, c.mechanism);
  EXPECT_EQ(r.command.initial_response, c.initial_response);
}

INSTANTIATE_TEST_SUITE_P(Table, PreloginAuthenticateTest,
                         ::testing::Values(
                             // RFC 3501 section 6.2.2.
                             AuthCase{"A001 AUTHENTICATE GSSAPI\r\n", "GSSAPI", std::nullopt},
                             // RFC 4959 section 3.
                             AuthCase{"a01 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q=\r\n", "PLAIN",
                                      "dGVzdAB0ZXN0AHRlc3Q="},
                             AuthCase{"a02 AUTHENTICATE PLAIN =\r\n", "PLAIN", ""},
                             AuthCase{"a authenticate xoauth2 dXNlcj11AWF1dGg9QmVhcmVyIHQBAQ==\r\n",
                                      "XOAUTH2", "dXNlcj11AWF1dGg9QmVhcmVyIHQBAQ=="},
                             AuthCase{"a AUTHENTICATE SCRAM-SHA-256\r\n", "SCRAM-SHA-256",
                                      std::nullopt},
                             AuthCase{"a AUTHENTICATE PLAIN ab+/\r\n", "PLAIN", "ab+/"}));

// --- ID (RFC 2971) ----------------------------------------------------------

using Fields = std::vector<std::pair<std::string, std::optional<std::string>>>;

struct IdCase {
  std::string input;
  std::optional<Fields> fields;
};

class PreloginIdTest : public ::testing::TestWithParam<IdCase> {};

TEST_P(PreloginIdTest, Parses) {
  const IdCase& c = GetParam();
  SCOPED_TRACE(printable(c.input));
  const PreloginResult r = parseExact(c.input);
  ASSERT_TRUE(r.ok) << r.error.message;
  EXPECT_EQ(r.command.verb, Verb::kId);
  ASSERT_EQ(r.command.id.has_value(), c.fields.has_value());
  if (!c.fields) {
    return;
  }
  ASSERT_EQ(r.command.id->size(), c.fields->size());
  for (std::size_t i = 0; i < c.fields->size(); ++i) {
    EXPECT_EQ((*r.command.id)[i].key, (*c.fields)[i].first);
    EXPECT_EQ((*r.command.id)[i].value, (*c.fields)[i].second);
  }
}

std::string manyIdPairs(int pairs) {
  std::string s = "a ID (";
  for (int i = 0; i < pairs; ++i) {
    s += (i ? " \"k" : "\"k") + std::to_string(i) + "\" \"v\"";
  }
  return s + ")\r\n";
}

Fields manyIdFields(int pairs) {
  Fields f;
  for (int i = 0; i < pairs; ++i) {
    f.emplace_back("k" + std::to_string(i), "v");
  }
  return f;
}

INSTANTIATE_TEST_SUITE_P(
    Table, PreloginIdTest,
    ::testing::Values(
        // RFC 2971 section 3.
        IdCase{
            "a023 ID (\"name\" \"sodr\" \"version\" \"19.34\" \"vendor\" \"Pink Floyd Music "
            "Limited\")\r\n",
            Fields{{"name", "sodr"}, {"version", "19.34"}, {"vendor", "Pink Floyd Music Limited"}}},
        IdCase{"a042 ID NIL\r\n", std::nullopt}, IdCase{"a ID nil\r\n", std::nullopt},
        IdCase{"a ID ()\r\n", Fields{}},
        IdCase{"a ID (\"os\" NIL \"x\" {3}\r\nabc)\r\n",
               Fields{{"os", std::nullopt}, {"x", "abc"}}},
        IdCase{"a ID ({4}\r\nname \"v\")\r\n", Fields{{"name", "v"}}},
        IdCase{"a ID (\"" + std::string(30, 'k') + "\" \"" + std::string(1024, 'v') + "\")\r\n",
               Fields{{std::string(30, 'k'), std::string(1024, 'v')}}},
        IdCase{manyIdPairs(30), manyIdFields(30)}));

// --- Errors -----------------------------------------------------------------

struct ErrorCase {
  std::string input;
  ErrorCode code;
  std::string message;
  std::string tag = "a";  // "" when the tag cannot be read
  Limits limits = {};
};

class PreloginErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(PreloginErrorTest, Fails) {
  const ErrorCase& c = GetParam();
  SCOPED_TRACE(printable(c.input));
  const PreloginResult r = parseExact(c.input, c.limits);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error.code, c.code) << errorCodeName(r.error.code);
  EXPECT_STREQ(r.error.message, c.message.c_str());
  EXPECT_FALSE(r.error.fatal);
  EXPECT_EQ(r.command.tag, c.tag);
  EXPECT_TRUE(r.command.user.empty());
  EXPECT_TRUE(r.command.password.empty());
}

Limits withLiteral(std::uint64_t max) {
  Limits l;
  l.max_literal = max;
  return l;
}

Limits withLine(std::size_t max) {
  Limits l;
  l.max_line = max;
  return l;
}

Limits withDepth(std::size_t max) {
  Limits l;
  l.max_list_depth = max;
  return l;
}

const ErrorCode kSyntax = ErrorCode::kBadSyntax;

INSTANTIATE_TEST_SUITE_P(
    Framing, PreloginErrorTest,
    ::testing::Values(
        ErrorCase{"", ErrorCode::kEmptyLine, "Empty command line", ""},
        ErrorCase{"\r\n", ErrorCode::kEmptyLine, "Empty command line", ""},
        ErrorCase{" NOOP\r\n", ErrorCode::kBadTag, "Missing tag", ""},
        ErrorCase{"a+b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a]b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a*b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a%b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a{b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a(b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a\"b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a\\b NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"a\x01 NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"\xc3\xa9 NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{"+ NOOP\r\n", ErrorCode::kBadTag, "Invalid characters in tag", ""},
        ErrorCase{std::string(65, 't') + " NOOP\r\n", ErrorCode::kTagTooLong, "Tag too long", ""},
        ErrorCase{"a\r\n", ErrorCode::kMissingCommand, "Missing command"},
        ErrorCase{"a \r\n", ErrorCode::kMissingCommand, "Missing command"},
        ErrorCase{"a  NOOP\r\n", ErrorCode::kMissingCommand, "Missing command"},
        ErrorCase{"a NO*OP\r\n", ErrorCode::kBadCommand, "Invalid characters in command name"},
        ErrorCase{"a NOOP]\r\n", ErrorCode::kBadCommand, "Invalid characters in command name"},
        ErrorCase{"a " + std::string(65, 'X') + "\r\n", ErrorCode::kBadCommand,
                  "Command name too long"},
        ErrorCase{"a NOOP\r", ErrorCode::kBareCR, "CR not followed by LF"},
        ErrorCase{"a NOOP\rx\n", ErrorCode::kBareCR, "CR not followed by LF"},
        ErrorCase{"a NOOP\r\nb NOOP\r\n", kSyntax, "Data after end of command"},
        ErrorCase{"a NOOP\r\n\r\n", kSyntax, "Data after end of command"},
        ErrorCase{"a LOGIN user password\r\n", ErrorCode::kLineTooLong, "Command line too long",
                  "a", withLine(20)}));

INSTANTIATE_TEST_SUITE_P(
    Unknown, PreloginErrorTest,
    ::testing::Values(ErrorCase{"a SELECT INBOX\r\n", ErrorCode::kUnknownCommand,
                                "Command not allowed before login"},
                      ErrorCase{"a UID FETCH 1 (FLAGS)\r\n", ErrorCode::kUnknownCommand,
                                "Command not allowed before login"},
                      ErrorCase{"a XYZZY\r\n", ErrorCode::kUnknownCommand,
                                "Command not allowed before login"},
                      // Arguments of unknown commands are not read, even broken ones.
                      ErrorCase{"a APPEND {99}\r\n", ErrorCode::kUnknownCommand,
                                "Command not allowed before login"}));

INSTANTIATE_TEST_SUITE_P(
    Arguments, PreloginErrorTest,
    ::testing::Values(
        ErrorCase{"a NOOP extra\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a CAPABILITY (x)\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a LOGOUT NIL\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a STARTTLS \"x\"\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a NOOP \r\n", kSyntax, "Unexpected space at end of line"},
        ErrorCase{"a LOGIN\r\n", kSyntax, "Missing user name"},
        ErrorCase{"a LOGIN user\r\n", kSyntax, "Missing password"},
        ErrorCase{"a LOGIN user pass extra\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a LOGIN (user) pass\r\n", kSyntax, "User name must be a string"},
        ErrorCase{"a LOGIN user (pass)\r\n", kSyntax, "Password must be a string"},
        ErrorCase{"a LOGIN user  pass\r\n", kSyntax, "Unexpected space"},
        ErrorCase{"a LOGIN \"user\"pass\r\n", kSyntax, "Missing space between arguments"},
        ErrorCase{"a LOGIN us%er pass\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN us*er pass\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN user pa\\ss\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN user pa\x80ss\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN user pa\x7fss\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN user pa\"ss\"\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN user pa{3}\r\nabc\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN \"user pass\r\n", kSyntax, "Unterminated quoted string"},
        ErrorCase{"a LOGIN \"user pass", kSyntax, "Unterminated quoted string"},
        ErrorCase{"a LOGIN user \"pass\\", kSyntax, "Unterminated quoted string"},
        ErrorCase{"a LOGIN user \"pa\\ss\"\r\n", kSyntax, "Invalid escape in quoted string"},
        ErrorCase{"a LOGIN user \"pa\\\r\n", kSyntax, "Invalid escape in quoted string"},
        ErrorCase{"a LOGIN user \"pa\x01ss\"\r\n", kSyntax, "Invalid characters in quoted string"},
        ErrorCase{"a LOGIN user \"pa\tss\"\r\n", kSyntax, "Invalid characters in quoted string"},

        ErrorCase{"a LOGIN \"us\0er\" pass\r\n"s, kSyntax, "Invalid characters in quoted string"},
        ErrorCase{"a LOGIN user pass)\r\n", kSyntax, "Unexpected ')'"},
        ErrorCase{"a LOGIN user pass(\r\n", kSyntax, "Invalid characters in atom"}));

// Malformed UTF-8 in a quoted string (RFC 3629 section 4).
const char kBadUtf8[] = "Invalid UTF-8 in quoted string";

INSTANTIATE_TEST_SUITE_P(
    Utf8, PreloginErrorTest,
    ::testing::Values(
        ErrorCase{"a LOGIN user \"p\x80\"\r\n", kSyntax, kBadUtf8},             // lone continuation
        ErrorCase{"a LOGIN user \"p\xbf\"\r\n", kSyntax, kBadUtf8},             // lone continuation
        ErrorCase{"a LOGIN user \"p\xc3\"\r\n", kSyntax, kBadUtf8},             // truncated
        ErrorCase{"a LOGIN user \"p\xc3", kSyntax, kBadUtf8},                   // truncated at end
        ErrorCase{"a LOGIN user \"p\xc3\r\n", kSyntax, kBadUtf8},               // CR for a tail
        ErrorCase{"a LOGIN user \"p\xe3\x81\"\r\n", kSyntax, kBadUtf8},         // truncated
        ErrorCase{"a LOGIN user \"p\xf0\x9f\x94\"\r\n", kSyntax, kBadUtf8},     // truncated
        ErrorCase{"a LOGIN user \"\xc0\xaf\"\r\n", kSyntax, kBadUtf8},          // overlong '/'
        ErrorCase{"a LOGIN user \"\xc1\xbf\"\r\n", kSyntax, kBadUtf8},          // overlong
        ErrorCase{"a LOGIN user \"\xe0\x9f\xbf\"\r\n", kSyntax, kBadUtf8},      // overlong
        ErrorCase{"a LOGIN user \"\xf0\x8f\xbf\xbf\"\r\n", kSyntax, kBadUtf8},  // overlong
        ErrorCase{"a LOGIN user \"\xed\xa0\x80\"\r\n", kSyntax, kBadUtf8},      // U+D800
        ErrorCase{"a LOGIN user \"\xed\xbf\xbf\"\r\n", kSyntax, kBadUtf8},      // U+DFFF
        ErrorCase{"a LOGIN user \"\xf4\x90\x80\x80\"\r\n", kSyntax, kBadUtf8},  // > U+10FFFF
        ErrorCase{"a LOGIN user \"\xf5\x80\x80\x80\"\r\n", kSyntax, kBadUtf8},
        ErrorCase{"a LOGIN user \"\xfe\xff\"\r\n", kSyntax, kBadUtf8},
        ErrorCase{"a LOGIN user \"\xc3\xa4\xa4\"\r\n", kSyntax, kBadUtf8},  // extra tail
        // NUL and other controls stay refused, also next to UTF-8.
        ErrorCase{"a LOGIN user \"\xc3\xa4\0\"\r\n"s, kSyntax,
                  "Invalid characters in quoted string"},
        ErrorCase{"a ID (\"name\" \"\xc3\xa4\x1b[2J\")\r\n", kSyntax,
                  "Invalid characters in quoted string"},
        // Atoms stay 7-bit.
        ErrorCase{"a LOGIN j\xc3\xb6rg pass\r\n", kSyntax, "Invalid characters in atom"}));

INSTANTIATE_TEST_SUITE_P(
    Literals, PreloginErrorTest,
    ::testing::Values(
        ErrorCase{"a LOGIN {20}\r\nuser pass\r\n", kSyntax, "Literal longer than the command"},
        ErrorCase{"a LOGIN user {5}\r\npass", kSyntax, "Literal longer than the command"},
        ErrorCase{"a LOGIN {}\r\n", ErrorCode::kBadLiteral, "Invalid literal size"},
        ErrorCase{"a LOGIN {+}\r\n", ErrorCode::kBadLiteral, "Invalid literal size"},
        ErrorCase{"a LOGIN {4x}\r\nuser", ErrorCode::kBadLiteral, "Invalid literal size"},
        ErrorCase{"a LOGIN {4++}\r\nuser", ErrorCode::kBadLiteral, "Invalid literal size"},
        ErrorCase{"a LOGIN {-4}\r\nuser", ErrorCode::kBadLiteral, "Invalid literal size"},
        ErrorCase{"a LOGIN {4", ErrorCode::kBadLiteral, "Invalid literal size"},
        ErrorCase{"a LOGIN {4} user pass\r\n", ErrorCode::kBadLiteral,
                  "Literal size must end the line"},
        ErrorCase{"a LOGIN {4}\ruser pass\r\n", ErrorCode::kBadLiteral,
                  "Literal size must end the line"},
        ErrorCase{"a LOGIN {4}", ErrorCode::kBadLiteral, "Literal size must end the line"},
        ErrorCase{"a LOGIN ~{4}\r\nuser pass\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a LOGIN {1234567890123456789012345}\r\nx\r\n", ErrorCode::kNumberTooLong,
                  "Literal size has too many digits"},
        ErrorCase{"a LOGIN {99999999999999999999}\r\nx\r\n", ErrorCode::kLiteralTooLarge,
                  "Literal too large"},
        ErrorCase{"a LOGIN {18446744073709551615}\r\nx\r\n", ErrorCode::kLiteralTooLarge,
                  "Literal too large", "a", withLiteral(1000)},
        ErrorCase{"a LOGIN {101}\r\n" + std::string(101, 'u') + " pass\r\n",
                  ErrorCode::kLiteralTooLarge, "Literal too large", "a", withLiteral(100)},
        ErrorCase{"a LOGIN {4}\r\nu\0er pass\r\n"s, kSyntax, "NUL in literal"}));

INSTANTIATE_TEST_SUITE_P(
    Authenticate, PreloginErrorTest,
    ::testing::Values(
        ErrorCase{"a AUTHENTICATE\r\n", kSyntax, "Missing SASL mechanism"},
        ErrorCase{"a AUTHENTICATE \"PLAIN\"\r\n", kSyntax, "Invalid SASL mechanism"},
        ErrorCase{"a AUTHENTICATE PL]AIN\r\n", kSyntax, "Invalid SASL mechanism"},
        ErrorCase{"a AUTHENTICATE (PLAIN)\r\n", kSyntax, "Invalid SASL mechanism"},
        ErrorCase{"a AUTHENTICATE PLAIN dGVzd\r\n", kSyntax, "Invalid base64 in initial response"},
        ErrorCase{"a AUTHENTICATE PLAIN dG=z\r\n", kSyntax, "Invalid base64 in initial response"},
        ErrorCase{"a AUTHENTICATE PLAIN ==\r\n", kSyntax, "Invalid base64 in initial response"},
        ErrorCase{"a AUTHENTICATE PLAIN dG-z\r\n", kSyntax, "Invalid base64 in initial response"},
        ErrorCase{"a AUTHENTICATE PLAIN dG*z\r\n", kSyntax, "Invalid characters in atom"},
        ErrorCase{"a AUTHENTICATE PLAIN \"dGVzdA==\"\r\n", kSyntax, "Invalid initial response"},
        ErrorCase{"a AUTHENTICATE PLAIN {4}\r\ndGVz\r\n", kSyntax, "Invalid initial response"},
        ErrorCase{"a AUTHENTICATE PLAIN = x\r\n", kSyntax, "Extra arguments"}));

INSTANTIATE_TEST_SUITE_P(
    Id, PreloginErrorTest,
    ::testing::Values(
        ErrorCase{"a ID\r\n", kSyntax, "Missing ID parameters"},
        ErrorCase{"a ID foo\r\n", kSyntax, "ID parameters must be a list or NIL"},
        ErrorCase{"a ID \"NIL\"\r\n", kSyntax, "ID parameters must be a list or NIL"},
        ErrorCase{"a ID NIL NIL\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a ID (\"k\" \"v\") NIL\r\n", kSyntax, "Extra arguments"},
        ErrorCase{"a ID (\"k\")\r\n", kSyntax, "ID field without a value"},
        ErrorCase{"a ID (k \"v\")\r\n", kSyntax, "ID field name must be a string"},
        ErrorCase{"a ID (NIL \"v\")\r\n", kSyntax, "ID field name must be a string"},
        ErrorCase{"a ID (\"k\" v)\r\n", kSyntax, "ID field value must be a string or NIL"},
        ErrorCase{"a ID (\"k\" (\"v\"))\r\n", kSyntax, "Nested list in ID parameters"},
        ErrorCase{"a ID ((\"k\") \"v\")\r\n", kSyntax, "Nested list in ID parameters"},
        ErrorCase{"a ID (\"k\" \"v\"\r\n", kSyntax, "Unterminated list"},
        ErrorCase{"a ID (\r\n", kSyntax, "Unterminated list"},
        ErrorCase{"a ID ( \"k\" \"v\")\r\n", kSyntax, "Unexpected space"},
        ErrorCase{"a ID (\"k\" \"v\" )\r\n", kSyntax, "Unexpected space before ')'"},
        ErrorCase{"a ID (\"k\" \"v\")(\"x\" NIL)\r\n", kSyntax, "Missing space between arguments"},
        ErrorCase{"a ID \"k\")\r\n", kSyntax, "Unexpected ')'"},
        ErrorCase{manyIdPairs(31), kSyntax, "Too many ID fields"},
        ErrorCase{manyIdPairs(200), kSyntax, "Too many arguments"},
        ErrorCase{"a ID (\"" + std::string(31, 'k') + "\" \"v\")\r\n", kSyntax,
                  "ID field name too long"},
        ErrorCase{"a ID (\"k\" \"" + std::string(1025, 'v') + "\")\r\n", kSyntax,
                  "ID field value too long"},
        // Nesting is bounded by Limits::max_list_depth (8 by default).
        ErrorCase{"a ID " + std::string(9, '(') + std::string(9, ')') + "\r\n", kSyntax,
                  "Lists nested too deeply"},
        ErrorCase{"a ID " + std::string(100000, '(') + "\r\n", kSyntax, "Lists nested too deeply"},
        ErrorCase{"a ID ((\"k\" \"v\"))\r\n", kSyntax, "Lists nested too deeply", "a",
                  withDepth(1)}));

// The limits the proxy passes before login (see proxy/src/session/session_internal.h).
Limits preloginLimits() {
  Limits l;
  l.max_line = 8192;
  l.max_literal = 8192;
  l.max_id_line = idMaxLine(l.max_tag);
  return l;
}

std::string idCommand(const std::string& field, const std::string& value, int pairs,
                      const std::string& tag = "a") {
  std::string s = tag + " ID (";
  for (int i = 0; i < pairs; ++i) {
    s += (i ? " \"" : "\"") + field + "\" \"" + value + "\"";
  }
  return s + ")\r\n";
}

TEST(PreloginTest, IdAtRfc2971LimitsParsesUnderThePreloginLimits) {
  const PreloginResult r =
      parseExact(idCommand(std::string(30, 'k'), std::string(1024, 'v'), 30), preloginLimits());
  ASSERT_TRUE(r.ok) << r.error.message;
  ASSERT_EQ(r.command.id->size(), 30u);
  EXPECT_EQ(r.command.id->back().value, std::string(1024, 'v'));
  // Every octet escaped, a 64-byte tag: the longest such ID.
  const std::string longest =
      idCommand(std::string(60, '\\'), std::string(2048, '\\'), 30, std::string(64, 't'));
  ASSERT_EQ(longest.size(), idMaxLine(64) + 2);
  const PreloginResult r2 = parseExact(longest, preloginLimits());
  ASSERT_TRUE(r2.ok) << r2.error.message;
  EXPECT_EQ(r2.command.id->front().key, std::string(30, '\\'));
  EXPECT_EQ(r2.command.id->front().value, std::string(1024, '\\'));
  // UTF-8 values count in octets.
  const PreloginResult r3 =
      parseExact(idCommand("name", "\xc3\xa4" + std::string(1022, 'v'), 1), preloginLimits());
  EXPECT_TRUE(r3.ok) << r3.error.message;
}

TEST(PreloginTest, IdBeyondRfc2971LimitsIsRefusedPrecisely) {
  const Limits limits = preloginLimits();
  const std::string k30(30, 'k');
  const std::string v1024(1024, 'v');
  PreloginResult r = parseExact(idCommand(k30, v1024, 31), limits);
  EXPECT_STREQ(r.error.message, "Too many ID fields");
  r = parseExact(idCommand(k30, v1024 + "v", 30), limits);
  EXPECT_STREQ(r.error.message, "ID field value too long");
  r = parseExact(idCommand(k30 + "k", "v", 1), limits);
  EXPECT_STREQ(r.error.message, "ID field name too long");
  r = parseExact(idCommand("name", "\xc3\xa4" + std::string(1023, 'v'), 1), limits);
  EXPECT_STREQ(r.error.message, "ID field value too long");
  // Without the ID allowance the 8 KiB pre-login line refuses the ID...
  Limits no_allowance = limits;
  no_allowance.max_id_line = 0;
  r = parseExact(idCommand(k30, v1024, 30), no_allowance);
  EXPECT_EQ(r.error.code, ErrorCode::kLineTooLong);
  // ... and with it every other command keeps the 8 KiB line.
  r = parseExact("a LOGIN user " + std::string(8200, 'p') + "\r\n", limits);
  EXPECT_EQ(r.error.code, ErrorCode::kLineTooLong);
}

TEST(PreloginTest, NestingWithinTheLimitReachesTheVerbCheck) {
  // Eight levels parse; ID then refuses the shape, not the depth.
  const PreloginResult r = parseExact("a ID " + std::string(8, '(') + std::string(8, ')') + "\r\n");
  ASSERT_FALSE(r.ok);
  EXPECT_STREQ(r.error.message, "Nested list in ID parameters");
}

TEST(PreloginTest, LiteralLimitIsInclusive) {
  const PreloginResult r =
      parseExact("a LOGIN {100}\r\n" + std::string(100, 'u') + " pw\r\n", withLiteral(100));
  ASSERT_TRUE(r.ok) << r.error.message;
  EXPECT_EQ(r.command.user, std::string(100, 'u'));
}

TEST(PreloginTest, LineLimitExcludesLiteralBodies) {
  // 21 bytes before the line end as an atom; 19 with literals, whose 12
  // bytes of body do not count.
  EXPECT_FALSE(parseExact("a LOGIN user password\r\n", withLine(20)).ok);
  const PreloginResult r = parseExact("a LOGIN {4}\r\nuser {8}\r\npassword\r\n", withLine(20));
  EXPECT_TRUE(r.ok) << r.error.message;
}

TEST(PreloginTest, TagLimitIsInclusive) {
  const std::string tag(64, 't');
  const PreloginResult r = parseExact(tag + " NOOP\r\n");
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.command.tag, tag);
}

TEST(PreloginTest, UnknownCommandKeepsTagAndName) {
  const PreloginResult r = parseExact("A7 select INBOX\r\n");
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error.code, ErrorCode::kUnknownCommand);
  EXPECT_EQ(r.command.tag, "A7");
  EXPECT_EQ(r.command.name, "SELECT");
  EXPECT_EQ(r.command.verb, Verb::kOther);
}

TEST(PreloginTest, SyntaxErrorKeepsVerbAndName) {
  const PreloginResult r = parseExact("t1 login onlyuser\r\n");
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.command.verb, Verb::kLogin);
  EXPECT_EQ(r.command.name, "LOGIN");
  EXPECT_EQ(r.command.tag, "t1");
}

// No error message may carry the password: messages are fixed strings, and
// the command's user/password stay empty when the command is refused.
TEST(PreloginTest, ErrorsNeverContainThePassword) {
  const std::string secret = "S3cr3tPassw0rd";
  const std::vector<std::string> inputs = {
      "a LOGIN user " + secret + " extra\r\n",
      "a LOGIN user \"" + secret + "\r\n",
      "a LOGIN user \"" + secret + "\\x\"\r\n",
      "a LOGIN user " + secret + "%\r\n",
      "a LOGIN user {" + std::to_string(secret.size() + 5) + "}\r\n" + secret + "\r\n",
      "a LOGIN user {" + std::to_string(secret.size()) + "}\r\n" + secret + "junk\r\n",
      "a LOGIN user \"" + secret + "\"\r",
      "a LOGIN user (" + secret + ")\r\n",
      "a LOGIN " + secret + "\r\n",
      secret + "+ LOGIN user " + secret + "\r\n",
      "a LOGIN user \"" + secret + "\xff\"\r\n",
  };
  for (const std::string& input : inputs) {
    SCOPED_TRACE(printable(input));
    const PreloginResult r = parseExact(input);
    ASSERT_FALSE(r.ok);
    EXPECT_EQ(std::string(r.error.message).find("S3cr3t"), std::string::npos);
    EXPECT_NE(std::string(r.error.message), "");
    EXPECT_TRUE(r.command.password.empty());
    EXPECT_TRUE(r.command.user.empty());
  }
}

TEST(PreloginTest, VerbNames) {
  const std::vector<std::pair<Verb, std::string>> names = {
      {Verb::kCapability, "CAPABILITY"},
      {Verb::kNoop, "NOOP"},
      {Verb::kLogout, "LOGOUT"},
      {Verb::kId, "ID"},
      {Verb::kStarttls, "STARTTLS"},
      {Verb::kLogin, "LOGIN"},
      {Verb::kAuthenticate, "AUTHENTICATE"},
      {Verb::kOther, "OTHER"},
  };
  for (const auto& [verb, name] : names) {
    EXPECT_EQ(verbName(verb), name);
  }
  EXPECT_STREQ(verbName(static_cast<Verb>(200)), "UNKNOWN");
}

}  // namespace
}  // namespace portico::parser
