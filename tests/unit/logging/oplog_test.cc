// The operational log: one line per event whatever the message holds.
// Bytes from peers (user names from LOGIN literals and SASL payloads) must
// not forge lines or reach a terminal as control sequences.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "portico/logging.h"

namespace portico::logging {
namespace {

struct PrintableCase {
  const char* name;
  std::string input;
  std::string expected;
};

TEST(Printable, Table) {
  const std::vector<PrintableCase> cases = {
      {"plain ASCII is kept", "alice@example.org 1.2.3.4", "alice@example.org 1.2.3.4"},
      {"empty", "", ""},
      {"CR LF cannot start a line", "a\r\nb", "a\\x0d\\x0ab"},
      {"ESC and BEL", "\x1b[2J\x1b]0;t\x07", "\\x1b[2J\\x1b]0;t\\x07"},
      {"TAB, NUL and DEL", std::string("\t\0\x7f", 3), "\\x09\\x00\\x7f"},
      {"backslash is kept", "DOMAIN\\user", "DOMAIN\\user"},
      {"UTF-8 is kept", "j\xc3\xb6rg \xe2\x82\xac \xf0\x9f\x93\xab",
       "j\xc3\xb6rg \xe2\x82\xac \xf0\x9f\x93\xab"},
      {"invalid bytes", "\xff\xfe", "\\xff\\xfe"},
      {"C1 control CSI (U+009B)",
       "\xc2\x9b"
       "31m",
       "\\xc2\\x9b31m"},
      {"NEL (U+0085)",
       "a\xc2\x85"
       "b",
       "a\\xc2\\x85b"},
      {"U+00A0 is not a control", "\xc2\xa0", "\xc2\xa0"},
      {"overlong slash", "\xc0\xaf", "\\xc0\\xaf"},
      {"overlong 3-byte", "\xe0\x80\xaf", "\\xe0\\x80\\xaf"},
      {"surrogate", "\xed\xa0\x80", "\\xed\\xa0\\x80"},
      {"above U+10FFFF", "\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"},
      {"truncated at the end", "ok\xe2\x82", "ok\\xe2\\x82"},
      {"lone continuation", "\x80x", "\\x80x"},
  };
  for (const PrintableCase& c : cases) {
    EXPECT_EQ(printable(c.input), c.expected) << c.name;
    std::string out = "prefix ";
    appendPrintable(out, c.input);
    EXPECT_EQ(out, "prefix " + c.expected) << c.name;
  }
}

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(OperationalLog, EveryFieldIsOneEscapedLine) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("portico-oplog-" + std::to_string(::getpid()) + ".txt"))
                               .string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  setOutputFd(fd);
  const std::string user = "evil\r\n2030-01-01T00:00:00.000Z INFO [main] forged\x1b[2J";
  log(Level::kInfo, "session", "login user={} client={}", user, "127.0.0.1:5");
  write(Level::kWarn, "comp\nonent", "two\nlines");
  setOutputFd(2);
  ::close(fd);
  const std::string text = readAll(path);
  std::filesystem::remove(path);

  std::vector<std::string> lines;
  std::stringstream in(text);
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  ASSERT_EQ(lines.size(), 2u) << text;
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  EXPECT_TRUE(lines[0].ends_with(
      " INFO [session] login user=evil\\x0d\\x0a2030-01-01T00:00:00.000Z INFO [main] "
      "forged\\x1b[2J client=127.0.0.1:5"))
      << lines[0];
  EXPECT_TRUE(lines[1].ends_with(" WARN [comp\\x0aonent] two\\x0alines")) << lines[1];
}

}  // namespace
}  // namespace portico::logging
