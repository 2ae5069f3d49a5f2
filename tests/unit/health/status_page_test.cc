// The status page: the embedded bytes are the source file's, the CSP names
// exactly its inline script and style, the page's script never parses data
// as HTML and loads nothing from elsewhere; and the routes that serve it and
// the proxy's JSON (/, /commands, /protocol-log), token rules included.
// The page's behaviour in a browser is tested by
// tests/integration/test_status_page.py (headless Chromium).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "portico/health.h"
#include "status_page.h"
#include "status_testing.h"

namespace portico::health {
namespace {

using nlohmann::json;

TEST(StatusPage, EmbeddedBytesAreTheSourceFile) {
  std::ifstream in(PORTICO_SOURCE_DIR "/health/web/status.html", std::ios::binary);
  ASSERT_TRUE(in) << "cannot open health/web/status.html";
  std::ostringstream text;
  text << in.rdbuf();
  EXPECT_EQ(statusPageHtml(), text.str());
}

TEST(StatusPage, CspHashSourceIsBase64OfSha256) {
  // SHA-256 of the empty string and of "abc" (FIPS 180-2), in base64.
  EXPECT_EQ(cspHashSource(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
  EXPECT_EQ(cspHashSource("abc"), "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='");
}

TEST(StatusPage, InlineElementsFindsEachElementsText) {
  const std::string html =
      "<p>x</p><script>one()</script> <style>a{}</style><script>\ntwo\n</script>";
  const auto scripts = inlineElements(html, "script");
  ASSERT_EQ(scripts.size(), 2u);
  EXPECT_EQ(scripts[0], "one()");
  EXPECT_EQ(scripts[1], "\ntwo\n");
  EXPECT_EQ(inlineElements(html, "style"), std::vector<std::string_view>{"a{}"});
  EXPECT_TRUE(inlineElements("<script>unterminated", "script").empty());
}

TEST(StatusPage, PolicyAllowsExactlyThePagesScriptAndStyle) {
  const std::string_view page = statusPageHtml();
  const auto scripts = inlineElements(page, "script");
  const auto styles = inlineElements(page, "style");
  // One of each, and no other form of them the hashes would not cover.
  ASSERT_EQ(scripts.size(), 1u);
  ASSERT_EQ(styles.size(), 1u);
  EXPECT_EQ(page.find("<script "), std::string_view::npos) << "script with attributes";
  EXPECT_EQ(page.find("<style "), std::string_view::npos) << "style with attributes";
  const std::string policy = contentSecurityPolicy(page);
  EXPECT_EQ(policy, "default-src 'none'; script-src " + cspHashSource(scripts[0]) + "; style-src " +
                        cspHashSource(styles[0]) +
                        "; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                        "frame-ancestors 'none'");
  EXPECT_EQ(contentSecurityPolicy("<p>no script</p>"),
            "default-src 'none'; script-src 'none'; style-src 'none'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
}

TEST(StatusPage, ScriptNeverParsesHtmlAndLoadsNothingElsewhere) {
  const std::string_view page = statusPageHtml();
  // Data goes into the DOM as text only.
  for (const char* sink : {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                           "eval(", "new Function", "srcdoc", "DOMParser"}) {
    EXPECT_EQ(page.find(sink), std::string_view::npos) << sink;
  }
  // Nothing from another origin (the SVG namespace is a name, not a fetch),
  // and no inline style attributes or handlers the policy would block.
  std::string rest(page);
  const std::string svg_ns = "\"http://www.w3.org/2000/svg\"";
  ASSERT_NE(rest.find(svg_ns), std::string::npos);
  rest.erase(rest.find(svg_ns), svg_ns.size());
  for (const char* outside : {"http://", "https://", "//cdn", "@import", "url(",
                              " src=", " href=", " style=", " onclick=", " onload=", " onerror="}) {
    EXPECT_EQ(rest.find(outside), std::string::npos) << outside;
  }
}

TEST(StatusPage, ResponseHeaders) {
  const HttpResponse r = statusPageResponse();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/html; charset=utf-8");
  EXPECT_EQ(r.body, statusPageHtml());
  std::map<std::string, std::string> headers(r.headers.begin(), r.headers.end());
  EXPECT_EQ(headers["Content-Security-Policy"], contentSecurityPolicy(statusPageHtml()));
  EXPECT_EQ(headers["X-Content-Type-Options"], "nosniff");
  EXPECT_EQ(headers["Referrer-Policy"], "no-referrer");
  EXPECT_EQ(headers["X-Frame-Options"], "DENY");
  EXPECT_EQ(headers["Cache-Control"], "no-store");
}

// --- routes, through the real status server ----------------------------------

class JsonProxy : public ProxyView {
 public:
  std::vector<BackendLoad> backendLoad() override {
    BackendLoad b;
    b.name = "mbx1";
    b.weight = 2.5;
    return {b};
  }
  void setDrainedByResponder(const std::string&, bool, bool) override {}
  bool listenersUp() override { return true; }
  std::string proxyMetrics() override { return ""; }
  std::string commandsJson() override { return commands; }
  std::string protocolLogJson() override { return protocol_log; }
  std::string commands = R"({"bucket_upper_seconds":[0.0001,null],"backends":[]})";
  std::string protocol_log;  // empty: not available
};

struct Reply {
  int status = 0;
  std::string head;
  std::string body;
};

Reply request(std::uint16_t port, const std::string& target, const std::string& extra = "") {
  Reply reply;
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
  const std::string text =
      "GET " + target + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + extra + "\r\n";
  (void)!::send(fd, text.data(), text.size(), 0);
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

TEST(StatusPage, RoutesWithAToken) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  JsonProxy proxy;
  HealthConfig config;
  config.server_name = "portico-test";
  config.proxy_listener = Endpoint{"127.0.0.1", 1, false};
  config.status_listen = Endpoint{"127.0.0.1", 0, false};
  config.status_token = "t0ken";
  for (const char* probe :
       {"ImapProxyTestProbe", "ImapCTPProbe", "ImapSelfTestProbe", "ImapDeepTestProbe"}) {
    config.probes[probe] = ProbeSettings{std::chrono::hours(1), Millis(1'000), 0};
  }
  {
    HealthService service(&loop, config, proxy);
    std::string error;
    ASSERT_TRUE(IsOk(service.start()));
    const std::uint16_t port = service.statusPort();
    struct Shared {
      HealthService* service;
    } shared{&service};
    uv_async_t finished;
    finished.data = &shared;
    uv_async_init(&loop, &finished, [](uv_async_t* async) {
      static_cast<Shared*>(async->data)->service->stop([] {});
      uv_close(reinterpret_cast<uv_handle_t*>(async), nullptr);
    });
    std::map<std::string, Reply> replies;
    const std::string auth = "Authorization: Bearer t0ken\r\n";
    std::thread client([&] {
      replies["page"] = request(port, "/");
      replies["page-query"] = request(port, "/?refresh=1");
      replies["health"] = request(port, "/health");
      replies["commands-anon"] = request(port, "/commands");
      replies["commands"] = request(port, "/commands", auth);
      replies["protocol-log"] = request(port, "/protocol-log", auth);
      replies["backends"] = request(port, "/backends", auth);
      uv_async_send(&finished);
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    client.join();

    EXPECT_EQ(replies["page"].status, 200);
    EXPECT_EQ(replies["page"].body, statusPageHtml());
    EXPECT_NE(replies["page"].head.find("Content-Type: text/html; charset=utf-8"),
              std::string::npos);
    EXPECT_NE(replies["page"].head.find("Content-Security-Policy: default-src 'none'; "),
              std::string::npos)
        << replies["page"].head;
    EXPECT_NE(replies["page"].head.find("X-Content-Type-Options: nosniff"), std::string::npos);
    EXPECT_EQ(replies["page-query"].status, 200);
    // Only the static page is open; its data is not.
    EXPECT_EQ(replies["health"].status, 401);
    EXPECT_EQ(replies["commands-anon"].status, 401);
    EXPECT_EQ(replies["commands"].status, 200);
    EXPECT_EQ(json::parse(replies["commands"].body), json::parse(proxy.commands));
    EXPECT_NE(replies["commands"].head.find("X-Content-Type-Options: nosniff"), std::string::npos);
    EXPECT_EQ(replies["protocol-log"].status, 404);
    EXPECT_EQ(json::parse(replies["protocol-log"].body)["error"]["message"], "not available");
    ASSERT_EQ(replies["backends"].status, 200);
    EXPECT_EQ(json::parse(replies["backends"].body)["backends"][0]["weight"], 2.5);
  }
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace portico::health
