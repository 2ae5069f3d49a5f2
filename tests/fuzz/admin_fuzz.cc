// libFuzzer target for the admin socket's line protocol: the layer that
// turns one request line into one JSON reply (splitAdminLine() in admin.cc,
// then handleAdminCommand() in admin_commands.cc), as AdminServer serves a
// connection's lines, over a minimal control state: a real config,
// HealthService (never started: no status endpoint; probes dial a closed
// loopback port), protocol log writer and config file for `reload`, and
// no workers (sessions/kick gather from none).
//
// Input: request lines separated by '\n' (at most 32, each at most
// AdminServer::kMaxLine bytes), answered in order on a fresh control state.
//
// Invariants checked (abort on violation): no crash, exception or sanitizer
// report; every non-empty request gets exactly one reply, within 5 s of
// loop time; a reply is one line of valid JSON (UTF-8 included), an object
// with a boolean "ok", and an "error" string when ok is false; afterwards
// the control loop closes with no handle left open.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "control/admin.h"
#include "control/control_loop.h"
#include "portico/logging.h"

namespace {

using namespace portico::proxy;

[[noreturn]] void fail(const std::string& what, std::string_view detail) {
  std::fprintf(stderr, "admin_fuzz: %s\n%.*s\n", what.c_str(), static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

// A scratch directory with the config `reload` re-reads, and the protocol
// log's directory.
struct Scratch {
  std::string dir;
  std::string config_path;
  std::string config_text;

  Scratch() {
    char tmpl[] = "/tmp/portico-admin-fuzz-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      fail("mkdtemp", "");
    }
    dir = tmpl;
    config_path = dir + "/portico.toml";
    // Port 1 on loopback: nothing listens there, so a probe the fuzzer
    // invokes fails at once with "connection refused".
    config_text =
        "workers = 1\n"
        "[[listen]]\naddress = \"127.0.0.1:1\"\n"
        "[[backend]]\nname = \"mbx1\"\naddress = \"127.0.0.1:1\"\n"
        "[[backend]]\nname = \"mbx2\"\naddress = \"127.0.0.1:1\"\n"
        "[status]\nlisten = \"127.0.0.1:1\"\n"
        "[admin]\nsocket = \"" +
        dir +
        "/admin.sock\"\n"
        "[protocol_log]\nenabled = false\ndirectory = \"" +
        dir + "/log\"\nmax_file_size = 65536\n" +
        "[health.probe.ImapProxyTestProbe]\ntimeout = \"1s\"\n"
        "[health.probe.ImapCTPProbe]\ntimeout = \"1s\"\n"
        "[health.probe.ImapSelfTestProbe]\ntimeout = \"1s\"\n"
        "[health.probe.ImapDeepTestProbe]\ntimeout = \"1s\"\n";
    std::ofstream(config_path) << config_text;
  }
  ~Scratch() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

// The control state of server.cc's runProxy(), minus workers, listeners,
// signals and the admin socket itself.
struct MiniControl {
  ControlLoop c;

  explicit MiniControl(const Scratch& scratch) {
    c.config_path = scratch.config_path;
    ConfigResult parsed = parseConfig(scratch.config_text, scratch.config_path);
    if (!parsed.errors.empty()) {
      fail("the fuzz config does not parse", parsed.errors.front());
    }
    std::vector<std::size_t> slots;
    for (const BackendConfig& b : parsed.config->backends) {
      slots.push_back(c.registry.slot(b.name));
    }
    auto runtime = buildRuntime(std::move(*parsed.config), std::move(slots));
    if (!runtime.ok()) {
      fail("buildRuntime", runtime.message());
    }
    c.config = std::move(*runtime);
    uv_loop_init(&c.loop);
    c.tasks = std::make_unique<TaskQueue>(&c.loop);
    c.protocol_log = std::make_unique<portico::logging::ProtocolLog>(1);
    c.view = std::make_unique<WorkerProxyView>(c.workers, c.shared, c.registry,
                                               [this] { return c.config; });
    c.health = std::make_unique<portico::health::HealthService>(
        &c.loop, makeHealthConfig(c.config->config), *c.view);
  }

  // As runProxy() ends: stop health and the task queue, let every close
  // callback run, then the loop must have nothing left.
  ~MiniControl() {
    c.health->stop([] {});
    c.tasks->close();
    uv_run(&c.loop, UV_RUN_DEFAULT);
    c.health.reset();
    uv_run(&c.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&c.loop) != 0) {
      fail("a handle outlived the admin commands", "");
    }
    c.protocol_log->stop();
  }
};

void checkReply(const std::string& request, const std::string& reply) {
  if (reply.find('\n') != std::string::npos) {
    fail("reply spans lines", reply);
  }
  nlohmann::json j = nlohmann::json::parse(reply, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    fail("reply is not valid JSON for request", request + "\n" + reply);
  }
  if (!j.is_object() || !j.contains("ok") || !j["ok"].is_boolean()) {
    fail("reply has no boolean \"ok\"", reply);
  }
  if (!j["ok"].get<bool>() &&
      (!j.contains("error") || !j["error"].is_string() || j["error"].get<std::string>().empty())) {
    fail("failed reply without an error text", reply);
  }
}

// Serves one line as AdminServer::serveNext() does; returns the replies.
std::vector<std::string> serve(MiniControl& mini, const std::string& line) {
  // Shared with the reply callback, which a buggy command could call late.
  auto replies = std::make_shared<std::vector<std::string>>();
  AdminRequest request;
  portico::Result<std::vector<std::string>> words = splitAdminLine(line);
  if (!words.ok()) {
    if (words.message().empty()) {
      fail("split refused a line without saying why", line);
    }
    return {nlohmann::json{{"ok", false}, {"error", words.message()}}.dump()};
  }
  request.words = std::move(*words);
  if (request.words.empty()) {
    return {};
  }
  ControlLoop& c = mini.c;
  handleAdminCommand(c, request, [replies](std::string json) { replies->push_back(json); });
  // Answers that wait for the loop (probe results, worker gathers): run it
  // until the reply is in, with a guard timer so a lost reply shows as one.
  if (replies->empty()) {
    uv_timer_t guard;
    bool expired = false;
    uv_timer_init(&c.loop, &guard);
    guard.data = &expired;
    uv_timer_start(
        &guard, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, 5000, 0);
    while (replies->empty() && !expired) {
      uv_run(&c.loop, UV_RUN_ONCE);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
    uv_run(&c.loop, UV_RUN_NOWAIT);
    if (replies->empty()) {
      fail("no reply within 5 s", line);
    }
  }
  uv_run(&c.loop, UV_RUN_NOWAIT);  // a second, late reply would show here
  return *replies;
}

void quietLogs() {
  static bool done = false;
  if (!done) {
    int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      portico::logging::setOutputFd(fd);
    }
    done = true;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4 * AdminServer::kMaxLine) {
    return 0;
  }
  quietLogs();
  static Scratch scratch;
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> lines;
  std::size_t begin = 0;
  while (begin < input.size() && lines.size() < 32) {
    std::size_t nl = input.find('\n', begin);
    std::size_t end = nl == std::string_view::npos ? input.size() : nl;
    if (end - begin <= AdminServer::kMaxLine) {
      lines.emplace_back(input.substr(begin, end - begin));
    }
    begin = end + 1;
  }
  MiniControl mini(scratch);
  for (const std::string& line : lines) {
    std::vector<std::string> replies = serve(mini, line);
    if (replies.size() > 1) {
      fail("more than one reply to one request", line + "\n" + replies[1]);
    }
    for (const std::string& reply : replies) {
      checkReply(line, reply);
    }
  }
  return 0;
}
