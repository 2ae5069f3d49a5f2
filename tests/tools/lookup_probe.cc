// lookup_probe: runs Portico's lookup stage (the directory from a [lookup]
// table, behind the cache) on a libuv loop, for the integration tests.
//
//   lookup_probe --config FILE --user U [--password P] [request options]
//       one lookup, one JSON line on stdout, exit 0
//   lookup_probe --config FILE
//       JSON commands on stdin, one per line, answers on stdout as they
//       complete (several lookups may be in flight):
//         {"op":"lookup","tag":"t1","user":"alice","password":"pw", ...}
//         {"op":"cancel","tag":"t1"}   {"op":"flush"}   {"op":"flush","user":"alice"}
//         {"op":"stats"}
//       At end of input the lookups still in flight are dropped, the loop
//       is run until every handle has closed, and the last line is
//       {"op":"exit","loop_closed":true}.
//
// A lookup line's fields (all optional but user): password, method
// ("plain" | "none"), attempt, client_ip, client_port, client_host, tls,
// tls_protocol, tls_cipher. The answer: tag, outcome, route, backend, host,
// port, backend_user, backend_password_set (never the value), tls,
// tls_verify, proxy_timeout_ms, reason, wait, nologin, error, from_cache,
// elapsed_ms.
#include <uv.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include <toml++/toml.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "lookup/lookup.h"
#include "lookup/lookup_stage.h"
#include "lookup/lookup_toml.h"

