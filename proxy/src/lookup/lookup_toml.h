// Reads the [lookup] table of Portico's configuration into a LookupConfig.
// Kept apart from lookup_config.h so that only the configuration reader
// pulls in toml++.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <toml++/toml.h>

#include "lookup/lookup_config.h"

namespace portico::proxy {

// Receives each error as (line in the file, message); the caller adds the
// file name, so messages read "FILE:LINE: message" like config.cc's.
using LookupConfigErrorSink = std::function<void(std::uint32_t line, const std::string& message)>;

// Fills `out` from `table` (the [lookup] table), reporting every problem to
// `error`: unknown keys (with a "did you mean"), wrong types, bad values,
// keys that belong to the other kind, a missing url for kind = "http".
// Never throws. Absent keys keep LookupConfig's defaults.
void readLookupConfig(const toml::table& table, LookupConfig& out,
                      const LookupConfigErrorSink& error);

}  // namespace portico::proxy
