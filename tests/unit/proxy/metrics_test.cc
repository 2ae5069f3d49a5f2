// The proxy's Prometheus text and the /commands JSON, from a hand-built
// StatsSnapshot: histogram buckets and sums printed exactly, label values
// escaped, logins by outcome, the protocol log's counters, and the command
// label bounded to the known names. (The whole /metrics page is parsed with
// prometheus_client's parser in tests/integration/test_metrics_dashboard.py.)
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "control/metrics.h"

namespace portico::proxy {
namespace {

using nlohmann::json;

RuntimeConfig twoBackends() {
  Config cfg;
  BackendConfig a;
  a.name = "mbx1";
  a.weight = 2.5;
  BackendConfig b;
  b.name = "mbx\"2";  // config validation forbids this; the renderer must still cope
  cfg.backends = {a, b};
  return RuntimeConfig(std::move(cfg), {0, 1});
}

bool hasLine(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    if (l == line) {
      return true;
    }
  }
  return false;
}

TEST(ProxyMetrics, HistogramBoundsAndSumsAreExact) {
  RuntimeConfig config = twoBackends();
  ProcessState shared;
  StatsSnapshot s;
  s.backends.resize(2);
  auto& fetch = s.backends[0].commands[static_cast<std::size_t>(CommandId::kFETCH)];
  fetch.count = 3;
  fetch.time_us = 123'456'789'012;  // 123456.789012 s: {:g} would print 123457
  fetch.histogram[0] = 1;
  fetch.histogram[20] = 1;  // <= 104.8576 s
  fetch.histogram[kBuckets - 1] = 1;
  const std::string text = renderProxyMetrics(s, config, shared);

  EXPECT_TRUE(hasLine(text, "# TYPE portico_command_duration_seconds histogram")) << text;
  EXPECT_TRUE(hasLine(text,
                      "portico_command_duration_seconds_bucket{backend=\"mbx1\",command=\"FETCH\","
                      "le=\"0.0001\"} 1"));
  EXPECT_TRUE(hasLine(text,
                      "portico_command_duration_seconds_bucket{backend=\"mbx1\",command=\"FETCH\","
                      "le=\"104.8576\"} 2"))
      << text;
  EXPECT_TRUE(hasLine(
      text,
      "portico_command_duration_seconds_bucket{backend=\"mbx1\",command=\"FETCH\",le=\"+Inf\"} 3"));
  EXPECT_TRUE(hasLine(
      text,
      "portico_command_duration_seconds_sum{backend=\"mbx1\",command=\"FETCH\"} 123456.789012"));
  EXPECT_TRUE(hasLine(
      text, "portico_command_duration_seconds_count{backend=\"mbx1\",command=\"FETCH\"} 3"));
  // Every bound reads back as the bucket's upper limit.
  for (std::size_t b = 0; b + 1 < kBuckets; ++b) {
    const std::string le = "le=\"";
    std::ostringstream want;
    want.precision(17);
    const double upper = bucketUpperSeconds(b);
    bool found = false;
    for (std::size_t pos = text.find(le); pos != std::string::npos; pos = text.find(le, pos + 1)) {
      const std::size_t end = text.find('"', pos + le.size());
      const std::string value = text.substr(pos + le.size(), end - pos - le.size());
      if (value != "+Inf" && std::stod(value) == upper) {
        found = true;
        break;
      }
    }
    EXPECT_TRUE(found) << "no le for bucket " << b << " (" << upper << ")";
  }
  // Commands never seen have no series: the label set stays small.
  EXPECT_EQ(text.find("command=\"NOOP\""), std::string::npos);
}

TEST(ProxyMetrics, LabelValuesAreEscapedAndWeightsShown) {
  RuntimeConfig config = twoBackends();
  ProcessState shared;
  shared.drained_by_operator[1] = true;
  StatsSnapshot s;
  const std::string text = renderProxyMetrics(s, config, shared);
  EXPECT_TRUE(hasLine(text, "portico_backend_drained{backend=\"mbx\\\"2\",by=\"operator\"} 1"))
      << text;
  EXPECT_TRUE(hasLine(text, "portico_backend_weight{backend=\"mbx1\"} 2.5"));
  EXPECT_TRUE(hasLine(text, "portico_backend_weight{backend=\"mbx\\\"2\"} 1"));
}

TEST(ProxyMetrics, LoginsByOutcomeAndProtocolLog) {
  RuntimeConfig config = twoBackends();
  ProcessState shared;
  StatsSnapshot s;
  s.backends.resize(3);
  s.backends[0].sessions_total = 4;
  s.backends[2].sessions_total = 1;  // a backend no longer configured still logged users in
  s.logins_rejected = 2;
  s.logins_unavailable = 7;
  std::string text = renderProxyMetrics(s, config, shared);
  EXPECT_TRUE(hasLine(text, "# TYPE portico_logins_total counter"));
  EXPECT_TRUE(hasLine(text, "portico_logins_total{outcome=\"success\"} 5")) << text;
  EXPECT_TRUE(hasLine(text, "portico_logins_total{outcome=\"rejected\"} 2"));
  EXPECT_TRUE(hasLine(text, "portico_logins_total{outcome=\"unavailable\"} 7"));
  // No writer yet: the counters are there, at zero.
  EXPECT_TRUE(hasLine(text, "portico_protocol_log_enabled 0"));
  EXPECT_TRUE(hasLine(text, "portico_protocol_log_dropped_records_total 0"));
  EXPECT_TRUE(hasLine(text, "portico_protocol_log_records_total 0"));
  TraceSettings on;
  on.on = true;
  shared.trace.set(on);
  text = renderProxyMetrics(s, config, shared);
  EXPECT_TRUE(hasLine(text, "portico_protocol_log_enabled 1"));
}

TEST(ProxyMetrics, CommandsJsonForTheStatusPage) {
  RuntimeConfig config = twoBackends();
  StatsSnapshot s;
  s.backends.resize(1);
  auto& select = s.backends[0].commands[static_cast<std::size_t>(CommandId::kSELECT)];
  select.count = 2;
  select.no = 1;
  select.time_us = 1'500;
  select.histogram[3] = 2;
  s.backends[0].idle.count = 1;
  s.backends[0].idle.histogram[kBuckets - 1] = 1;
  const json j = json::parse(renderCommandsJson(s, config));
  ASSERT_EQ(j["bucket_upper_seconds"].size(), kBuckets);
  EXPECT_EQ(j["bucket_upper_seconds"][0], 0.0001);
  EXPECT_TRUE(j["bucket_upper_seconds"][kBuckets - 1].is_null());
  ASSERT_EQ(j["backends"].size(), 2u);
  EXPECT_EQ(j["backends"][0]["name"], "mbx1");
  ASSERT_EQ(j["backends"][0]["commands"].size(), 1u);
  const json& c = j["backends"][0]["commands"][0];
  EXPECT_EQ(c["command"], "SELECT");
  EXPECT_EQ(c["count"], 2);
  EXPECT_EQ(c["no"], 1);
  EXPECT_EQ(c["bad"], 0);
  EXPECT_DOUBLE_EQ(c["sum_seconds"].get<double>(), 0.0015);
  ASSERT_EQ(c["buckets"].size(), kBuckets);
  EXPECT_EQ(c["buckets"][3], 2);
  EXPECT_EQ(j["backends"][0]["idle"]["count"], 1);
  // The second backend has no stats slot filled yet: listed, empty.
  EXPECT_EQ(j["backends"][1]["name"], "mbx\"2");
  EXPECT_TRUE(j["backends"][1]["commands"].empty());
  EXPECT_TRUE(j["backends"][1]["idle"].is_null());
}

// Every row of the counter lists reaches both outputs with its own value:
// each counter gets a distinct number, so a row wired to a neighbour's field
// or left out of a renderer fails here.
TEST(ProxyMetrics, EveryDeclaredCounterIsInMetricsAndStats) {
  RuntimeConfig config = twoBackends();
  ProcessState shared;
  StatsSnapshot s;
  s.backends.resize(2);
  for (std::size_t k = 0; k < kWorkerCounterCount; ++k) {
    s.*kWorkerSnapshotFields[k] = 1000 + k;
  }
  for (std::size_t k = 0; k < kBackendCounterCount; ++k) {
    s.backends[1].*kBackendSnapshotFields[k] = 2000 + k;
  }
  const std::string text = renderProxyMetrics(s, config, shared);
  const json stats = statsJson(s, config);
  for (std::size_t k = 0; k < kWorkerCounterCount; ++k) {
    const CounterSpec& spec = kWorkerCounters[k];
    EXPECT_TRUE(hasLine(text, fmt::format("{} {}", spec.metric, 1000 + k))) << spec.field;
    EXPECT_TRUE(hasLine(text, fmt::format("# TYPE {} {}", spec.family(), spec.type())))
        << spec.field;
    EXPECT_EQ(stats.value(spec.stats_key, json()), 1000 + k) << spec.field;
  }
  for (std::size_t k = 0; k < kBackendCounterCount; ++k) {
    const CounterSpec& spec = kBackendCounters[k];
    EXPECT_TRUE(hasLine(text, fmt::format("{}{{backend=\"mbx\\\"2\"}} {}", spec.metric, 2000 + k)))
        << spec.field;
    EXPECT_TRUE(hasLine(text, fmt::format("{}{{backend=\"mbx1\"}} 0", spec.metric))) << spec.field;
    EXPECT_TRUE(hasLine(text, fmt::format("# TYPE {} {}", spec.metric, spec.type()))) << spec.field;
    EXPECT_EQ(stats["backends"]["mbx\"2"].value(spec.stats_key, json()), 2000 + k) << spec.field;
    EXPECT_EQ(stats["backends"]["mbx1"].value(spec.stats_key, json()), 0) << spec.field;
  }
  // The one counter that used to be counted and never shown.
  EXPECT_TRUE(hasLine(text, "# TYPE portico_prelogin_bad_commands_total counter")) << text;
  EXPECT_TRUE(stats.contains("prelogin_bad_commands"));
}

TEST(ProxyMetrics, CommandLabelIsBoundedToKnownNames) {
  EXPECT_EQ(commandId("XYZZY"), CommandId::kOTHER);
  EXPECT_STREQ(commandName(commandId("alice")), "OTHER");
  EXPECT_STREQ(commandName(commandId("FETCH")), "FETCH");
}

}  // namespace
}  // namespace portico::proxy
