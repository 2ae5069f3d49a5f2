#include "fleet/fleet_state.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>

namespace portico::proxy::fleet {

namespace {

bool isNodeChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

}  // namespace

std::string encodeVerdict(const Verdict& verdict) {
  std::string out =
      verdict.drained ? (verdict.move_sessions ? "drained+move" : "drained") : "enabled";
  out += ' ';
  out += std::to_string(verdict.stamp_ms);
  out += ' ';
  out += verdict.node;
  return out;
}

std::optional<Verdict> decodeVerdict(std::string_view text) {
  std::size_t first = text.find(' ');
  if (first == std::string_view::npos) {
    return std::nullopt;
  }
  std::size_t second = text.find(' ', first + 1);
  if (second == std::string_view::npos) {
    return std::nullopt;
  }
  Verdict verdict;
  std::string_view state = text.substr(0, first);
  if (state == "drained") {
    verdict.drained = true;
  } else if (state == "drained+move") {
    verdict.drained = true;
    verdict.move_sessions = true;
  } else if (state != "enabled") {
    return std::nullopt;
  }
  std::string_view stamp = text.substr(first + 1, second - first - 1);
  auto [end, ec] = std::from_chars(stamp.data(), stamp.data() + stamp.size(), verdict.stamp_ms);
  if (ec != std::errc() || end != stamp.data() + stamp.size() || stamp.empty()) {
    return std::nullopt;
  }
  verdict.node = std::string(text.substr(second + 1));
  if (!nodeNameProblem(verdict.node).empty()) {
    return std::nullopt;
  }
  return verdict;
}

std::uint32_t quorumNeeded(std::uint32_t live_nodes, std::uint32_t configured) {
  return configured != 0 ? configured : live_nodes / 2 + 1;
}

std::vector<std::string> quorumDrains(const std::map<std::string, std::uint32_t>& votes,
                                      std::uint32_t live_nodes, std::uint32_t configured) {
  std::vector<std::string> out;
  if (live_nodes == 0) {
    return out;
  }
  const std::uint32_t needed = quorumNeeded(live_nodes, configured);
  for (const auto& [backend, count] : votes) {
    if (count >= needed) {
      out.push_back(backend);
    }
  }
  return out;
}

bool newer(const Verdict& a, const Verdict& b) {
  if (a.stamp_ms != b.stamp_ms) {
    return a.stamp_ms > b.stamp_ms;
  }
  return a.node > b.node;
}

std::string nodeNameProblem(std::string_view node) {
  if (node.empty() || node.size() > 64 || !std::all_of(node.begin(), node.end(), isNodeChar)) {
    return "a node name is 1 to 64 letters, digits, '.', '_' or '-'";
  }
  return "";
}

std::string defaultNodeName() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0 && nodeNameProblem(host).empty()) {
    return host;
  }
  return "portico";
}

void HoldTable::put(const std::string& user, Clock::time_point until) {
  holds_[user] = until;
}

bool HoldTable::erase(const std::string& user) {
  return holds_.erase(user) != 0;
}

void HoldTable::replace(const std::vector<std::pair<std::string, std::int64_t>>& remaining,
                        Clock::time_point now) {
  holds_.clear();
  for (const auto& [user, ms] : remaining) {
    if (ms > 0) {
      holds_[user] = now + std::chrono::milliseconds(ms);
    }
  }
}

std::size_t HoldTable::expire(Clock::time_point now) {
  return std::erase_if(holds_, [now](const auto& entry) { return entry.second <= now; });
}

bool HoldTable::held(const std::string& user, Clock::time_point now) const {
  auto it = holds_.find(user);
  return it != holds_.end() && it->second > now;
}

std::optional<std::string> LoginGate::refusal(const std::string& user,
                                              Clock::time_point now) const {
  if (!active_.load(std::memory_order_acquire)) {
    return std::nullopt;
  }
  if (refusing_.load(std::memory_order_relaxed)) {
    return std::string("[UNAVAILABLE] Fleet state unavailable, try again later.");
  }
  std::shared_ptr<const HoldTable> holds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    holds = holds_;
  }
  if (holds && holds->held(user, now)) {
    return std::string("[UNAVAILABLE] Your mailbox is being moved, try again later.");
  }
  return std::nullopt;
}

void LoginGate::setHolds(const HoldTable& holds) {
  auto next = holds.entries().empty() ? nullptr : std::make_shared<const HoldTable>(holds);
  {
    std::lock_guard<std::mutex> lock(mu_);
    holds_ = next;
  }
  active_.store(next != nullptr || refusing_.load(std::memory_order_relaxed),
                std::memory_order_release);
}

void LoginGate::setRefusing(bool refusing) {
  refusing_.store(refusing, std::memory_order_relaxed);
  bool any_holds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    any_holds = holds_ != nullptr;
  }
  active_.store(refusing || any_holds, std::memory_order_release);
}

}  // namespace portico::proxy::fleet