namespace portico::proxy {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

bool readConfig(const std::string& path, LookupConfig& config) {
  try {
    toml::table root = toml::parse_file(path);
    const toml::table* table = root["lookup"].as_table();
    if (table == nullptr) {
      std::cerr << path << ":1: no [lookup] table\n";
      return false;
    }
    bool ok = true;
    readLookupConfig(*table, config, [&](std::uint32_t line, const std::string& message) {
      std::cerr << path << ":" << line << ": " << message << "\n";
      ok = false;
    });
    if (ok && config.kind == LookupKind::kNone) {
      std::cerr << path << ":1: kind = \"none\": nothing to probe\n";
      return false;
    }
    return ok;
  } catch (const toml::parse_error& e) {
    std::cerr << path << ":" << e.source().begin.line << ": " << e.description() << "\n";
    return false;
  }
}

json resultJson(const std::string& tag, const LookupResult& r, Clock::duration elapsed) {
  json out = {{"tag", tag},
              {"outcome", lookupOutcomeName(r.outcome)},
              {"describe", r.describe()},
              {"from_cache", r.from_cache},
              {"elapsed_ms", std::chrono::duration<double, std::milli>(elapsed).count()}};
  if (r.outcome == LookupOutcome::kRoute) {
    out["route"] = r.route.text();
    out["backend"] = r.route.backend;
    out["host"] = r.route.host;
    out["port"] = r.route.port;
    out["backend_user"] = r.backend_user ? json(*r.backend_user) : json(nullptr);
    out["backend_password_set"] = r.backend_password.has_value();
    out["tls"] = lookupBackendTlsName(r.backend_tls);
    out["tls_verify"] = r.backend_tls_verify;
    out["proxy_timeout_ms"] = r.proxy_timeout ? json(r.proxy_timeout->count()) : json(nullptr);
  }
  if (r.outcome == LookupOutcome::kRefuse) {
    out["reason"] = r.reason;
    out["wait"] = r.wait_seconds ? json(*r.wait_seconds) : json(nullptr);
    out["nologin"] = r.nologin;
  }
  if (r.outcome == LookupOutcome::kUnavailable) {
    out["error"] = r.error;
  }
  return out;
}

void emit(const json& line) {
  std::string text = line.dump();
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

LookupRequest requestFrom(const json& in) {
  LookupRequest r;
  r.user = in.value("user", "");
  r.password = in.value("password", "");
  r.method =
      in.value("method", "plain") == "none" ? LookupAuthMethod::kNone : LookupAuthMethod::kPlain;
  r.attempt = in.value("attempt", 1u);
  r.client_ip = in.value("client_ip", "127.0.0.1");
  r.client_port = in.value("client_port", static_cast<std::uint16_t>(0));
  r.client_host = in.value("client_host", "");
  r.tls = in.value("tls", false);
  r.tls_protocol = in.value("tls_protocol", "");
  r.tls_cipher = in.value("tls_cipher", "");
  r.session_id = in.value("session_id", static_cast<std::uint64_t>(0));
  return r;
}

class Probe {
 public:
  Probe(uv_loop_t* loop, const LookupConfig& config)
      : env_(loop),
        stage_(
            std::make_unique<LookupStage>(env_, makeDirectoryLookup(config, env_), config, stats_)),
        quit_(env_.createTimer([this] { shutdown(); })) {}

  void lookup(const std::string& tag, const LookupRequest& request, bool quit_after) {
    const auto started = Clock::now();
    pending_[tag] =
        PendingLookup::start(*stage_, request, [this, tag, started, quit_after](LookupResult r) {
          auto it = pending_.find(tag);
          if (it != pending_.end()) {
            it->second.done();
            pending_.erase(it);
          }
          emit(resultJson(tag, r, Clock::now() - started));
          if (r.backend_password) {
            wipeSecret(*r.backend_password);
          }
          if (quit_after) {
            // Not from inside the stage's own callback: next iteration.
            quit_->arm(std::chrono::milliseconds{0});
          }
        });
  }

  void command(const std::string& line) {
    json in = json::parse(line, nullptr, false);
    if (in.is_discarded() || !in.is_object()) {
      emit({{"error", "not a JSON object"}});
      return;
    }
    std::string op = in.value("op", "lookup");
    std::string tag = in.value("tag", "");
    if (op == "lookup") {
      lookup(tag, requestFrom(in), false);
    } else if (op == "cancel") {
      auto it = pending_.find(tag);
      bool found = it != pending_.end();
      if (found) {
        pending_.erase(it);  // PendingLookup's destructor cancels
      }
      emit({{"op", "cancel"}, {"tag", tag}, {"cancelled", found}});
    } else if (op == "flush") {
      std::size_t n = in.contains("user") ? stage_->cache().flushUser(in.value("user", ""))
                                          : stage_->cache().flushAll();
      emit({{"op", "flush"}, {"flushed", n}});
    } else if (op == "stats") {
      json answers = json::object();
      for (std::size_t i = 0; i < kLookupOutcomeCount; ++i) {
        answers[lookupOutcomeName(static_cast<LookupOutcome>(i))] = stats_.answers[i].load();
      }
      emit({{"op", "stats"},
            {"answers", answers},
            {"cache_hits", stats_.cache_hits.load()},
            {"cache_misses", stats_.cache_misses.load()},
            {"cancelled", stats_.cancelled.load()},
            {"latency_count", stats_.latency_count.load()},
            {"in_flight", stage_->inFlight()},
            {"cache_size", stage_->cache().size()}});
    } else {
      emit({{"error", "unknown op " + op}});
    }
  }

  // Drops everything; the loop then ends once the handles have closed.
  void shutdown() {
    pending_.clear();
    stage_.reset();
  }

 private:
  UvLookupLoop env_;
  LookupStats stats_;
  std::unique_ptr<LookupStage> stage_;
  std::map<std::string, PendingLookup> pending_;
  TimerPtr quit_;
};

struct StdinReader {
  uv_pipe_t pipe{};
  std::string buffer;
  Probe* probe = nullptr;
};

void onStdin(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* reader = static_cast<StdinReader*>(stream->data);
  if (nread > 0) {
    reader->buffer.append(buf->base, static_cast<std::size_t>(nread));
    std::size_t end = 0;
    while ((end = reader->buffer.find('\n')) != std::string::npos) {
      std::string line = reader->buffer.substr(0, end);
      reader->buffer.erase(0, end + 1);
      if (!line.empty()) {
        reader->probe->command(line);
      }
    }
  }
  delete[] buf->base;
  if (nread < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(stream), nullptr);
    reader->probe->shutdown();
  }
}

int run(int argc, char** argv) {
  CLI::App app{"Runs Portico's lookup stage once or from JSON commands on stdin"};
  std::string config_path;
  std::string user;
  std::string password;
  std::string method = "plain";
  std::uint32_t attempt = 1;
  std::string client_ip = "127.0.0.1";
  std::string client_host;
  std::string tls_protocol;
  std::string tls_cipher;
  app.add_option("--config", config_path, "TOML file with a [lookup] table")->required();
  app.add_option("--user", user, "one lookup for this user, then exit");
  app.add_option("--password", password);
  app.add_option("--method", method, "plain | none");
  app.add_option("--attempt", attempt);
  app.add_option("--client-ip", client_ip);
  app.add_option("--client-host", client_host);
  app.add_option("--tls-protocol", tls_protocol, "set with --tls-cipher: a TLS client leg");
  app.add_option("--tls-cipher", tls_cipher);
  CLI11_PARSE(app, argc, argv);

  LookupConfig config;
  if (!readConfig(config_path, config)) {
    return 2;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  int exit_code = 0;
  {
    Probe probe(&loop, config);
    StdinReader reader;
    if (!user.empty()) {
      json in = {{"user", user},
                 {"password", password},
                 {"method", method},
                 {"attempt", attempt},
                 {"client_ip", client_ip},
                 {"client_host", client_host},
                 {"tls", !tls_protocol.empty() || !tls_cipher.empty()},
                 {"tls_protocol", tls_protocol},
                 {"tls_cipher", tls_cipher}};
      probe.lookup("", requestFrom(in), true);
    } else {
      reader.probe = &probe;
      uv_pipe_init(&loop, &reader.pipe, 0);
      reader.pipe.data = &reader;
      if (uv_pipe_open(&reader.pipe, 0) != 0) {
        std::cerr << "lookup_probe: stdin must be a pipe\n";
        return 2;
      }
      uv_read_start(
          reinterpret_cast<uv_stream_t*>(&reader.pipe),
          [](uv_handle_t*, std::size_t suggested, uv_buf_t* buf) {
            *buf = uv_buf_init(new char[suggested], static_cast<unsigned>(suggested));
          },
          &onStdin);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  bool closed = uv_loop_close(&loop) == 0;
  if (user.empty()) {
    emit({{"op", "exit"}, {"loop_closed", closed}});
  }
  if (!closed) {
    exit_code = 3;
  }
  return exit_code;
}

}  // namespace
}  // namespace portico::proxy

int main(int argc, char** argv) {
  return portico::proxy::run(argc, argv);
}
