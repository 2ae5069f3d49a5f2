// Printable names for the health enums (kept beside each other so that a new
// enumerator without a name fails to compile), the severity order that
// combines monitors into a health set, and Exchange's default probe and
// monitor settings.
#include <array>
#include <cstddef>
#include <string>

#include "portico/health.h"

namespace portico::health {
namespace {

// Exchange's spelling: these names appear in Get-ServerHealth output.
constexpr std::array kAlertValueNames = {
    "Unknown", "Healthy", "Degraded", "Unhealthy", "Repairing", "Disabled",
};
static_assert(kAlertValueNames.size() == static_cast<std::size_t>(AlertValue::kDisabled) + 1);

// Higher is worse. A health set shows its worst monitor. Disabled monitors
// rank below Healthy so that switching one off never darkens its set, and
// Unknown (not yet run) ranks above Healthy: "no evidence" must not read as
// "all good". An operator's Repairing ranks below Unhealthy so that another
// monitor of the same set that is failing still shows.
constexpr std::array kSeverity = {
    2,  // Unknown
    1,  // Healthy
    3,  // Degraded
    5,  // Unhealthy
    4,  // Repairing
    0,  // Disabled
};
static_assert(kSeverity.size() == kAlertValueNames.size());

constexpr std::array kResultTypeNames = {"Succeeded", "Failed", "TimedOut"};
static_assert(kResultTypeNames.size() == static_cast<std::size_t>(ResultType::kTimedOut) + 1);

constexpr std::array kProbeStepNames = {
    "connect", "tls", "greeting", "capability", "login", "select", "logout", "done",
};
static_assert(kProbeStepNames.size() == static_cast<std::size_t>(ProbeStep::kDone) + 1);

template <typename Names, typename Enum>
const char* nameOf(const Names& names, Enum value) {
  const auto index = static_cast<std::size_t>(value);
  return index < names.size() ? names[index] : "unknown";
}

constexpr Millis seconds(long count) {
  return Millis(count * 1000);
}

}  // namespace

const char* alertValueName(AlertValue value) {
  return nameOf(kAlertValueNames, value);
}

int severity(AlertValue value) {
  const auto index = static_cast<std::size_t>(value);
  return index < kSeverity.size() ? kSeverity[index] : kSeverity[0];
}

const char* resultTypeName(ResultType type) {
  return nameOf(kResultTypeNames, type);
}
const char* probeStepName(ProbeStep step) {
  return nameOf(kProbeStepNames, step);
}

ProbeSettings defaultProbeSettings(const std::string& probe) {
  // Exchange 2013's IMAP probes: interval, timeout, up to 3 retries.
  if (probe == "ImapProxyTestProbe" || probe == "ImapSelfTestProbe") {
    return {seconds(60), seconds(55), 3};
  }
  if (probe == "ImapCTPProbe") {
    return {seconds(240), seconds(115), 3};
  }
  if (probe == "ImapDeepTestProbe") {
    return {seconds(180), seconds(110), 3};
  }
  return {};
}

MonitorSettings defaultMonitorSettings(const std::string& monitor) {
  MonitorSettings settings;
  if (monitor == "ImapProxyTestMonitor" || monitor == "ImapSelfTestMonitor") {
    settings.unhealthy_after = 4;
  } else if (monitor == "ImapCTPMonitor" || monitor == "ImapDeepTestMonitor") {
    settings.unhealthy_after = 5;
  } else if (monitor == "AverageCommandProcessingTimeGt60sMonitor") {
    settings.unhealthy_after = 2;
    settings.threshold = 60'000;
  } else if (monitor == "RequestsQueuedGt500Monitor") {
    settings.unhealthy_after = 2;
    settings.threshold = 500;
  }
  return settings;
}

}  // namespace portico::health
