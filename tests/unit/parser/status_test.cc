// portico/status.h: OK is the default and carries no message; errors keep
// theirs through copies, moves and Result.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "portico/status.h"

namespace portico {
namespace {

TEST(StatusTest, OkAndErrors) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.message(), "");
  Status bad = Status::error("cert.pem: cannot load");
  EXPECT_FALSE(bad.ok());
  Status copy = bad;
  EXPECT_EQ(copy.message(), "cert.pem: cannot load");
  EXPECT_EQ(bad.prefixed("listener 127.0.0.1:993").message(),
            "listener 127.0.0.1:993: cert.pem: cannot load");
  EXPECT_TRUE(ok.prefixed("listener").ok());
  Status moved = std::move(copy);
  EXPECT_FALSE(moved.ok());
  copy = ok;
  EXPECT_TRUE(copy.ok());
}

TEST(StatusTest, ResultHoldsAValueOrWhyNot) {
  Result<std::unique_ptr<int>> value = std::make_unique<int>(7);
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(**value, 7);
  EXPECT_TRUE(value.status().ok());
  Result<std::string> none = Status::error("unterminated quote");
  EXPECT_FALSE(none.ok());
  EXPECT_EQ(none.message(), "unterminated quote");
  EXPECT_EQ(none.status().message(), "unterminated quote");
}

}  // namespace
}  // namespace portico
