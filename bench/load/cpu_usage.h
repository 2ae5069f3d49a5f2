// CPU accounting for the measured phase, read from /proc on Linux:
// - a process: utime + stime of /proc/PID/stat;
// - a process group (e.g. a Dovecot master and its imap/auth/login
//   children): the sum over its live and zombie members of utime + stime +
//   cutime + cstime. Children reaped by the master during the window move
//   into the master's cutime, so their work is not lost; their work from
//   before the window is then counted too (small for long-lived imap
//   processes);
// - the machine: busy and idle seconds of the "cpu" line of /proc/stat;
// - this process: getrusage(RUSAGE_SELF), all threads.
// Readers return false (and leave the value alone) when /proc has no entry.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace portico::load {

struct MachineTimes {
  double busy_s = 0;
  double idle_s = 0;  // idle + iowait
  int cores = 0;
};

// Resident memory of a process, from /proc/PID/status (KiB).
struct ProcessMemory {
  long rss_kib = -1;   // VmRSS
  long peak_kib = -1;  // VmHWM
};

struct CpuSnapshot {
  double self_s = 0;
  std::vector<double> pid_s;              // per --pid; negative when unreadable
  std::vector<ProcessMemory> pid_memory;  // per --pid
  std::vector<double> pgid_s;
  MachineTimes machine;
};

bool readProcessCpu(int pid, double& seconds);
bool readProcessMemory(int pid, ProcessMemory& out);
bool readGroupCpu(int pgid, double& seconds, int* members = nullptr);
bool readMachineTimes(MachineTimes& out);
double selfCpuSeconds();
std::string processName(int pid);  // comm, or "?" when gone

CpuSnapshot takeCpuSnapshot(const std::vector<int>& pids, const std::vector<int>& pgids);

}  // namespace portico::load
