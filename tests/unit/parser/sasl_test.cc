// SASL helpers: base64 against RFC 4648's test vectors and malformed input,
// and the user read from PLAIN, XOAUTH2 and OAUTHBEARER payloads.

#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "portico/parser.h"

namespace portico::parser {
namespace {

using namespace std::string_literals;

struct Base64Case {
  std::string plain;
  std::string encoded;
};

class Base64VectorTest : public ::testing::TestWithParam<Base64Case> {};

TEST_P(Base64VectorTest, EncodesAndDecodes) {
  const Base64Case& c = GetParam();
  EXPECT_EQ(encodeBase64(c.plain), c.encoded);
  EXPECT_EQ(decodeBase64(c.encoded), c.plain);
}

// RFC 4648 section 10, plus binary and RFC 4959's PLAIN example.
INSTANTIATE_TEST_SUITE_P(
    Table, Base64VectorTest,
    ::testing::Values(Base64Case{"", ""}, Base64Case{"f", "Zg=="}, Base64Case{"fo", "Zm8="},
                      Base64Case{"foo", "Zm9v"}, Base64Case{"foob", "Zm9vYg=="},
                      Base64Case{"fooba", "Zm9vYmE="}, Base64Case{"foobar", "Zm9vYmFy"},
                      Base64Case{"\0\xff\xfe\x80"s, "AP/+gA=="}, Base64Case{"\xfb\xff"s, "+/8="},
                      Base64Case{"test\0test\0test"s, "dGVzdAB0ZXN0AHRlc3Q="}));

class Base64InvalidTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Base64InvalidTest, Rejects) {
  EXPECT_EQ(decodeBase64(GetParam()), std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Table, Base64InvalidTest,
                         ::testing::Values("Zg", "Zg=", "Zm9", "=", "====", "Z===", "Zg==Zg==",
                                           "Z=g=", "Zm=v", "Zm9v\r\n", "Zm9v ", " Zm9v", "Zm 9",
                                           "Zm-_", "Zm9v\0"s, "Zm9\xc3", "Zg==="));

TEST(Base64Test, RoundTripsEveryLengthAndByte) {
  std::string bytes;
  for (int i = 0; i < 300; ++i) {
    EXPECT_EQ(decodeBase64(encodeBase64(bytes)), bytes) << "length " << i;
    bytes.push_back(static_cast<char>(i * 37 + 11));
  }
}

struct UserCase {
  std::string mechanism;
  std::string decoded;
  std::optional<std::string> user;
};

class SaslUserTest : public ::testing::TestWithParam<UserCase> {};

TEST_P(SaslUserTest, ReadsUser) {
  const UserCase& c = GetParam();
  EXPECT_EQ(saslUser(c.mechanism, c.decoded), c.user);
}

INSTANTIATE_TEST_SUITE_P(
    Plain, SaslUserTest,
    ::testing::Values(
        // RFC 4959 example: authzid "test", authcid "test".
        UserCase{"PLAIN", "test\0test\0test"s, "test"},
        UserCase{"PLAIN", "\0tim\0tanstaaftanstaaf"s, "tim"},
        UserCase{"plain", "\0tim\0secret"s, "tim"},
        UserCase{"PLAIN", "admin\0tim\0secret"s, "admin"}, UserCase{"PLAIN", "\0tim\0"s, "tim"},
        UserCase{"PLAIN", "tim"s, std::nullopt}, UserCase{"PLAIN", "\0tim"s, std::nullopt},
        UserCase{"PLAIN", "\0\0secret"s, std::nullopt},
        UserCase{"PLAIN", "a\0b\0c\0d"s, std::nullopt}, UserCase{"PLAIN", ""s, std::nullopt}));

INSTANTIATE_TEST_SUITE_P(
    Xoauth2, SaslUserTest,
    ::testing::Values(UserCase{"XOAUTH2",
                               "user=someuser@example.com\x01"
                               "auth=Bearer ya29.vF9dft4qmT\x01\x01",
                               "someuser@example.com"},
                      UserCase{"xoauth2",
                               "user=u\x01"
                               "auth=Bearer t\x01\x01",
                               "u"},
                      UserCase{"XOAUTH2", "auth=Bearer t\x01user=late\x01\x01", "late"},
                      UserCase{"XOAUTH2",
                               "user=\x01"
                               "auth=Bearer t\x01\x01",
                               std::nullopt},
                      UserCase{"XOAUTH2", "auth=Bearer t\x01\x01", std::nullopt},
                      UserCase{"XOAUTH2", "username=u\x01\x01", std::nullopt},
                      UserCase{"XOAUTH2", "", std::nullopt}));

INSTANTIATE_TEST_SUITE_P(Oauthbearer, SaslUserTest,
                         ::testing::Values(
                             // RFC 7628 section 4.1.
                             UserCase{
                                 "OAUTHBEARER",
                                 "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
                                 "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01",
                                 "user@example.com"},
                             UserCase{"oauthbearer", "y,a=u,\x01\x01", "u"},
                             UserCase{"OAUTHBEARER", "p=tls-unique,a=u,\x01\x01", "u"},
                             UserCase{"OAUTHBEARER", "n,a=a=2Cb=3Dc,\x01\x01", "a,b=c"},
                             UserCase{"OAUTHBEARER", "n,a=x=2cy,\x01\x01", "x,y"},
                             UserCase{"OAUTHBEARER",
                                      "n,,\x01"
                                      "auth=Bearer t\x01\x01",
                                      std::nullopt},
                             UserCase{"OAUTHBEARER", "n,a=,\x01\x01", std::nullopt},
                             UserCase{"OAUTHBEARER", "n,a=bad=2,\x01\x01", std::nullopt},
                             UserCase{"OAUTHBEARER", "n,a=bad=41,\x01\x01", std::nullopt},
                             UserCase{"OAUTHBEARER", "n,a=bad=", std::nullopt},
                             UserCase{"OAUTHBEARER", "n,a=u", std::nullopt},
                             UserCase{"OAUTHBEARER", "x,a=u,\x01\x01", std::nullopt},
                             UserCase{"OAUTHBEARER", "p=,a=u,\x01\x01", std::nullopt},
                             UserCase{"OAUTHBEARER", "n,u=x,\x01\x01", std::nullopt},
                             UserCase{"OAUTHBEARER", "", std::nullopt}));

INSTANTIATE_TEST_SUITE_P(Other, SaslUserTest,
                         ::testing::Values(UserCase{"GSSAPI", "\0tim\0secret"s, std::nullopt},
                                           UserCase{"LOGIN", "tim", std::nullopt},
                                           UserCase{"", "\0tim\0secret"s, std::nullopt},
                                           UserCase{"PLAINX", "\0tim\0secret"s, std::nullopt}));

}  // namespace
}  // namespace portico::parser
