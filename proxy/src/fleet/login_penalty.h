// Login-failure penalties across the fleet (limits.login_failures_per_ip,
// login_failures_per_user, login_failure_window): workers note each failed
// login (client IP and user name, never a password) here; the control loop
// takes the notes, counts them in Redis in a sliding window per IP and per
// user (sorted sets with a TTL, fleet/fleet_client.cc), and hands back the
// IPs and users over their limit, which every node's workers then refuse
// for the rest of the window. Pure bookkeeping, no I/O.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portico::proxy::fleet {

// The IP of an "IP:PORT" or "[IPv6]:PORT" client address.
std::string clientIp(std::string_view address);

class LoginPenalties {
 public:
  // Notes not yet taken beyond this are dropped (counted in dropped()).
  static constexpr std::size_t kMaxNotes = 10'000;

  // A failed login (worker).
  void record(std::string ip, std::string user);
  // The notes since the last call (control loop).
  std::vector<std::pair<std::string, std::string>> take();
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

  // The text after "TAG NO " when `ip` or `user` (normalised) is penalised.
  std::optional<std::string> refusal(std::string_view ip, const std::string& user) const;
  // Penalised "ip:IP" and "user:USER" entries, as read from Redis.
  void setPenalised(std::set<std::string> entries);

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> notes_;
  std::shared_ptr<const std::set<std::string>> penalised_;
  std::atomic<bool> active_{false};
  std::atomic<std::uint64_t> dropped_{0};
};

}  // namespace portico::proxy::fleet
