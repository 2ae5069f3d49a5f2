// portico: the IMAP proxy executable.
#include <CLI/CLI.hpp>

#include "portico/proxy.h"

// jemalloc (the release build's allocator) reads this at start-up; with
// another allocator it is an unused string. Background threads purge freed
// pages on time even when the workers are idle: without them a quiet worker
// never returns what its idle sessions gave back (Session::
// releaseIdleBuffers), because jemalloc purges only while allocating. The
// MALLOC_CONF environment variable still overrides it.
extern "C" {
// NOLINTNEXTLINE: the allocator looks this symbol up by name.
const char* malloc_conf = "background_thread:true";
}

int main(int argc, char** argv) {
  // First of all: secrets (keys, probe passwords, client logins) are read
  // later, and must never be in a core file.
  portico::proxy::setDumpable(false);
  CLI::App app{"Portico: an IMAP4 proxy with inline health checks"};
  std::string config = "/etc/portico/portico.toml";
  std::string check;
  bool show_version = false;
  app.add_option("-c,--config", config, "Configuration file (TOML)");
  app.add_option("--check-config", check, "Validate a configuration file and exit");
  app.add_flag("--version", show_version, "Print the version and exit");
  CLI11_PARSE(app, argc, argv);
  if (show_version) {
    std::printf("portico %s\n", portico::proxy::version());
    return 0;
  }
  if (!check.empty()) {
    return portico::proxy::checkConfig(check);
  }
  return portico::proxy::runProxy(config);
}
