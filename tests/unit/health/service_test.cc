// HealthService: probe definitions and monitors from the config, the JSON
// shapes (Exchange's field names), the HTTP routes end to end (a client
// thread against the real status server and a fake IMAP backend), and the
// drain/hook/undrain path with short intervals.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "fake_imap_server.h"
#include "portico/health.h"
#include "status_testing.h"

namespace portico::health {
namespace {

using fakes::FakeImapServer;
using nlohmann::json;

class FakeProxy : public ProxyView {
 public:
  std::vector<BackendLoad> backendLoad() override {
    std::vector<BackendLoad> out;
    for (const std::string& name : names) {
      BackendLoad b;
      b.name = name;
      b.drained_by_operator = all_drained_by_operator.load();
      b.drained_by_responder = drained.count(name) > 0;
      b.sessions = 3;
      b.queued = 1;
      b.average_processing_ms = 12.5;
      b.recent_commands = 40;
      out.push_back(b);
    }
    return out;
  }
  void setDrainedByResponder(const std::string& backend, bool is_drained, bool) override {
    calls.push_back(backend + (is_drained ? " drained" : " undrained"));
    if (is_drained) {
      drained.insert(backend);
    } else {
      drained.erase(backend);
    }
  }
  bool listenersUp() override { return true; }
  std::string proxyMetrics() override { return "portico_connections_total 7\n"; }

