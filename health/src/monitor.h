// Monitors: pure state machines that turn probe results or samples into an
// AlertValue. No I/O and no clock of their own: every call takes `now` (wall
// time, for display), so tests drive them with fake time.
//
// Rules (both kinds):
// - A monitor starts Unknown.
// - `unhealthy_after` bad observations in a row make it Unhealthy.
// - Once Unhealthy, `healthy_after` good observations in a row make it
//   Healthy again (hysteresis against flapping).
// - From Unknown a single good observation makes it Healthy: there is no
//   alert to recover from, and waiting `healthy_after` runs would leave a new
//   monitor Unknown for minutes (Envoy's health checker does the same on
//   start-up).
// - Otherwise the value is kept: a failure or two below the threshold leaves
//   a Healthy monitor Healthy.
// - An operator override (Disabled or Repairing, or for a timed override
//   also Healthy or Degraded) replaces the shown value; observations are
//   still counted underneath, so clearing the override shows the
//   up-to-date computed value at once. A timed override carries its expiry;
//   expireOverride(now) clears it once `now` reaches it (the caller's timer
//   decides when to ask, so tests drive expiry with fake time).
//
// Times: FirstAlertObservedTime is when the current alert began (the
// computed value turned Unhealthy); it is cleared when the monitor recovers.
// LastTransitionTime is when the shown value last changed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "portico/health.h"

namespace portico::health {

struct MonitorKey {
  std::string monitor;  // e.g. "ImapSelfTestMonitor"
  std::string target;   // backend name, "" for the proxy itself
  auto operator<=>(const MonitorKey&) const = default;
};

class Monitor {
 public:
  Monitor(MonitorKey key, std::string health_set, MonitorSettings settings);
  virtual ~Monitor() = default;

  const MonitorKey& key() const { return key_; }
  const std::string& healthSet() const { return health_set_; }
  const MonitorSettings& settings() const { return settings_; }
  // New thresholds apply from the next observation; the streaks are kept.
  void setSettings(const MonitorSettings& settings) { settings_ = settings; }

  // The shown value: the override if one is set, else the computed value.
  AlertValue value() const { return override_ ? override_->state : computed_; }
  AlertValue computedValue() const { return computed_; }
  std::optional<AlertValue> overrideValue() const {
    return override_ ? std::optional<AlertValue>(override_->state) : std::nullopt;
  }
  // Sets (kDisabled, kRepairing) or clears (nullopt) the operator override,
  // with no expiry and no author. Returns true if the shown value changed.
  bool setOverride(std::optional<AlertValue> value, SystemTime now);
  // The same with an expiry and who set it.
  bool applyOverride(std::optional<OverrideInfo> info, SystemTime now);
  const std::optional<OverrideInfo>& overrideInfo() const { return override_; }
  // Clears the override if it has an expiry at or before `now`; returns
  // true if it did.
  bool expireOverride(SystemTime now);

  std::optional<SystemTime> firstAlertObservedTime() const { return first_alert_; }
  std::optional<SystemTime> lastTransitionTime() const { return last_transition_; }
  std::optional<SystemTime> lastExecutionTime() const { return last_execution_; }
  std::optional<ResultType> lastExecutionResult() const { return last_result_; }
  const std::string& error() const { return error_; }
  std::uint32_t badInARow() const { return bad_in_a_row_; }
  std::uint32_t goodInARow() const { return good_in_a_row_; }

 protected:
  // Counts one observation; returns true if the shown value changed.
  bool observe(bool bad, ResultType result, std::string error, SystemTime now);

 private:
  bool setComputed(AlertValue value, SystemTime now);

  MonitorKey key_;
  std::string health_set_;
  MonitorSettings settings_;
  AlertValue computed_ = AlertValue::kUnknown;
  std::optional<OverrideInfo> override_;
  std::uint32_t bad_in_a_row_ = 0;
  std::uint32_t good_in_a_row_ = 0;
  std::optional<SystemTime> first_alert_;
  std::optional<SystemTime> last_transition_;
  std::optional<SystemTime> last_execution_;
  std::optional<ResultType> last_result_;
  std::string error_;
};

// Unhealthy after `unhealthy_after` failed (Failed or TimedOut) probe
// results in a row.
class ConsecutiveFailureMonitor final : public Monitor {
 public:
  using Monitor::Monitor;
  // Returns true if the shown value changed.
  bool record(const ProbeResult& result, SystemTime now);
};

// Unhealthy when a sample is above `threshold` in `unhealthy_after` samples
// in a row; healthy after `healthy_after` samples at or below it.
class SampledThresholdMonitor final : public Monitor {
 public:
  // `what` names the sampled quantity in the Error text ("average command
  // processing time"), `unit` its unit ("ms", "commands").
  SampledThresholdMonitor(MonitorKey key, std::string health_set, MonitorSettings settings,
                          std::string what, std::string unit);
  // Returns true if the shown value changed.
  bool sample(double value, SystemTime now);
  std::optional<double> lastSample() const { return last_sample_; }

 private:
  std::string what_;
  std::string unit_;
  std::optional<double> last_sample_;
};

// The worst (by severity()) of some values; Unknown for none.
AlertValue worstAlertValue(const std::vector<AlertValue>& values);

// Shell-style glob: `*` matches any run of characters, `?` one character;
// ASCII case-insensitive. An empty pattern matches everything.
bool globMatch(std::string_view pattern, std::string_view text);

}  // namespace portico::health
