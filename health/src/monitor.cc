#include "monitor.h"
#include "portico/ascii.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include <fmt/format.h>

namespace portico::health {

Monitor::Monitor(MonitorKey key, std::string health_set, MonitorSettings settings)
    : key_(std::move(key)), health_set_(std::move(health_set)), settings_(settings) {}

bool Monitor::setOverride(std::optional<AlertValue> value, SystemTime now) {
  std::optional<OverrideInfo> info;
  if (value) {
    info = OverrideInfo{*value, std::nullopt, {}};
  }
  return applyOverride(std::move(info), now);
}

bool Monitor::applyOverride(std::optional<OverrideInfo> info, SystemTime now) {
  const AlertValue before = value();
  override_ = std::move(info);
  if (value() == before) {
    return false;
  }
  last_transition_ = now;
  return true;
}

bool Monitor::expireOverride(SystemTime now) {
  if (!override_ || !override_->expires || *override_->expires > now) {
    return false;
  }
  applyOverride(std::nullopt, now);
  return true;
}

bool Monitor::observe(bool bad, ResultType result, std::string error, SystemTime now) {
  last_execution_ = now;
  last_result_ = result;
  error_ = bad ? std::move(error) : std::string();
  if (bad) {
    ++bad_in_a_row_;
    good_in_a_row_ = 0;
  } else {
    ++good_in_a_row_;
    bad_in_a_row_ = 0;
  }
  // A threshold of 0 would make no sense ("unhealthy after no failures");
  // treat it as 1.
  const std::uint32_t unhealthy_after = std::max<std::uint32_t>(1, settings_.unhealthy_after);
  const std::uint32_t healthy_after = std::max<std::uint32_t>(1, settings_.healthy_after);
  AlertValue next = computed_;
  if (bad) {
    if (bad_in_a_row_ >= unhealthy_after) {
      next = AlertValue::kUnhealthy;
    }
  } else if (computed_ != AlertValue::kUnhealthy || good_in_a_row_ >= healthy_after) {
    next = AlertValue::kHealthy;
  }
  return setComputed(next, now);
}

bool Monitor::setComputed(AlertValue next, SystemTime now) {
  const AlertValue before = value();
  if (next == AlertValue::kUnhealthy && computed_ != AlertValue::kUnhealthy) {
    first_alert_ = now;
  } else if (next != AlertValue::kUnhealthy && computed_ == AlertValue::kUnhealthy) {
    first_alert_.reset();
  }
  computed_ = next;
  if (value() == before) {
    return false;
  }
  last_transition_ = now;
  return true;
}

bool ConsecutiveFailureMonitor::record(const ProbeResult& result, SystemTime now) {
  const bool bad = result.result != ResultType::kSucceeded;
  std::string error;
  if (bad) {
    error = fmt::format("{} at {}: {}", resultTypeName(result.result),
                        probeStepName(result.failed_step), result.error);
  }
  return observe(bad, result.result, std::move(error), now);
}

SampledThresholdMonitor::SampledThresholdMonitor(MonitorKey key, std::string health_set,
                                                 MonitorSettings settings, std::string what,
                                                 std::string unit)
    : Monitor(std::move(key), std::move(health_set), settings),
      what_(std::move(what)),
      unit_(std::move(unit)) {}

bool SampledThresholdMonitor::sample(double value, SystemTime now) {
  last_sample_ = value;
  const bool bad = value > settings().threshold;
  std::string error;
  if (bad) {
    error = fmt::format("{} {:.0f} {} is above {:.0f} {}", what_, value, unit_,
                        settings().threshold, unit_);
  }
  return observe(bad, bad ? ResultType::kFailed : ResultType::kSucceeded, std::move(error), now);
}

AlertValue worstAlertValue(const std::vector<AlertValue>& values) {
  if (values.empty()) {
    return AlertValue::kUnknown;
  }
  return *std::max_element(values.begin(), values.end(),
                           [](AlertValue a, AlertValue b) { return severity(a) < severity(b); });
}

bool globMatch(std::string_view pattern, std::string_view text) {
  if (pattern.empty()) {
    return true;
  }
  // Iterative matcher with one backtrack point (the last `*`): linear in
  // practice, and never exponential on patterns like "a*a*a*a*b".
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = std::string_view::npos;
  std::size_t star_text = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_text = t;
    } else if (p < pattern.size() &&
               (pattern[p] == '?' || asciiLower(pattern[p]) == asciiLower(text[t]))) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_text;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

}  // namespace portico::health
