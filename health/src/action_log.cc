#include "action_log.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "portico/json_text.h"

namespace portico::health {

std::string formatIsoTime(SystemTime time) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
  const auto secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char out[40];
  const std::size_t n = std::strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03}Z", std::string_view(out, n), ((ms % 1000) + 1000) % 1000);
}

ActionLog::ActionLog(std::size_t capacity) : capacity_(std::max<std::size_t>(1, capacity)) {}

void ActionLog::setCapacity(std::size_t capacity) {
  capacity_ = std::max<std::size_t>(1, capacity);
  trim();
}

std::uint64_t ActionLog::add(ActionRecord record) {
  const std::uint64_t id = next_id_++;
  entries_.push_back(Entry{id, std::move(record)});
  trim();
  return id;
}

void ActionLog::setResult(std::uint64_t id, std::string result) {
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    if (it->id == id) {
      it->record.result = std::move(result);
      return;
    }
  }
}

void ActionLog::trim() {
  while (entries_.size() > capacity_) {
    entries_.pop_front();
  }
}

nlohmann::json ActionLog::json() const {
  nlohmann::json list = nlohmann::json::array();
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    const ActionRecord& r = it->record;
    list.push_back({{"time", formatIsoTime(r.time)},
                    {"kind", r.kind},
                    {"action", r.action},
                    {"target", r.target},
                    {"reason", r.reason},
                    {"by", r.by},
                    {"result", r.result}});
  }
  return nlohmann::json{{"actions", std::move(list)}};
}

std::string ActionLog::text() const {
  return jsonText(json());
}

}  // namespace portico::health
