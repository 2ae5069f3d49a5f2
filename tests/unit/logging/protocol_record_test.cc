// formatRecord() and the redaction helpers: pure functions, table-driven.
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "portico/logging.h"

namespace portico::logging {
namespace {

using namespace std::string_view_literals;

// 2026-11-27T21:05:58.123Z
constexpr std::int64_t kSampleTimeMs = 1795813558123;

ProtocolRecord sampleRecord() {
  ProtocolRecord r;
  r.time_ms = kSampleTimeMs;
  r.session_id = 0x0123456789abcdefULL;
  r.seq = 7;
  r.server_address = "10.0.0.11:143";
  r.client_address = "192.0.2.7:50123";
  r.user = "joe@example.net";
  r.duration_ms = 15;
  r.request_bytes = 24;
  r.response_bytes = 1830;
  r.command = "SELECT";
  r.parameters = "INBOX";
  r.context = "R=ok;backend=mbx1";
  return r;
}

std::string format(const ProtocolRecord& r) {
  std::string out;
  formatRecord(r, out);
  return out;
}

// The text of column `index` exactly as written (quotes included).
std::string rawColumn(const std::string& line, int index) {
  int column = 0;
  bool quoted = false;
  std::string current;
  for (char c : line.substr(0, line.size() - 2)) {
    if (c == '"') {
      quoted = !quoted;
    }
    if (c == ',' && !quoted) {
      if (column == index) {
        return current;
      }
      ++column;
      current.clear();
      continue;
    }
    current.push_back(c);
  }
  return column == index ? current : "<missing>";
}

TEST(FormatRecord, WritesColumnsInExchangeOrderWithCrlf) {
  EXPECT_EQ(format(sampleRecord()),
            "2026-11-27T21:05:58.123Z,0123456789abcdef,7,10.0.0.11:143,192.0.2.7:50123,"
            "joe@example.net,15,24,1830,SELECT,INBOX,R=ok;backend=mbx1\r\n");
}

TEST(FormatRecord, AppendsToExistingText) {
  std::string out = "x";
  ProtocolRecord r;
  formatRecord(r, out);
  formatRecord(r, out);
  EXPECT_EQ(out,
            "x1970-01-01T00:00:00.000Z,0000000000000000,0,,,,0,0,0,,,\r\n"
            "1970-01-01T00:00:00.000Z,0000000000000000,0,,,,0,0,0,,,\r\n");
}

TEST(FormatRecord, CsvQuotingTable) {
  struct Case {
    std::string_view input;
    std::string_view expected;
  };
  const std::vector<Case> cases = {
      {"", ""},
      {"plain", "plain"},
      {"with space", "with space"},
      {"tab\there", "tab\there"},
      {"a,b", "\"a,b\""},
      {"say \"hi\"", "\"say \"\"hi\"\"\""},
      {"\"", "\"\"\"\""},
      {"line\r\nbreak", "line  break"},
      {"lf\nonly", "lf only"},
      {"nul\0byte"sv, "nul byte"},
      {"del\x7f", "del "},
      {"a,\"b\"\r\n", "\"a,\"\"b\"\"  \""},
      {"caf\xc3\xa9", "caf\xc3\xa9"},
  };
  for (const Case& c : cases) {
    const std::string input(c.input);
    ProtocolRecord r = sampleRecord();
    r.context = input;
    const std::string line = format(r);
    EXPECT_EQ(rawColumn(line, 11), c.expected) << "input: " << input;
    EXPECT_EQ(line.find('\n'), line.size() - 1) << "input: " << input;
  }
}

TEST(FormatRecord, QuotesEveryTextColumn) {
  ProtocolRecord r = sampleRecord();
  r.server_address = "a,b";
  r.client_address = "c,d";
  r.user = "u\"ser";
  r.command = "X,Y";
  r.parameters = "p,q";
  const std::string line = format(r);
  EXPECT_EQ(rawColumn(line, 3), "\"a,b\"");
  EXPECT_EQ(rawColumn(line, 4), "\"c,d\"");
  EXPECT_EQ(rawColumn(line, 5), "\"u\"\"ser\"");
  EXPECT_EQ(rawColumn(line, 9), "\"X,Y\"");
  EXPECT_EQ(rawColumn(line, 10), "\"p,q\"");
}

TEST(FormatRecord, TimeFormatTable) {
  struct Case {
    std::int64_t ms;
    std::string_view expected;
  };
  const std::vector<Case> cases = {
      {0, "1970-01-01T00:00:00.000Z"},
      {1, "1970-01-01T00:00:00.001Z"},
      {kSampleTimeMs, "2026-11-27T21:05:58.123Z"},
      {951782400007, "2000-02-29T00:00:00.007Z"},
      {1709251199999, "2024-02-29T23:59:59.999Z"},
      {1767225599999, "2025-12-31T23:59:59.999Z"},
      {1767225600000, "2026-01-01T00:00:00.000Z"},
      {-5, "1970-01-01T00:00:00.000Z"},  // clamped
      {253402300799999, "9999-12-31T23:59:59.999Z"},
      {INT64_MAX, "9999-12-31T23:59:59.999Z"},  // clamped
  };
  for (const Case& c : cases) {
    ProtocolRecord r;
    r.time_ms = c.ms;
    EXPECT_EQ(rawColumn(format(r), 0), c.expected) << c.ms;
  }
}

TEST(FormatRecord, SessionIdIsSixteenLowercaseHexDigits) {
  const std::vector<std::pair<std::uint64_t, std::string_view>> cases = {
      {0, "0000000000000000"},
      {0xdeadbeef, "00000000deadbeef"},
      {0xABCDEF0123456789ULL, "abcdef0123456789"},
      {UINT64_MAX, "ffffffffffffffff"},
  };
  for (const auto& [id, expected] : cases) {
    ProtocolRecord r;
    r.session_id = id;
    EXPECT_EQ(rawColumn(format(r), 1), expected);
  }
}

TEST(FormatRecord, NumbersIncludingNegativeDuration) {
  ProtocolRecord r;
  r.seq = UINT32_MAX;
  r.duration_ms = -1;
  r.request_bytes = UINT64_MAX;
  r.response_bytes = 0;
  const std::string line = format(r);
  EXPECT_EQ(rawColumn(line, 2), "4294967295");
  EXPECT_EQ(rawColumn(line, 6), "-1");
  EXPECT_EQ(rawColumn(line, 7), "18446744073709551615");
  EXPECT_EQ(rawColumn(line, 8), "0");
}

TEST(FormatRecord, ParametersCutAt2048BytesBeforeQuoting) {
  ProtocolRecord r;
  const std::string exact(kMaxParameterBytes, 'a');
  r.parameters = exact;
  EXPECT_EQ(rawColumn(format(r), 10), exact);

  const std::string longer(3000, 'b');
  r.parameters = longer;
  EXPECT_EQ(rawColumn(format(r), 10), std::string(kMaxParameterBytes, 'b'));

  // Cut first, then quoted: 2,048 source bytes inside the quotes.
  std::string commas(3000, ',');
  r.parameters = commas;
  EXPECT_EQ(rawColumn(format(r), 10), "\"" + std::string(kMaxParameterBytes, ',') + "\"");

  // A two-byte character straddling the cut is left out whole.
  std::string utf8(kMaxParameterBytes - 1, 'c');
  utf8 += "\xc3\xa9tail";
  r.parameters = utf8;
  EXPECT_EQ(rawColumn(format(r), 10), std::string(kMaxParameterBytes - 1, 'c'));

  // Other columns are not cut.
  const std::string long_context(3000, 'd');
  r.context = long_context;
  EXPECT_EQ(rawColumn(format(r), 11), long_context);
}

TEST(Redaction, LoginTable) {
  struct Case {
    std::string_view parameters;
    std::string_view expected;
  };
  const std::vector<Case> cases = {
      {"joe secret", "joe *****"},
      {"joe@example.net \"pass word\"", "joe@example.net *****"},
      {"  joe secret", "joe *****"},
      {"\"jo\\\"e\" \"s3cr\\\"et\"", "\"jo\\\"e\" *****"},
      {"\"joe smith\" secret", "\"joe smith\" *****"},
      {"{3}", "{3} *****"},
      {"{3+}", "{3+} *****"},
      {"joe {6}", "joe *****"},
      {"joe", "joe *****"},
      {"\"unterminated secret", "*****"},
      {"{x} secret", "*****"},
      {"{12 secret", "*****"},
      {"", ""},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(redactCommandParameters("LOGIN", c.parameters), c.expected) << c.parameters;
    std::string storage;
    EXPECT_EQ(redactCommandParameters("login", c.parameters, storage), c.expected) << c.parameters;
  }
}

TEST(Redaction, LoginNeverKeepsThePassword) {
  const std::vector<std::string_view> inputs = {
      "joe hunter2", "\"joe\" hunter2", "{3}\r\njoe hunter2", "\"joe hunter2", "joe \"hunter2\""};
  for (std::string_view input : inputs) {
    EXPECT_EQ(redactCommandParameters("LOGIN", input).find("hunter2"), std::string::npos) << input;
  }
}

TEST(Redaction, AuthenticateKeepsOnlyTheMechanism) {
  // "\0joe\0hunter2" in base64: the SASL-IR payload must not survive.
  const std::string_view payload = "AGpvZQBodW50ZXIy";
  const std::string with_ir = "PLAIN " + std::string(payload);
  EXPECT_EQ(redactCommandParameters("AUTHENTICATE", with_ir), "PLAIN");
  EXPECT_EQ(redactCommandParameters("AUTHENTICATE", with_ir).find(payload), std::string::npos);
  EXPECT_EQ(redactCommandParameters("Authenticate", "XOAUTH2 dXNlcj1qb2UBYXV0aD1CZWFyZXIgdG9r"),
            "XOAUTH2");
  EXPECT_EQ(redactCommandParameters("AUTHENTICATE", "PLAIN"), "PLAIN");
  EXPECT_EQ(redactCommandParameters("AUTHENTICATE", "PLAIN ="), "PLAIN");
  EXPECT_EQ(redactCommandParameters("AUTHENTICATE", ""), "");
}

TEST(Redaction, OtherCommandsUnchangedWithoutCopy) {
  const std::string parameters = "1:* (FLAGS BODY.PEEK[HEADER])";
  std::string storage;
  const std::string_view out = redactCommandParameters("FETCH", parameters, storage);
  EXPECT_EQ(out, parameters);
  EXPECT_EQ(out.data(), parameters.data());
  EXPECT_TRUE(storage.empty());
  EXPECT_EQ(redactCommandParameters("LOGINX", "joe secret"), "joe secret");
  EXPECT_EQ(redactCommandParameters("SELECT", "INBOX"), "INBOX");
}

}  // namespace
}  // namespace portico::logging
