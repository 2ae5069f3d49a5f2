// Prometheus text exposition helpers shared by the health library's
// /metrics part (probes, monitors) and the proxy's (counters, histograms).
#pragma once

#include <string>
#include <string_view>

namespace portico {

// A label value as the text format wants it: backslash, quote and newline
// escaped. Names from the config (backends, monitors) are escaped too.
inline std::string prometheusLabel(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace portico
