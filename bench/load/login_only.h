// portico_load --login-only: each of --sessions clients (one thread each,
// blocking sockets with --timeout) repeats connect, greeting, LOGIN, LOGOUT,
// close for --duration. Reports logins/s, LOGIN latency (LOGIN sent to its
// tagged reply) and CPU per login of --pid / --pgid, this tool and the
// machine. Kept apart from the event-loop scenarios: a login-only client
// spends its life connecting, which the session machinery does not model.
#pragma once

#include <sys/socket.h>

#include <string>

#include "load_options.h"

namespace portico::load {

// Exit code as main()'s: 0 ok, 1 some logins failed.
int runLoginOnly(const Options& o, const sockaddr_storage& address, const std::string& target);

}  // namespace portico::load
