#include "routing.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "portico/ascii.h"

namespace portico::proxy {

namespace {

// FNV-1a, 64 bit: fixed constants, so every process and machine agrees.
std::uint64_t fnv1a64(std::string_view text) {
  std::uint64_t hash = 14695981039346656037ULL;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ULL;
  }
  return hash;
}

// MurmurHash3's 64-bit finaliser: FNV alone mixes its low bits poorly, and
// the score needs every output bit to depend on every input bit.
std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// The top 53 bits as a double strictly inside (0, 1), so log() is finite
// and negative.
double unitInterval(std::uint64_t hash) {
  return (static_cast<double>(hash >> 11) + 0.5) * 0x1.0p-53;
}

}  // namespace

std::string normaliseUser(std::string_view user) {
  auto isSpace = [](char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
  };
  while (!user.empty() && isSpace(user.front())) {
    user.remove_prefix(1);
  }
  while (!user.empty() && isSpace(user.back())) {
    user.remove_suffix(1);
  }
  return asciiLowered(user);
}

BackendSelector::BackendSelector(const std::vector<BackendConfig>& backends,
                                 std::map<std::string, std::string> map) {
  backends_.reserve(backends.size());
  for (const BackendConfig& backend : backends) {
    backends_.push_back({backend.name, backend.weight, mix64(fnv1a64(backend.name))});
  }
  // Keys are normalised again so a hand-built map behaves like a loaded one.
  for (auto& [user, backend] : map) {
    map_.emplace(normaliseUser(user), std::move(backend));
  }
}

std::vector<std::size_t> BackendSelector::candidates(std::string_view user,
                                                     const std::vector<bool>& enabled) const {
  auto isEnabled = [&](std::size_t i) { return i >= enabled.size() || enabled[i]; };
  std::string key = normaliseUser(user);
  std::vector<std::size_t> out;
  out.reserve(backends_.size());

  std::size_t mapped = backends_.size();
  if (auto it = map_.find(key); it != map_.end()) {
    for (std::size_t i = 0; i < backends_.size(); ++i) {
      if (backends_[i].name == it->second && isEnabled(i)) {
        mapped = i;
        out.push_back(i);
        break;
      }
    }
  }

  // Weighted rendezvous: score = -weight / ln(u) with u uniform in (0, 1)
  // per (user, backend). The best score wins with probability proportional
  // to weight, and a backend's score does not depend on the others, so
  // removing one moves only the users it was winning.
  std::uint64_t user_hash = mix64(fnv1a64(key));
  std::vector<std::pair<double, std::size_t>> scored;
  scored.reserve(backends_.size());
  for (std::size_t i = 0; i < backends_.size(); ++i) {
    if (i == mapped || !isEnabled(i)) {
      continue;
    }
    double u = unitInterval(mix64(user_hash ^ backends_[i].name_hash));
    scored.emplace_back(-backends_[i].weight / std::log(u), i);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (const auto& [score, index] : scored) {
    out.push_back(index);
  }
  return out;
}

}  // namespace portico::proxy
