// Capability lists: splitting, case-insensitive lookup, and rewriting the
// list in untagged CAPABILITY responses and [CAPABILITY ...] response codes.

#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "portico/parser.h"

namespace portico::parser {
namespace {

TEST(CapabilityTest, ParseSplitsOnSpaces) {
  using V = std::vector<std::string_view>;
  EXPECT_EQ(parseCapabilities("IMAP4rev1 IDLE AUTH=PLAIN"), (V{"IMAP4rev1", "IDLE", "AUTH=PLAIN"}));
  EXPECT_EQ(parseCapabilities("  IMAP4rev1   IDLE "), (V{"IMAP4rev1", "IDLE"}));
  EXPECT_EQ(parseCapabilities("IMAP4rev1"), (V{"IMAP4rev1"}));
  EXPECT_EQ(parseCapabilities(""), V{});
  EXPECT_EQ(parseCapabilities("   "), V{});
}

TEST(CapabilityTest, HasCapabilityIgnoresCase) {
  const std::string_view list = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN";
  EXPECT_TRUE(hasCapability(list, "IDLE"));
  EXPECT_TRUE(hasCapability(list, "idle"));
  EXPECT_TRUE(hasCapability(list, "auth=plain"));
  EXPECT_TRUE(hasCapability(list, "imap4REV1"));
  EXPECT_FALSE(hasCapability(list, "AUTH="));
  EXPECT_FALSE(hasCapability(list, "IDL"));
  EXPECT_FALSE(hasCapability(list, "STARTTLS"));
  EXPECT_FALSE(hasCapability(list, ""));
  EXPECT_FALSE(hasCapability("", "IDLE"));
}

struct EditCase {
  std::string name;
  std::string line;
  std::vector<std::string_view> remove;
  std::vector<std::string_view> add;
  std::string expected;
};

class EditCapabilitiesTest : public ::testing::TestWithParam<EditCase> {};

TEST_P(EditCapabilitiesTest, Rewrites) {
  const EditCase& c = GetParam();
  EXPECT_EQ(editCapabilities(c.line, c.remove, c.add), c.expected);
}

using Caps = std::vector<std::string_view>;

INSTANTIATE_TEST_SUITE_P(
    Table, EditCapabilitiesTest,
    ::testing::Values(
        EditCase{"UntaggedRemove", "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{}, "* CAPABILITY IMAP4rev1 IDLE\r\n"},
        EditCase{"UntaggedRemoveLast", "* CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE\r\n",
                 Caps{"compress=deflate"}, Caps{}, "* CAPABILITY IMAP4rev1 IDLE\r\n"},
        EditCase{"UntaggedNoLineEnd", "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE",
                 Caps{"COMPRESS=DEFLATE"}, Caps{}, "* CAPABILITY IMAP4rev1"},
        EditCase{"UntaggedBareLf", "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{}, "* CAPABILITY IMAP4rev1\n"},
        EditCase{"KeywordCaseKept", "* capability IMAP4rev1 COMPRESS=DEFLATE\r\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{}, "* capability IMAP4rev1\r\n"},
        EditCase{"PrefixRemoval",
                 "* CAPABILITY IMAP4rev1 AUTH=PLAIN auth=login AUTHX AUTH=XOAUTH2 IDLE\r\n",
                 Caps{"AUTH="}, Caps{}, "* CAPABILITY IMAP4rev1 AUTHX IDLE\r\n"},
        EditCase{"PrefixRemovalThenAdd", "* CAPABILITY IMAP4rev1 AUTH=GSSAPI AUTH=PLAIN\r\n",
                 Caps{"AUTH="}, Caps{"AUTH=PLAIN", "AUTH=XOAUTH2"},
                 "* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2\r\n"},
        EditCase{"AddMissingOnly", "* CAPABILITY IMAP4rev1 ID\r\n", Caps{},
                 Caps{"id", "SASL-IR", "SASL-IR", ""}, "* CAPABILITY IMAP4rev1 ID SASL-IR\r\n"},
        EditCase{"AddSkipsEntriesWithSpaces", "* CAPABILITY IMAP4rev1\r\n", Caps{}, Caps{"A B"},
                 "* CAPABILITY IMAP4rev1\r\n"},
        EditCase{"RemoveEverything", "* CAPABILITY IDLE\r\n", Caps{"IDLE"}, Caps{},
                 "* CAPABILITY\r\n"},
        EditCase{"EmptyListGetsAdditions", "* CAPABILITY\r\n", Caps{}, Caps{"IMAP4rev1"},
                 "* CAPABILITY IMAP4rev1\r\n"},
        EditCase{"RepeatedSpacesNormalisedWhenEdited", "* CAPABILITY A  B   C\r\n", Caps{"B"},
                 Caps{}, "* CAPABILITY A C\r\n"},
        EditCase{"NothingToChangeKeepsBytes", "* CAPABILITY A  B   C \r\n", Caps{"D", "E="},
                 Caps{"a"}, "* CAPABILITY A  B   C \r\n"},
        EditCase{"UntaggedOkCode",
                 "* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE STARTTLS] Dovecot ready.\r\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{},
                 "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n"},
        EditCase{"TaggedOkCode", "a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE SORT] Logged in\r\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{},
                 "a1 OK [CAPABILITY IMAP4rev1 SORT] Logged in\r\n"},
        EditCase{"TaggedOkCodeLowerCase", "a1 ok [capability IMAP4rev1 compress=deflate] Hi\r\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{}, "a1 ok [capability IMAP4rev1] Hi\r\n"},
        EditCase{"PreauthCodeAdd", "* PREAUTH [CAPABILITY IMAP4rev1] Welcome\r\n", Caps{},
                 Caps{"ID"}, "* PREAUTH [CAPABILITY IMAP4rev1 ID] Welcome\r\n"},
        EditCase{"CodeEmptiedKeepsBrackets", "* OK [CAPABILITY X] ready\r\n", Caps{"X"}, Caps{},
                 "* OK [CAPABILITY] ready\r\n"},
        EditCase{"CodeWithoutText", "* OK [CAPABILITY IMAP4rev1 X]", Caps{"X"}, Caps{},
                 "* OK [CAPABILITY IMAP4rev1]"},
        EditCase{"OtherCodeUnchanged", "* OK [ALERT] COMPRESS=DEFLATE\r\n",
                 Caps{"COMPRESS=DEFLATE"}, Caps{"X"}, "* OK [ALERT] COMPRESS=DEFLATE\r\n"},
        EditCase{"CodeNotFirstUnchanged", "* OK hello [CAPABILITY X]\r\n", Caps{"X"}, Caps{},
                 "* OK hello [CAPABILITY X]\r\n"},
        EditCase{"LongerKeywordUnchanged", "* OK [CAPABILITYX X] hi\r\n", Caps{"X"}, Caps{},
                 "* OK [CAPABILITYX X] hi\r\n"},
        EditCase{"UnclosedCodeUnchanged", "* OK [CAPABILITY X hi\r\n", Caps{"X"}, Caps{},
                 "* OK [CAPABILITY X hi\r\n"},
        EditCase{"ContinuationUnchanged", "+ OK [CAPABILITY X]\r\n", Caps{"X"}, Caps{},
                 "+ OK [CAPABILITY X]\r\n"},
        EditCase{"OtherUntaggedUnchanged", "* 3 EXISTS\r\n", Caps{"X"}, Caps{"Y"},
                 "* 3 EXISTS\r\n"},
        EditCase{"TaggedCapabilityWordUnchanged", "a CAPABILITY X\r\n", Caps{"X"}, Caps{},
                 "a CAPABILITY X\r\n"},
        EditCase{"LongerUntaggedWordUnchanged", "* CAPABILITYX X\r\n", Caps{"X"}, Caps{},
                 "* CAPABILITYX X\r\n"},
        EditCase{"EmptyLine", "", Caps{"X"}, Caps{"Y"}, ""},
        EditCase{"StarOnly", "*\r\n", Caps{"X"}, Caps{"Y"}, "*\r\n"},
        EditCase{"StatusOnly", "a1 OK\r\n", Caps{"X"}, Caps{"Y"}, "a1 OK\r\n"}),
    [](const ::testing::TestParamInfo<EditCase>& info) { return info.param.name; });

}  // namespace
}  // namespace portico::parser