  std::vector<std::string> names{"mbx1", "mbx2"};
  std::atomic<bool> all_drained_by_operator{false};
  std::set<std::string> drained;
  std::vector<std::string> calls;
};

std::set<std::string> keys(const json& object) {
  std::set<std::string> out;
  for (const auto& [key, value] : object.items()) {
    out.insert(key);
  }
  return out;
}

HealthConfig baseConfig(std::uint16_t backend_port, std::uint16_t proxy_port) {
  HealthConfig config;
  config.server_name = "portico-test";
  config.proxy_listener = Endpoint{"127.0.0.1", proxy_port, false};
  config.backends.push_back({"mbx1", {"127.0.0.1", backend_port, false}, "probe", "s3cret-pw"});
  config.backends.push_back({"mbx2", {"127.0.0.1", backend_port, false}, "", ""});
  config.status_listen = Endpoint{"127.0.0.1", 0, false};
  return config;
}

TEST(HealthService, MonitorsAndJsonShapesFromConfig) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  {
    FakeProxy proxy;
    HealthService service(&loop, baseConfig(1, 2), proxy);
    const json health = json::parse(service.healthJson("*"));
    EXPECT_EQ(keys(health),
              (std::set<std::string>{"Server", "Offline", "Responders", "ComponentState",
                                     "Monitors", "ResponderActions"}));
    EXPECT_EQ(health["Responders"], "act");
    EXPECT_EQ(health["ComponentState"], "Active");
    std::multiset<std::string> names;
    for (const json& m : health["Monitors"]) {
      names.insert(m["Name"].get<std::string>() + "/" + m["TargetResource"].get<std::string>());
      EXPECT_EQ(keys(m),
                (std::set<std::string>{"Server", "State", "Name", "TargetResource", "HealthSetName",
                                       "AlertValue", "ServerComponent", "FirstAlertObservedTime",
                                       "LastTransitionTime", "LastExecutionTime",
                                       "LastExecutionResult", "Error"}));
      EXPECT_EQ(m["Server"], "portico-test");
      EXPECT_EQ(m["State"], "Online");
      EXPECT_EQ(m["ServerComponent"], "Imap");
      EXPECT_EQ(m["AlertValue"], "Unknown");
      EXPECT_TRUE(m["LastExecutionTime"].is_null());
    }
    // Login probes only for the backend with a probe user.
    EXPECT_EQ(names, (std::multiset<std::string>{
                         "ImapProxyTestMonitor/", "ImapCTPMonitor/mbx1", "ImapSelfTestMonitor/mbx1",
                         "ImapSelfTestMonitor/mbx2", "ImapDeepTestMonitor/mbx1",
                         "AverageCommandProcessingTimeGt60sMonitor/mbx1",
                         "AverageCommandProcessingTimeGt60sMonitor/mbx2",
                         "RequestsQueuedGt500Monitor/mbx1", "RequestsQueuedGt500Monitor/mbx2"}));

    const json protocol = json::parse(service.healthJson("imap.pro*"));
    for (const json& m : protocol["Monitors"]) {
      EXPECT_NE(m["HealthSetName"], "IMAP");
    }
    EXPECT_EQ(protocol["Monitors"].size(), 4u);

    const json report = json::parse(service.reportJson());
    ASSERT_EQ(report["HealthSets"].size(), 3u);
    std::map<std::string, int> counts;
    for (const json& set : report["HealthSets"]) {
      EXPECT_EQ(keys(set), (std::set<std::string>{"Server", "State", "HealthSet", "AlertValue",
                                                  "LastTransitionTime", "MonitorCount"}));
      counts[set["HealthSet"]] = set["MonitorCount"];
    }
    EXPECT_EQ(counts,
              (std::map<std::string, int>{{"IMAP", 5}, {"IMAP.Protocol", 3}, {"IMAP.Proxy", 1}}));

    const json probes = json::parse(service.probesJson("IMAP.Protocol", "ImapSelfTestProbe"));
    ASSERT_EQ(probes["Targets"].size(), 2u);
    EXPECT_EQ(probes["Targets"][0]["IntervalMs"], 60'000);
    EXPECT_EQ(probes["Targets"][0]["TimeoutMs"], 55'000);
    EXPECT_EQ(probes["Targets"][0]["Retries"], 3);

    const json backends = json::parse(service.backendsJson());
    ASSERT_EQ(backends["backends"].size(), 2u);
    EXPECT_EQ(keys(backends["backends"][0]),
              (std::set<std::string>{"name", "weight", "state", "drained_by_responder",
                                     "drained_by_operator", "drained_by_fleet", "sessions",
                                     "queued", "average_processing_ms", "recent_commands"}));
    EXPECT_EQ(backends["backends"][0]["state"], "enabled");

    const std::string metrics = service.metricsText();
    EXPECT_NE(metrics.find("portico_monitor_state{monitor=\"ImapSelfTestMonitor\",target=\"mbx1\","
                           "health_set=\"IMAP.Protocol\"} 0\n"),
              std::string::npos)
        << metrics;
    EXPECT_NE(metrics.find("portico_monitor_unhealthy{"), std::string::npos);
    EXPECT_NE(metrics.find("portico_offline 0\n"), std::string::npos);
    EXPECT_TRUE(metrics.ends_with("portico_connections_total 7\n"));

    std::string reason;
    EXPECT_TRUE(service.ready(&reason));
    proxy.all_drained_by_operator = true;
    EXPECT_FALSE(service.ready(&reason));
    EXPECT_EQ(reason, "every backend is drained");
    EXPECT_EQ(json::parse(service.backendsJson())["backends"][0]["state"], "drained-by-operator");

    proxy.all_drained_by_operator = false;
    service.setComponentActive(false, "root (uid 0)");
    EXPECT_FALSE(service.ready(&reason));
    EXPECT_EQ(reason, "ImapProxy set Inactive by root (uid 0)");
    EXPECT_EQ(json::parse(service.healthJson("*"))["ComponentState"], "Inactive");
    service.setComponentActive(true, "root (uid 0)");
    EXPECT_TRUE(service.ready(&reason)) << reason;
    EXPECT_TRUE(service.componentActive());

    EXPECT_TRUE(service.setMonitorOverride("ImapSelfTestMonitor", "mbx2", AlertValue::kDisabled));
    EXPECT_FALSE(service.setMonitorOverride("ImapSelfTestMonitor", "mbx2", AlertValue::kHealthy));
    EXPECT_FALSE(service.setMonitorOverride("NoSuchMonitor", "", AlertValue::kDisabled));
    const json after = json::parse(service.healthJson("IMAP.Protocol"));
    bool seen = false;
    for (const json& m : after["Monitors"]) {
      if (m["Name"] == "ImapSelfTestMonitor" && m["TargetResource"] == "mbx2") {
        EXPECT_EQ(m["AlertValue"], "Disabled");
        EXPECT_FALSE(m["LastTransitionTime"].is_null());
        seen = true;
      }
    }
    EXPECT_TRUE(seen);
    EXPECT_EQ(service.statusPort(), 0);
  }
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// --- HTTP, end to end -------------------------------------------------------

struct HttpReply {
  int status = 0;
  std::string head;
  std::string body;
};

HttpReply http(std::uint16_t port, const std::string& method, const std::string& target) {
  HttpReply reply;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return reply;
  }
  const std::string request = method + " " + target +
                              " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                              "Content-Length: 0\r\n\r\n";
  (void)!::send(fd, request.data(), request.size(), 0);
  std::string data;
  char buffer[4096];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) {
    data.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const std::size_t end = data.find("\r\n\r\n");
  if (data.size() > 12 && end != std::string::npos) {
    reply.status = std::stoi(data.substr(9, 3));
    reply.head = data.substr(0, end);
    reply.body = data.substr(end + 4);
  }
  return reply;
}

TEST(HealthService, HttpRoutes) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  FakeImapServer backend(&loop, {});
  FakeProxy proxy;
  HealthConfig config = baseConfig(backend.port(), backend.port());
  config.backends[1].probe_user = "probe";
  config.backends[1].probe_password = "Wr0ngPass";
  for (const char* probe :
       {"ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe"}) {
    config.probes[probe] = ProbeSettings{std::chrono::hours(1), Millis(3'000), 0};
  }
  HealthService service(&loop, config, proxy);
  std::string error;
  ASSERT_TRUE(IsOk(service.start()));
  const std::uint16_t port = service.statusPort();
  ASSERT_NE(port, 0);

  struct Shared {
    HealthService* service;
    FakeImapServer* backend;
    bool stopped = false;
  } shared{&service, &backend};
  uv_async_t finished;
  finished.data = &shared;
  uv_async_init(&loop, &finished, [](uv_async_t* async) {
    auto* s = static_cast<Shared*>(async->data);
    s->service->stop([s] {
      s->stopped = true;
      s->backend->stop();
    });
    uv_close(reinterpret_cast<uv_handle_t*>(async), nullptr);
  });

  std::map<std::string, HttpReply> replies;
  std::thread client([&] {
    replies["healthz"] = http(port, "GET", "/healthz");
    replies["readyz"] = http(port, "GET", "/readyz");
    replies["invoke"] = http(port, "POST", "/probes/IMAP.Protocol/ImapDeepTestProbe?target=mbx1");
    replies["invoke-bad"] =
        http(port, "POST", "/probes/IMAP.Protocol/ImapDeepTestProbe?target=mbx2");
    replies["invoke-proxy"] = http(port, "POST", "/probes/IMAP.Proxy/ImapProxyTestProbe");
    replies["no-target"] = http(port, "POST", "/probes/IMAP.Protocol/ImapSelfTestProbe");
    replies["unknown-target"] =
        http(port, "POST", "/probes/IMAP.Protocol/ImapSelfTestProbe?target=nope");
    replies["results"] = http(port, "GET", "/probes/imap.protocol/ImapDeepTestProbe?target=mbx1");
    replies["no-probe"] = http(port, "GET", "/probes/IMAP/NoSuchProbe");
    replies["health"] = http(port, "GET", "/health?set=IMAP.Pr%6F*");
    replies["report"] = http(port, "GET", "/health/report");
    replies["backends"] = http(port, "GET", "/backends");
    replies["metrics"] = http(port, "GET", "/metrics");
    replies["405"] = http(port, "DELETE", "/health");
    replies["404"] = http(port, "GET", "/nope");
    proxy.all_drained_by_operator = true;
    replies["unready"] = http(port, "GET", "/readyz");
    uv_async_send(&finished);
  });
  uv_run(&loop, UV_RUN_DEFAULT);
  client.join();
  EXPECT_TRUE(shared.stopped);

  EXPECT_EQ(replies["healthz"].status, 200);
  EXPECT_EQ(json::parse(replies["healthz"].body), json({{"status", "alive"}}));
  EXPECT_EQ(replies["readyz"].status, 200);

  ASSERT_EQ(replies["invoke"].status, 200) << replies["invoke"].body;
  const json invoked = json::parse(replies["invoke"].body);
  EXPECT_EQ(keys(invoked),
            (std::set<std::string>{"ProbeName", "HealthSetName", "TargetResource", "ResultType",
                                   "ExecutionStartTime", "ExecutionEndTime", "SampleValue", "Error",
                                   "FailureContext", "RetryCount", "Trace"}));
  EXPECT_EQ(invoked["ResultType"], "Succeeded");
  EXPECT_TRUE(invoked["FailureContext"].is_null());
  EXPECT_TRUE(invoked["ExecutionStartTime"].get<std::string>().ends_with("Z"));
  EXPECT_EQ(invoked["ExecutionStartTime"].get<std::string>().size(), 24u);  // ms precision

  ASSERT_EQ(replies["invoke-bad"].status, 200);
  const json bad = json::parse(replies["invoke-bad"].body);
  EXPECT_EQ(bad["ResultType"], "Failed");
  EXPECT_EQ(bad["FailureContext"], "login");
  EXPECT_EQ(replies["invoke-bad"].body.find("Wr0ngPass"), std::string::npos);

  EXPECT_EQ(json::parse(replies["invoke-proxy"].body)["ResultType"], "Succeeded");
  EXPECT_EQ(replies["no-target"].status, 400);
  EXPECT_NE(replies["no-target"].body.find("mbx1, mbx2"), std::string::npos);
  EXPECT_EQ(replies["unknown-target"].status, 404);

  ASSERT_EQ(replies["results"].status, 200);
  const json results = json::parse(replies["results"].body);
  ASSERT_EQ(results["Targets"].size(), 1u);
  EXPECT_GE(results["Targets"][0]["Results"].size(), 1u);
  EXPECT_EQ(replies["no-probe"].status, 404);

  ASSERT_EQ(replies["health"].status, 200);
  const json health = json::parse(replies["health"].body);
  EXPECT_FALSE(health["Monitors"].empty());
  for (const json& m : health["Monitors"]) {
    EXPECT_TRUE(m["HealthSetName"] == "IMAP.Protocol" || m["HealthSetName"] == "IMAP.Proxy");
  }
  EXPECT_EQ(json::parse(replies["report"].body)["HealthSets"].size(), 3u);
  EXPECT_EQ(json::parse(replies["backends"].body)["backends"].size(), 2u);

  EXPECT_EQ(replies["metrics"].status, 200);
  EXPECT_NE(replies["metrics"].head.find("text/plain"), std::string::npos);
  EXPECT_NE(replies["metrics"].body.find(
                "portico_probe_result{probe=\"ImapDeepTestProbe\",target=\"mbx1\"} 1\n"),
            std::string::npos)
      << replies["metrics"].body;
  EXPECT_NE(replies["metrics"].body.find("portico_probe_latency_seconds{probe="),
            std::string::npos);
  EXPECT_NE(replies["metrics"].body.find("portico_connections_total 7"), std::string::npos);

  EXPECT_EQ(replies["405"].status, 405);
  EXPECT_NE(replies["405"].head.find("Allow: GET"), std::string::npos) << replies["405"].head;
  EXPECT_EQ(replies["404"].status, 404);
  EXPECT_NE(replies["404"].body.find("\"error\""), std::string::npos);
  EXPECT_EQ(replies["unready"].status, 503);
  EXPECT_NE(replies["unready"].body.find("every backend is drained"), std::string::npos);

  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// Backend text reaches probe results as it came: bytes that are not UTF-8
// (and control bytes) must not make any JSON view throw. Before, the
// invoke answer threw out of a libuv callback and ended the process.
TEST(HealthService, ProbeErrorWithInvalidUtf8IsServed) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  FakeImapServer::Options options;
  options.login_no_text = "[AUTHENTICATIONFAILED] nicht erlaubt \xff\xfe \x1b[31m\xc3";
  FakeImapServer backend(&loop, options);
  FakeProxy proxy;
  HealthConfig config = baseConfig(backend.port(), backend.port());
  config.backends[0].probe_password = "Wr0ngPass";  // so the NO text shows
  config.probes["ImapDeepTestProbe"] = ProbeSettings{std::chrono::hours(1), Millis(3'000), 0};
  HealthService service(&loop, config, proxy);
  std::string error;
  ASSERT_TRUE(IsOk(service.start()));
  const std::uint16_t port = service.statusPort();

  struct Shared {
    HealthService* service;
    FakeImapServer* backend;
    std::string probes_json;
    std::string health_json;
    bool stopped = false;
  } shared{&service, &backend, "", ""};
  uv_async_t finished;
  finished.data = &shared;
  uv_async_init(&loop, &finished, [](uv_async_t* async) {
    auto* s = static_cast<Shared*>(async->data);
    // The library's own string views, on the loop thread.
    s->probes_json = s->service->probesJson("IMAP.Protocol", "ImapDeepTestProbe");
    s->health_json = s->service->healthJson("*");
    s->service->stop([s] {
      s->stopped = true;
      s->backend->stop();
    });
    uv_close(reinterpret_cast<uv_handle_t*>(async), nullptr);
  });
  std::map<std::string, HttpReply> replies;
  std::thread client([&] {
    replies["invoke"] = http(port, "POST", "/probes/IMAP.Protocol/ImapDeepTestProbe?target=mbx1");
    replies["results"] = http(port, "GET", "/probes/IMAP.Protocol/ImapDeepTestProbe");
    replies["health"] = http(port, "GET", "/health");
    replies["bad-target"] =
        http(port, "POST", "/probes/IMAP.Protocol/ImapDeepTestProbe?target=%FF");
    uv_async_send(&finished);
  });
  uv_run(&loop, UV_RUN_DEFAULT);
  client.join();
  EXPECT_TRUE(shared.stopped);

  const std::string replaced = "\xef\xbf\xbd";  // U+FFFD
  ASSERT_EQ(replies["invoke"].status, 200) << replies["invoke"].body;
  const json invoked = json::parse(replies["invoke"].body);
  EXPECT_EQ(invoked["ResultType"], "Failed");
  const std::string text = invoked["Error"].get<std::string>();
  EXPECT_NE(text.find("nicht erlaubt " + replaced + replaced + " \x1b[31m" + replaced),
            std::string::npos)
      << text;
  ASSERT_EQ(replies["results"].status, 200) << replies["results"].body;
  EXPECT_EQ(json::parse(replies["results"].body)["Targets"][0]["Results"][0]["Error"], text);
  ASSERT_EQ(replies["health"].status, 200) << replies["health"].body;
  EXPECT_NO_THROW(json::parse(replies["health"].body));
  // An error message that echoes request bytes is valid JSON as well.
  EXPECT_EQ(replies["bad-target"].status, 404);
  EXPECT_NO_THROW(json::parse(replies["bad-target"].body)) << replies["bad-target"].body;
  EXPECT_EQ(json::parse(shared.probes_json)["Targets"][0]["Results"][0]["Error"], text);
  EXPECT_NO_THROW(json::parse(shared.health_json));
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// --- the ladder through the service ------------------------------------------

TEST(HealthService, FailingSelfTestDrainsRunsTheHookAndUndrainsOnRecovery) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  FakeImapServer backend(&loop, {});
  backend.setMode(FakeImapServer::Mode::kHangUp);
  FakeProxy proxy;
  proxy.names = {"mbx1"};
  const std::string hook_out = ::testing::TempDir() + "service_hook_" + std::to_string(getpid());
  HealthConfig config;
  config.server_name = "portico-test";
  config.backends.push_back({"mbx1", {"127.0.0.1", backend.port(), false}, "", ""});
  config.probes["ImapSelfTestProbe"] = ProbeSettings{Millis(20), Millis(1'000), 0};
  MonitorSettings monitor = defaultMonitorSettings("ImapSelfTestMonitor");
  monitor.unhealthy_after = 2;
  monitor.healthy_after = 2;
  config.monitors["ImapSelfTestMonitor"] = monitor;
  config.responders.hook =
      "echo \"$PORTICO_STEP|$PORTICO_MONITOR|$PORTICO_TARGET|"
      "$PORTICO_STATE|$PORTICO_HEALTH_SET\" >> " +
      hook_out;
  config.responders.hook_after = {Millis(0)};
  config.status_listen = Endpoint{"127.0.0.1", 0, false};
  HealthService service(&loop, config, proxy);
  ASSERT_TRUE(IsOk(service.start()));

  struct State {
    HealthService* service;
    FakeImapServer* backend;
    FakeProxy* proxy;
    std::string hook_out;
    int ticks = 0;
    bool stopped = false;
  } state{&service, &backend, &proxy, hook_out};
  uv_timer_t watch;
  uv_timer_init(&loop, &watch);
  watch.data = &state;
  uv_timer_start(
      &watch,
      [](uv_timer_t* timer) {
        auto* s = static_cast<State*>(timer->data);
        if (s->proxy->drained.count("mbx1") > 0) {
          s->backend->setMode(FakeImapServer::Mode::kNormal);  // the backend comes back
        }
        std::ifstream hook(s->hook_out);
        const bool undrained = s->proxy->calls.size() >= 2;
        if ((undrained && hook.good()) || ++s->ticks > 500) {
          uv_timer_stop(timer);
          uv_close(reinterpret_cast<uv_handle_t*>(timer), nullptr);
          s->service->stop([s] {
            s->stopped = true;
            s->backend->stop();
          });
        }
      },
      10, 10);
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_TRUE(state.stopped);
  EXPECT_EQ(proxy.calls, (std::vector<std::string>{"mbx1 drained", "mbx1 undrained"}));
  std::ifstream in(hook_out);
  std::stringstream lines;
  lines << in.rdbuf();
  EXPECT_EQ(lines.str(), "hook|ImapSelfTestMonitor|mbx1|Unhealthy|IMAP.Protocol\n");
  const json health = json::parse(service.healthJson("IMAP.Protocol"));
  std::vector<std::string> steps;
  for (const json& action : health["ResponderActions"]) {
    steps.push_back(action["Step"]);
    EXPECT_EQ(keys(action),
              (std::set<std::string>{"Time", "Monitor", "TargetResource", "HealthSetName", "Step",
                                     "AlertValue", "Reason", "Outcome"}));
  }
  EXPECT_EQ(steps, (std::vector<std::string>{"drain", "hook", "undrain"}));
  EXPECT_EQ(health["ResponderActions"][1]["Outcome"], "exit 0");
  for (const json& m : health["Monitors"]) {
    EXPECT_EQ(m["AlertValue"], "Healthy");
    EXPECT_TRUE(m["FirstAlertObservedTime"].is_null());
    EXPECT_FALSE(m["LastTransitionTime"].is_null());
  }
  std::remove(hook_out.c_str());
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// --- overrides and dry-run ----------------------------------------------------

// Runs the loop until `done()` is true or `limit` passes, then stops the
// service (then `stopped()`, which closes what else the test opened) and
// runs the loop to its end. Returns whether `done()` became true.
bool runUntil(
    uv_loop_t* loop, HealthService& service, std::function<bool()> done,
    std::function<void()> stopped = [] {}, Millis limit = Millis(10'000)) {
  struct State {
    HealthService* service;
    std::function<bool()> done;
    std::function<void()> stopped;
    std::chrono::steady_clock::time_point deadline;
    bool met = false;
  } state{&service, std::move(done), std::move(stopped), std::chrono::steady_clock::now() + limit};
  uv_timer_t watch;
  uv_timer_init(loop, &watch);
  watch.data = &state;
  uv_timer_start(
      &watch,
      [](uv_timer_t* timer) {
        auto* s = static_cast<State*>(timer->data);
        s->met = s->done();
        if (s->met || std::chrono::steady_clock::now() > s->deadline) {
          uv_timer_stop(timer);
          uv_close(reinterpret_cast<uv_handle_t*>(timer), nullptr);
          s->service->stop([s] { s->stopped(); });
        }
      },
      5, 5);
  uv_run(loop, UV_RUN_DEFAULT);
  return state.met;
}

const json* findMonitor(const json& health, const std::string& name, const std::string& target) {
  for (const json& m : health["Monitors"]) {
    if (m["Name"] == name && m["TargetResource"] == target) {
      return &m;
    }
  }
  return nullptr;
}

TEST(HealthService, TimedOverrideIsShownWithItsExpiryAndEndsByItself) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  FakeProxy proxy;
  HealthConfig config = baseConfig(1, 2);
  for (const char* probe :
       {"ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe"}) {
    config.probes[probe] = ProbeSettings{std::chrono::hours(1), Millis(1'000), 0};
  }
  HealthService service(&loop, config, proxy);
  ASSERT_TRUE(IsOk(service.start()));

  // Refused: a state an override cannot set, an unknown monitor or target.
  auto refused = service.addMonitorOverride("ImapSelfTestMonitor", std::nullopt,
                                            AlertValue::kUnhealthy, Millis(1'000), "tester");
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("not Unhealthy"), std::string::npos) << refused.message();
  refused = service.addMonitorOverride("NoSuchMonitor", std::nullopt, AlertValue::kDisabled,
                                       Millis(1'000), "tester");
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(refused.message(), "no monitor NoSuchMonitor");
  EXPECT_FALSE(service
                   .addMonitorOverride("ImapSelfTestMonitor", std::string("mbx9"),
                                       AlertValue::kDisabled, Millis(1'000), "tester")
                   .ok());

  // Without a target: every target of the monitor.
  const auto before = std::chrono::system_clock::now();
  const auto set = service.addMonitorOverride("ImapSelfTestMonitor", std::nullopt,
                                              AlertValue::kDisabled, Millis(300), "tester");
  ASSERT_TRUE(IsOk(set));
  EXPECT_EQ(*set,
            (std::vector<std::string>{"ImapSelfTestMonitor/mbx1", "ImapSelfTestMonitor/mbx2"}));
  // Repairing on the deep test, until removed.
  const auto repairing = service.addMonitorOverride("ImapDeepTestMonitor", std::string("mbx1"),
                                                    AlertValue::kRepairing, std::nullopt, "other");
  ASSERT_TRUE(IsOk(repairing));
  EXPECT_EQ(*repairing, std::vector<std::string>{"ImapDeepTestMonitor/mbx1"});
  json health = json::parse(service.healthJson("*"));
  const json* self = findMonitor(health, "ImapSelfTestMonitor", "mbx2");
  ASSERT_NE(self, nullptr);
  EXPECT_EQ((*self)["AlertValue"], "Disabled");
  ASSERT_TRUE(self->contains("Override"));
  EXPECT_EQ((*self)["Override"]["State"], "Disabled");
  EXPECT_EQ((*self)["Override"]["By"], "tester");
  EXPECT_TRUE((*self)["Override"]["Expires"].get<std::string>().ends_with("Z"));
  const json* deep = findMonitor(health, "ImapDeepTestMonitor", "mbx1");
  ASSERT_NE(deep, nullptr);
  EXPECT_EQ((*deep)["Override"]["State"], "Repairing");
  EXPECT_TRUE((*deep)["Override"]["Expires"].is_null());
  EXPECT_FALSE(findMonitor(health, "ImapCTPMonitor", "mbx1")->contains("Override"));

  // The loop's timer ends the two timed overrides; the other one stays.
  std::chrono::system_clock::time_point expired_at;
  const bool expired = runUntil(&loop, service, [&] {
    const json now = json::parse(service.healthJson("IMAP.Protocol"));
    const bool gone = !findMonitor(now, "ImapSelfTestMonitor", "mbx1")->contains("Override") &&
                      !findMonitor(now, "ImapSelfTestMonitor", "mbx2")->contains("Override");
    expired_at = std::chrono::system_clock::now();
    return gone;
  });
  ASSERT_TRUE(expired) << service.healthJson("IMAP.Protocol");
  EXPECT_GE(expired_at - before, Millis(300));
  health = json::parse(service.healthJson("*"));
  EXPECT_NE(findMonitor(health, "ImapSelfTestMonitor", "mbx1")->at("AlertValue"), "Disabled");
  EXPECT_EQ(findMonitor(health, "ImapDeepTestMonitor", "mbx1")->at("Override").at("State"),
            "Repairing");
  const json actions = json::parse(service.actionsJson())["actions"];
  ASSERT_EQ(actions.size(), 2u) << actions.dump();
  std::set<std::string> targets;
  for (const json& a : actions) {
    EXPECT_EQ(a["action"], "monitor override expired");
    EXPECT_EQ(a["by"], "tester");
    EXPECT_EQ(a["kind"], "operator");
    targets.insert(a["target"]);
  }
  EXPECT_EQ(targets,
            (std::set<std::string>{"ImapSelfTestMonitor/mbx1", "ImapSelfTestMonitor/mbx2"}));

  EXPECT_EQ(service.removeMonitorOverride("ImapDeepTestMonitor", std::nullopt),
            std::vector<std::string>{"ImapDeepTestMonitor/mbx1"});
  EXPECT_TRUE(service.removeMonitorOverride("ImapDeepTestMonitor", std::nullopt).empty());
  EXPECT_FALSE(findMonitor(json::parse(service.healthJson("*")), "ImapDeepTestMonitor", "mbx1")
                   ->contains("Override"));
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(HealthService, DryRunRecordsTheDrainButDrainsNothingUntilSwitchedToAct) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  FakeImapServer backend(&loop, {});
  backend.setMode(FakeImapServer::Mode::kHangUp);
  FakeProxy proxy;
  proxy.names = {"mbx1"};
  const std::string hook_out = ::testing::TempDir() + "dry_run_hook_" + std::to_string(getpid());
  std::remove(hook_out.c_str());
  HealthConfig config;
  config.server_name = "portico-test";
  config.backends.push_back({"mbx1", {"127.0.0.1", backend.port(), false}, "", ""});
  config.probes["ImapSelfTestProbe"] = ProbeSettings{Millis(20), Millis(1'000), 0};
  MonitorSettings monitor = defaultMonitorSettings("ImapSelfTestMonitor");
  monitor.unhealthy_after = 2;
  config.monitors["ImapSelfTestMonitor"] = monitor;
  config.responders.hook = "echo ran >> " + hook_out;
  config.responders.hook_after = {Millis(0)};
  config.responders.dry_run = true;
  config.action_history = 8;
  config.status_listen = Endpoint{"127.0.0.1", 0, false};
  HealthService service(&loop, config, proxy);
  ASSERT_TRUE(IsOk(service.start()));
  EXPECT_TRUE(service.dryRun());

  auto hasAction = [&](const std::string& action, const std::string& result) {
    const json actions = json::parse(service.actionsJson());
    for (const json& a : actions["actions"]) {
      if (a["action"] == action && a["result"] == result) {
        return true;
      }
    }
    return false;
  };
  bool switched = false;
  const bool done = runUntil(
      &loop, service,
      [&] {
        if (!switched && hasAction("drain", "dry-run") && hasAction("hook", "dry-run")) {
          // Everything the ladder did so far was only recorded.
          EXPECT_TRUE(proxy.calls.empty());
          EXPECT_EQ(json::parse(service.healthJson("*"))["Responders"], "dry-run");
          std::string why;
          EXPECT_TRUE(service.ready(&why)) << why;
          // Now act: the drain the ladder holds is applied.
          HealthConfig acting = config;
          acting.responders.dry_run = false;
          service.reconfigure(acting);
          switched = true;
        }
        return switched && !proxy.calls.empty();
      },
      [&] { backend.stop(); });
  ASSERT_TRUE(done) << service.actionsJson();
  EXPECT_EQ(proxy.calls, std::vector<std::string>{"mbx1 drained"});
  EXPECT_TRUE(hasAction("drain", "drained")) << service.actionsJson();
  EXPECT_FALSE(std::ifstream(hook_out).good()) << "a hook ran in dry-run";
  EXPECT_LE(json::parse(service.actionsJson())["actions"].size(), 8u);
  std::remove(hook_out.c_str());
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace portico::health
