// Status and Result<T>: the error type of fallible functions that are not
// on the data path (config, TLS contexts, admin commands, lookups), in the
// style of LevelDB's Status. An OK Status holds no allocation; an error holds
// one message written for an operator ("FILE: what is wrong"), never a
// secret. Neither throws; callers test ok() before using a Result's value.
//
// Header-only and dependency-free, so every library can include it. Not to
// be confused with parser::Status, an IMAP response's OK/NO/BAD.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace portico {

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  static Status error(std::string message) {
    Status s;
    s.message_ = std::make_unique<std::string>(std::move(message));
    return s;
  }

  Status(const Status& other)
      : message_(other.message_ ? std::make_unique<std::string>(*other.message_) : nullptr) {}
  Status& operator=(const Status& other) {
    if (this != &other) {
      message_ = other.message_ ? std::make_unique<std::string>(*other.message_) : nullptr;
    }
    return *this;
  }
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  bool ok() const { return message_ == nullptr; }
  // "" when ok().
  const std::string& message() const {
    static const std::string kEmpty;
    return message_ ? *message_ : kEmpty;
  }
  // The same error with "`context`: " in front (no-op when ok()).
  Status prefixed(std::string_view context) const {
    return ok() ? Status() : error(std::string(context) + ": " + *message_);
  }

 private:
  std::unique_ptr<std::string> message_;
};

// A value or the Status that says why there is none.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}       // NOLINT: implicit on purpose
  Result(Status error) : error_(std::move(error)) {}  // NOLINT: must not be ok()

  bool ok() const { return value_.has_value(); }
  // OK when there is a value.
  const Status& status() const { return error_; }
  const std::string& message() const { return error_.message(); }
  // Only when ok().
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  std::optional<T> value_;
  Status error_;
};

}  // namespace portico
