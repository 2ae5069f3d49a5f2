// Portico's proxy library: runs the IMAP proxy described by a config file.
// The executable `portico` is a thin CLI around runProxy().
#pragma once

#include <string>

namespace portico::proxy {

const char* version();

// Loads the config, starts workers and the control loop, and runs until
// SIGTERM/SIGINT. Returns the process exit status.
int runProxy(const std::string& config_path);

// Loads and validates the config only; prints errors. Returns 0 if valid.
int checkConfig(const std::string& config_path);

// PR_SET_DUMPABLE: false means no core dump and no ptrace attach (or
// /proc/PID/mem read) by the user's other processes, so passwords in memory
// stay there. main() calls setDumpable(false) before anything is read;
// runProxy() then applies [process] dumpable. False if prctl failed.
bool setDumpable(bool dumpable);

}  // namespace portico::proxy
