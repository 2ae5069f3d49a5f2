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

}  // namespace portico::proxy
