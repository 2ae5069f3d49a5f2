// Backend selection: weighted rendezvous hashing (highest random weight)
// of the normalised user over the enabled backends, with a static map that
// wins when its backend is enabled. Deterministic across processes and
// machines: the hash is fixed (not std::hash), so every Portico with the
// same config routes a user to the same backend, and disabling one backend
// moves only that backend's users.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace portico::proxy {

// Lower-cases ASCII and trims surrounding white space.
std::string normaliseUser(std::string_view user);

class BackendSelector {
 public:
  BackendSelector(const std::vector<BackendConfig>& backends,
                  std::map<std::string, std::string> map);

  // Indices into the backend list, best first: the mapped backend (if any
  // and enabled), then the enabled backends by descending rendezvous score.
  // `enabled[i]` false skips backend i; an empty vector means all enabled
  // (as do indices past its end). `user` is normalised here, so raw login
  // names may be passed.
  std::vector<std::size_t> candidates(std::string_view user,
                                      const std::vector<bool>& enabled = {}) const;

 private:
  struct Entry {
    std::string name;
    double weight;
    std::uint64_t name_hash;
  };
  std::vector<Entry> backends_;
  std::map<std::string, std::string> map_;
};

}  // namespace portico::proxy
