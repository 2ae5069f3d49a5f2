#include "control/process.h"

#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#if PORTICO_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace portico::proxy {

namespace {

#if PORTICO_HAVE_SYSTEMD
void notify(const std::string& message) {
  // unset_environment = 0: hooks started later inherit NOTIFY_SOCKET, but
  // systemd takes messages from the main process only (NotifyAccess=main).
  (void)sd_notify(0, message.c_str());
}
#else
void notify(const std::string&) {}
#endif

std::string oneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') {
      c = ' ';
    }
  }
  return text;
}

}  // namespace

bool haveSystemdNotify() {
  return PORTICO_HAVE_SYSTEMD != 0;
}

void notifyReady(const std::string& status) {
  notify("READY=1\nSTATUS=" + oneLine(status));
}

void notifyReloading() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const auto usec = static_cast<unsigned long long>(now.tv_sec) * 1'000'000ULL +
                    static_cast<unsigned long long>(now.tv_nsec) / 1'000ULL;
  notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration", usec));
}

void notifyStopping(const std::string& status) {
  notify("STOPPING=1\nSTATUS=" + oneLine(status));
}

void notifyStatus(const std::string& status) {
  notify("STATUS=" + oneLine(status));
}

Result<std::optional<Identity>> resolveIdentity(const ProcessConfig& config) {
  if (config.user.empty()) {
    return std::optional<Identity>();
  }
  Identity id;
  char buf[4096];
  struct passwd pw {};
  struct passwd* found_user = nullptr;
  int rc = ::getpwnam_r(config.user.c_str(), &pw, buf, sizeof(buf), &found_user);
  if (rc != 0 || found_user == nullptr) {
    return Status::error(fmt::format("[process] user '{}': {}", config.user,
                                     rc != 0 ? std::strerror(rc) : "no such user"));
  }
  id.user = found_user->pw_name;
  id.uid = found_user->pw_uid;
  id.gid = found_user->pw_gid;
  if (!config.group.empty()) {
    struct group gr {};
    struct group* found_group = nullptr;
    char gbuf[4096];
    rc = ::getgrnam_r(config.group.c_str(), &gr, gbuf, sizeof(gbuf), &found_group);
    if (rc != 0 || found_group == nullptr) {
      return Status::error(fmt::format("[process] group '{}': {}", config.group,
                                       rc != 0 ? std::strerror(rc) : "no such group"));
    }
    id.gid = found_group->gr_gid;
    id.group = found_group->gr_name;
  } else {
    struct group gr {};
    struct group* found_group = nullptr;
    char gbuf[4096];
    if (::getgrgid_r(id.gid, &gr, gbuf, sizeof(gbuf), &found_group) == 0 &&
        found_group != nullptr) {
      id.group = found_group->gr_name;
    } else {
      id.group = std::to_string(id.gid);
    }
  }
  return std::optional<Identity>(std::move(id));
}

Status dropPrivileges(const Identity& id, const std::vector<Handover>& handover) {
  uid_t ruid = 0, euid = 0, suid = 0;
  gid_t rgid = 0, egid = 0, sgid = 0;
  if (::geteuid() != 0) {
    ::getresuid(&ruid, &euid, &suid);
    if (ruid == id.uid && euid == id.uid && suid == id.uid) {
      return Status();  // started as that user already (systemd's User=)
    }
    return Status::error(
        fmt::format("cannot switch to user {}: running as uid {}, not root", id.user, euid));
  }
  for (const Handover& h : handover) {
    if (::chown(h.path.c_str(), id.uid, h.keep_group ? static_cast<gid_t>(-1) : id.gid) != 0) {
      return Status::error(
          fmt::format("cannot hand {} to {}: {}", h.path, id.user, std::strerror(errno)));
    }
  }
  if (::initgroups(id.user.c_str(), id.gid) != 0) {
    return Status::error(fmt::format("initgroups({}): {}", id.user, std::strerror(errno)));
  }
  // Group first: once the uid is gone, the gid can no longer be changed.
  if (::setgid(id.gid) != 0) {
    return Status::error(fmt::format("setgid({}): {}", id.gid, std::strerror(errno)));
  }
  if (::setuid(id.uid) != 0) {
    return Status::error(fmt::format("setuid({}): {}", id.uid, std::strerror(errno)));
  }
  // Check that it took, everywhere, and cannot be undone.
  if (::getresuid(&ruid, &euid, &suid) != 0 || ::getresgid(&rgid, &egid, &sgid) != 0 ||
      ruid != id.uid || euid != id.uid || suid != id.uid || rgid != id.gid || egid != id.gid ||
      sgid != id.gid) {
    return Status::error(fmt::format("the switch to {}:{} did not take", id.user, id.group));
  }
  if (id.uid != 0 && ::setuid(0) == 0) {
    return Status::error("setuid(0) still works after the switch");
  }
  return Status();
}

}  // namespace portico::proxy
