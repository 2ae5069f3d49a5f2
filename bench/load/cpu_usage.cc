#include "cpu_usage.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace portico::load {
namespace {

double clockTicks() {
  static const double ticks = [] {
    long t = sysconf(_SC_CLK_TCK);
    return t > 0 ? static_cast<double>(t) : 100.0;
  }();
  return ticks;
}

bool readFile(const std::string& path, std::string& out) {
  std::FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) {
    return false;
  }
  char buf[4096];
  out.clear();
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
    out.append(buf, n);
  }
  std::fclose(f);
  return !out.empty();
}

// Fields of /proc/PID/stat after the ")" closing the command name: [0] is
// field 3 (state), so field k (1-based, man proc) is at index k - 3.
bool statFields(int pid, std::vector<std::string>& fields, std::string* comm = nullptr) {
  std::string text;
  if (!readFile("/proc/" + std::to_string(pid) + "/stat", text)) {
    return false;
  }
  std::size_t open = text.find('(');
  std::size_t close = text.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) {
    return false;
  }
  if (comm != nullptr) {
    *comm = text.substr(open + 1, close - open - 1);
  }
  std::istringstream in(text.substr(close + 1));
  fields.clear();
  std::string f;
  while (in >> f) {
    fields.push_back(f);
  }
  return fields.size() >= 15;
}

double ticksAt(const std::vector<std::string>& fields, int field) {
  return std::strtod(fields[static_cast<std::size_t>(field - 3)].c_str(), nullptr);
}

}  // namespace

bool readProcessCpu(int pid, double& seconds) {
  std::vector<std::string> fields;
  if (!statFields(pid, fields)) {
    return false;
  }
  seconds = (ticksAt(fields, 14) + ticksAt(fields, 15)) / clockTicks();
  return true;
}

bool readProcessMemory(int pid, ProcessMemory& out) {
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (f == nullptr) {
    return false;
  }
  char line[256];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    long value = 0;
    if (std::sscanf(line, "VmRSS: %ld kB", &value) == 1) {
      out.rss_kib = value;
    } else if (std::sscanf(line, "VmHWM: %ld kB", &value) == 1) {
      out.peak_kib = value;
    }
  }
  std::fclose(f);
  return out.rss_kib >= 0;
}

bool readGroupCpu(int pgid, double& seconds, int* members) {
  DIR* dir = opendir("/proc");
  if (dir == nullptr) {
    return false;
  }
  double ticks = 0;
  int found = 0;
  std::vector<std::string> fields;
  while (dirent* entry = readdir(dir)) {
    if (!std::isdigit(static_cast<unsigned char>(entry->d_name[0]))) {
      continue;
    }
    int pid = std::atoi(entry->d_name);
    if (!statFields(pid, fields) || std::atoi(fields[2].c_str()) != pgid) {
      continue;
    }
    ticks += ticksAt(fields, 14) + ticksAt(fields, 15) + ticksAt(fields, 16) + ticksAt(fields, 17);
    ++found;
  }
  closedir(dir);
  if (members != nullptr) {
    *members = found;
  }
  if (found == 0) {
    return false;
  }
  seconds = ticks / clockTicks();
  return true;
}

bool readMachineTimes(MachineTimes& out) {
  std::ifstream in("/proc/stat");
  std::string label;
  if (!(in >> label) || label != "cpu") {
    return false;
  }
  double v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (double& x : v) {
    if (!(in >> x)) {
      return false;
    }
  }
  // user nice system idle iowait irq softirq steal
  out.busy_s = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / clockTicks();
  out.idle_s = (v[3] + v[4]) / clockTicks();
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  out.cores = cores > 0 ? static_cast<int>(cores) : 1;
  return true;
}

double selfCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string processName(int pid) {
  std::vector<std::string> fields;
  std::string comm;
  if (!statFields(pid, fields, &comm)) {
    return "?";
  }
  return comm;
}

CpuSnapshot takeCpuSnapshot(const std::vector<int>& pids, const std::vector<int>& pgids) {
  CpuSnapshot s;
  s.self_s = selfCpuSeconds();
  for (int pid : pids) {
    double v = -1;
    readProcessCpu(pid, v);
    s.pid_s.push_back(v);
    ProcessMemory m;
    readProcessMemory(pid, m);
    s.pid_memory.push_back(m);
  }
  for (int pgid : pgids) {
    double v = -1;
    readGroupCpu(pgid, v);
    s.pgid_s.push_back(v);
  }
  readMachineTimes(s.machine);
  return s;
}

}  // namespace portico::load
