#include "fleet/login_penalty.h"

namespace portico::proxy::fleet {

std::string clientIp(std::string_view address) {
  std::size_t colon = address.rfind(':');
  std::string_view host = colon == std::string_view::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::string(host);
}

void LoginPenalties::record(std::string ip, std::string user) {
  std::lock_guard<std::mutex> lock(mu_);
  if (notes_.size() >= kMaxNotes) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  notes_.emplace_back(std::move(ip), std::move(user));
}

std::vector<std::pair<std::string, std::string>> LoginPenalties::take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(notes_, {});
}

std::optional<std::string> LoginPenalties::refusal(std::string_view ip,
                                                   const std::string& user) const {
  if (!active_.load(std::memory_order_acquire)) {
    return std::nullopt;
  }
  std::shared_ptr<const std::set<std::string>> penalised;
  {
    std::lock_guard<std::mutex> lock(mu_);
    penalised = penalised_;
  }
  if (penalised &&
      (penalised->count("ip:" + std::string(ip)) != 0 || penalised->count("user:" + user) != 0)) {
    return std::string("[UNAVAILABLE] Too many failed logins, try again later.");
  }
  return std::nullopt;
}

void LoginPenalties::setPenalised(std::set<std::string> entries) {
  auto next =
      entries.empty() ? nullptr : std::make_shared<const std::set<std::string>>(std::move(entries));
  const bool any = next != nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    penalised_ = std::move(next);
  }
  active_.store(any, std::memory_order_release);
}

}  // namespace portico::proxy::fleet
