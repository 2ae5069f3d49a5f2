#include <fmt/format.h>

#include "lookup/lookup_shared.h"

namespace portico::proxy {

std::string renderLookupMetrics(const LookupStats& s) {
  std::string out;
  auto it = std::back_inserter(out);
  auto load = [](const std::atomic<std::uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  out +=
      "# HELP portico_lookup_duration_seconds Directory lookups (http, redis): time from the "
      "question to the answer; cache hits are not timed.\n"
      "# TYPE portico_lookup_duration_seconds histogram\n";
  std::uint64_t cumulative = 0;
  for (std::size_t b = 0; b < LookupStats::kLatencyBoundsMs.size(); ++b) {
    cumulative += load(s.latency_buckets[b]);
    fmt::format_to(it, "portico_lookup_duration_seconds_bucket{{le=\"{}\"}} {}\n",
                   static_cast<double>(LookupStats::kLatencyBoundsMs[b]) / 1000.0, cumulative);
  }
  cumulative += load(s.latency_buckets[LookupStats::kLatencyBoundsMs.size()]);
  fmt::format_to(it, "portico_lookup_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", cumulative);
  fmt::format_to(it, "portico_lookup_duration_seconds_sum {}\n",
                 static_cast<double>(load(s.latency_sum_us)) / 1e6);
  fmt::format_to(it, "portico_lookup_duration_seconds_count {}\n", load(s.latency_count));
  out +=
      "# HELP portico_lookup_answers_total Directory answers by outcome (route, refuse, "
      "no_entry, unavailable), cache hits included.\n"
      "# TYPE portico_lookup_answers_total counter\n";
  for (std::size_t o = 0; o < kLookupOutcomeCount; ++o) {
    fmt::format_to(it, "portico_lookup_answers_total{{outcome=\"{}\"}} {}\n",
                   lookupOutcomeName(static_cast<LookupOutcome>(o)), load(s.answers[o]));
  }
  out +=
      "# HELP portico_lookup_cache_hits_total Logins routed from the positive-answer cache.\n"
      "# TYPE portico_lookup_cache_hits_total counter\n";
  fmt::format_to(it, "portico_lookup_cache_hits_total {}\n", load(s.cache_hits));
  out +=
      "# HELP portico_lookup_cache_misses_total Logins the cache could not answer.\n"
      "# TYPE portico_lookup_cache_misses_total counter\n";
  fmt::format_to(it, "portico_lookup_cache_misses_total {}\n", load(s.cache_misses));
  return out;
}

}  // namespace portico::proxy
