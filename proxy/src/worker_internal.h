// Helpers shared by the worker's source files (worker*.cc). Not part of
// any public interface.
#pragma once

#include <fcntl.h>
#include <uv.h>

#include <cstring>

#include "config/config.h"

namespace portico::proxy::worker_detail {

inline bool toSockaddr(const HostPort& hp, sockaddr_storage& out) {
  std::memset(&out, 0, sizeof(out));
  if (hp.ipv6) {
    return uv_ip6_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(&out)) == 0;
  }
  return uv_ip4_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in*>(&out)) == 0;
}

// The descriptor given up at EMFILE to answer one connection.
inline int openReserve() {
  return ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

}  // namespace portico::proxy::worker_detail
