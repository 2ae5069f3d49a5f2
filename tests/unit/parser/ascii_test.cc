// portico/ascii.h: ASCII letters fold, nothing else does, whatever the
// locale (the helpers it replaced used <cctype> and strcasecmp).
#include <gtest/gtest.h>

#include <clocale>

#include "portico/ascii.h"

namespace portico {
namespace {

TEST(Ascii, FoldsLettersOnly) {
  EXPECT_TRUE(equalsIgnoreCase("CapaBility", "CAPABILITY"));
  EXPECT_TRUE(equalsIgnoreCase("", ""));
  EXPECT_FALSE(equalsIgnoreCase("LOGIN", "LOGIN "));
  EXPECT_FALSE(equalsIgnoreCase("[", "{"));  // 0x5b vs 0x7b: differ by 0x20, not letters
  EXPECT_FALSE(equalsIgnoreCase("@", "`"));
  EXPECT_EQ(asciiLower('Z'), 'z');
  EXPECT_EQ(asciiUpper('a'), 'A');
  EXPECT_EQ(asciiLowered("Content-LENGTH"), "content-length");
  EXPECT_TRUE(startsWithIgnoreCase("auth=PLAIN", "AUTH="));
  EXPECT_FALSE(startsWithIgnoreCase("AUT", "AUTH="));
  static_assert(equalsIgnoreCase("ok", "OK"), "usable in constant expressions");
}

TEST(Ascii, BytesAboveAsciiNeverFoldEvenInALatin1Locale) {
  // In a Latin-1 locale toupper(0xe0 'à') is 0xc0 'À'; protocol words must
  // not match that way. The locale may be missing on the host: the check
  // holds either way, so it runs in whatever locale setlocale gives.
  const char* before = std::setlocale(LC_CTYPE, nullptr);
  const std::string saved = before ? before : "C";
  std::setlocale(LC_CTYPE, "de_DE.ISO-8859-1");
  EXPECT_FALSE(equalsIgnoreCase("\xe0", "\xc0"));
  EXPECT_EQ(asciiLowered("\xc0"), "\xc0");
  EXPECT_FALSE(equalsIgnoreCase("i", "\xdd"));  // Turkish dotted capital I in ISO-8859-9
  std::setlocale(LC_CTYPE, saved.c_str());
}

}  // namespace
}  // namespace portico
