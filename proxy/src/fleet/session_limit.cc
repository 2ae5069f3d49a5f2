#include "fleet/session_limit.h"

#include <charconv>

namespace portico::proxy::fleet {

UserSlot& UserSlot::operator=(UserSlot&& other) noexcept {
  if (this != &other) {
    reset();
    counts_ = std::exchange(other.counts_, nullptr);
    user_ = std::move(other.user_);
  }
  return *this;
}

void UserSlot::reset() {
  if (counts_ != nullptr) {
    std::exchange(counts_, nullptr)->release(user_);
  }
}

bool SessionCounts::acquire(const std::string& user, std::uint32_t limit, UserSlot& slot) {
  slot.reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::uint32_t& mine = local_[user];
    if (limit != 0) {
      std::uint64_t others = 0;
      if (remote_) {
        auto it = remote_->find(user);
        others = it == remote_->end() ? 0 : it->second;
      }
      if (mine + others >= limit) {
        if (mine == 0) {
          local_.erase(user);
        }
        return false;
      }
    }
    ++mine;
  }
  generation_.fetch_add(1, std::memory_order_relaxed);
  slot = UserSlot(this, user);
  return true;
}

void SessionCounts::release(const std::string& user) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = local_.find(user);
    if (it == local_.end()) {
      return;
    }
    if (--it->second == 0) {
      local_.erase(it);
    }
  }
  generation_.fetch_add(1, std::memory_order_relaxed);
}

std::uint32_t SessionCounts::local(const std::string& user) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = local_.find(user);
  return it == local_.end() ? 0 : it->second;
}

std::uint32_t SessionCounts::remote(const std::string& user) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!remote_) {
    return 0;
  }
  auto it = remote_->find(user);
  return it == remote_->end() ? 0 : it->second;
}

CountMap SessionCounts::localCounts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return local_;
}

void SessionCounts::setRemote(CountMap remote) {
  auto next = remote.empty() ? nullptr : std::make_shared<const CountMap>(std::move(remote));
  std::lock_guard<std::mutex> lock(mu_);
  remote_ = std::move(next);
}

void addCounts(CountMap& sum, const std::string& user, const std::string& count) {
  std::uint32_t value = 0;
  auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), value);
  if (ec != std::errc() || end != count.data() + count.size() || user.empty() || value == 0) {
    return;
  }
  sum[user] += value;
}

}  // namespace portico::proxy::fleet
