// HealthService's HTTP routes on the status endpoint: / (the status page),
// /healthz, /readyz, /health, /health/report, /health/actions, /backends,
// /commands, /protocol-log, /metrics and /probes/<Set>/<Probe> (GET for the
// results, POST to invoke).
#include <cctype>
#include <map>
#include <memory>
#include <optional>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "portico/ascii.h"
#include "portico/json_text.h"
#include "service_impl.h"
#include "status_page.h"

namespace portico::health {
namespace {

using nlohmann::json;

std::string percentDecode(std::string_view text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    c = asciiLower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else if (text[i] == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> parseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const std::size_t eq = pair.find('=');
    out[percentDecode(pair.substr(0, eq), true)] =
        eq == std::string_view::npos ? "" : percentDecode(pair.substr(eq + 1), true);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
  }
  return out;
}

HttpResponse jsonResponse(int status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  // Never rendered as anything but data, even by a browser that sniffs.
  response.headers.emplace_back("X-Content-Type-Options", "nosniff");
  return response;
}

HttpResponse errorResponse(int status, std::string_view message) {
  return jsonResponse(status, jsonError(status, message));
}

// A JSON text the proxy provides, or 404 when it has none to offer.
HttpResponse fromProxy(std::string body) {
  return body.empty() ? errorResponse(404, "not available") : jsonResponse(200, std::move(body));
}

HttpResponse methodNotAllowed(std::string_view allow) {
  HttpResponse response = errorResponse(405, "method not allowed");
  response.headers.emplace_back("Allow", std::string(allow));
  return response;
}

}  // namespace

// --- HTTP routes -----------------------------------------------------------

void HealthService::Impl::handle(const HttpRequest& request, Responder respond) {
  const std::string& path = request.path;
  // HEAD too: the server sends the headers of the GET answer, no body.
  const bool get = request.method == "GET" || request.method == "HEAD";
  auto query = parseQuery(request.query);
  auto only_get = [&](auto&& body) {
    if (!get) {
      respond(methodNotAllowed("GET, HEAD"));
    } else {
      respond(body());
    }
  };
  if (path == "/") {
    only_get([] { return statusPageResponse(); });
  } else if (path == "/healthz") {
    only_get([] { return jsonResponse(200, R"({"status":"alive"})"); });
  } else if (path == "/readyz") {
    only_get([&] {
      std::string why;
      return ready(&why)
                 ? jsonResponse(200, R"({"status":"ready"})")
                 : jsonResponse(503, jsonText(json{{"status", "not ready"}, {"reason", why}}));
    });
  } else if (path == "/health") {
    only_get([&] { return jsonResponse(200, health(query["set"])); });
  } else if (path == "/health/report") {
    only_get([&] { return jsonResponse(200, report()); });
  } else if (path == "/health/actions") {
    // What responders and operators did, newest first (bounded ring).
    only_get([&] { return jsonResponse(200, actions_.text()); });
  } else if (path == "/backends") {
    only_get([&] { return jsonResponse(200, backends()); });
  } else if (path == "/commands") {
    only_get([&] { return fromProxy(proxy_.commandsJson()); });
  } else if (path == "/protocol-log") {
    only_get([&] { return fromProxy(proxy_.protocolLogJson()); });
  } else if (path == "/metrics") {
    only_get([&] {
      HttpResponse response = jsonResponse(200, metrics());
      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
      return response;
    });
  } else if (path.starts_with("/probes/")) {
    handleProbe(request, query, std::move(respond));
  } else {
    respond(errorResponse(404, "no such path"));
  }
}

void HealthService::Impl::handleProbe(const HttpRequest& request,
                                      std::map<std::string, std::string>& query,
                                      Responder respond) {
  const std::string_view rest = std::string_view(request.path).substr(8);
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= rest.size() ||
      rest.find('/', slash + 1) != std::string_view::npos) {
    respond(errorResponse(404, "expected /probes/<HealthSet>/<ProbeName>"));
    return;
  }
  const std::string set = percentDecode(rest.substr(0, slash), false);
  const std::string probe = percentDecode(rest.substr(slash + 1), false);
  const auto defs = findProbe(set, probe);
  if (defs.empty()) {
    respond(errorResponse(404, fmt::format("no probe {}\\{}", set, probe)));
    return;
  }
  auto target_it = query.find("target");
  std::optional<std::string> target;
  if (target_it != query.end()) {
    target = target_it->second;
  }
  if (request.method == "GET" || request.method == "HEAD") {
    json body = probes(defs.front()->health_set, defs.front()->probe, target);
    if (target && body["Targets"].empty()) {
      respond(errorResponse(404, fmt::format("no target \"{}\" for {}", *target, probe)));
      return;
    }
    respond(jsonResponse(200, jsonText(body)));
    return;
  }
  if (request.method != "POST") {
    respond(methodNotAllowed("GET, HEAD, POST"));
    return;
  }
  if (!target) {
    if (defs.size() != 1) {
      std::vector<std::string> names;
      for (const ProbeDefinition* def : defs) {
        names.push_back(def->target);
      }
      respond(
          errorResponse(400, fmt::format("target required, one of: {}", fmt::join(names, ", "))));
      return;
    }
    target = defs.front()->target;
  }
  auto shared = std::make_shared<Responder>(std::move(respond));
  if (!invoke(defs.front()->health_set, defs.front()->probe, *target,
              [shared](const ProbeResult& result) {
                // Runs later, outside the server's request boundary: an
                // exception here must still end as an answer.
                HttpResponse response;
                try {
                  response = jsonResponse(200, jsonText(resultJson(result)));
                } catch (const std::exception&) {
                  response = errorResponse(500, "internal error");
                }
                (*shared)(std::move(response));
              })) {
    (*shared)(errorResponse(stopping_ ? 503 : 404,
                            stopping_ ? "stopping" : fmt::format("no target \"{}\"", *target)));
  }
}

}  // namespace portico::health
