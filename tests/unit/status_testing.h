// GoogleTest support for portico::Status and Result<T>: ASSERT_TRUE(IsOk(s))
// prints the error's message when `s` is not OK.
#pragma once

#include <gtest/gtest.h>

#include "portico/status.h"

namespace portico {

inline ::testing::AssertionResult IsOk(const Status& status) {
  if (status.ok()) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << status.message();
}

template <class T>
::testing::AssertionResult IsOk(const Result<T>& result) {
  return IsOk(result.status());
}

}  // namespace portico
