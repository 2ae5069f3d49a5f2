// Internal to the logging library: formatting pieces shared by the record
// formatter and the writer (for the "#Date:" header line).
#pragma once

#include <cstdint>
#include <string>

namespace portico::logging::internal {

// Appends "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC) for Unix time `time_ms`. Times
// outside years 1970..9999 are clamped so the text keeps its fixed width.
void appendIsoTime(std::string& out, std::int64_t time_ms);

}  // namespace portico::logging::internal
