// The process's dealings with its service manager and its privileges.
//
// Service manager: sd_notify(3) messages through libsystemd when Portico is
// built with it (PORTICO_SYSTEMD, on when libsystemd is found). Each call is
// a no-op when NOTIFY_SOCKET is unset (not started by systemd with
// Type=notify) or when built without libsystemd. None blocks: a notify is
// one datagram.
//   READY=1       listeners bound, workers running (and again after a reload)
//   RELOADING=1   with MONOTONIC_USEC, at the start of a reload (SIGHUP or
//                 the admin socket's `reload`)
//   STOPPING=1    when shutdown begins
//   STATUS=...    a one-line state for `systemctl status`
//
// Privileges: started as root with [process] user set, Portico binds its
// listeners, the status endpoint and the admin socket first, hands the
// admin socket (and a socket directory it created) to that user, then
// switches user for good: initgroups(), setgid(), setuid(). It checks that
// the switch took (real, effective and saved ids; setuid(0) refused) and
// the caller refuses to go on when it did not. Started as that user
// already (systemd's User=), there is nothing to do; started as another
// unprivileged user, the switch is impossible and an error.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "portico/status.h"

namespace portico::proxy {

// True when built with libsystemd.
bool haveSystemdNotify();
void notifyReady(const std::string& status);
void notifyReloading();
void notifyStopping(const std::string& status);
void notifyStatus(const std::string& status);

struct Identity {
  std::string user;
  std::string group;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Looks up [process] user (and group, default the user's primary group).
// An error when either does not exist; nullopt when no user is configured.
Result<std::optional<Identity>> resolveIdentity(const ProcessConfig& config);

// A path to hand to the new user before the switch.
struct Handover {
  std::string path;
  bool keep_group = false;  // e.g. the admin socket with its own [admin] group
};

// Switches to `identity` for good (see above). An error if anything
// failed; the process must not go on then.
Status dropPrivileges(const Identity& identity, const std::vector<Handover>& handover);

}  // namespace portico::proxy
