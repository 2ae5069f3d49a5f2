#include "status_page.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <array>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace portico::health {

namespace web {
extern const unsigned char kStatusPage[];
extern const std::size_t kStatusPageSize;
}  // namespace web

std::string_view statusPageHtml() {
  return {reinterpret_cast<const char*>(web::kStatusPage), web::kStatusPageSize};
}

std::vector<std::string_view> inlineElements(std::string_view html, std::string_view tag) {
  const std::string open = fmt::format("<{}>", tag);
  const std::string close = fmt::format("</{}>", tag);
  std::vector<std::string_view> out;
  std::size_t pos = 0;
  while ((pos = html.find(open, pos)) != std::string_view::npos) {
    const std::size_t start = pos + open.size();
    const std::size_t end = html.find(close, start);
    if (end == std::string_view::npos) {
      break;
    }
    out.push_back(html.substr(start, end - start));
    pos = end + close.size();
  }
  return out;
}

std::string cspHashSource(std::string_view text) {
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  // Base64 of 32 bytes: 44 characters and the NUL EVP_EncodeBlock writes.
  std::array<unsigned char, 4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1> base64{};
  const int n = EVP_EncodeBlock(base64.data(), digest.data(), static_cast<int>(digest.size()));
  return fmt::format("'sha256-{}'", std::string_view(reinterpret_cast<const char*>(base64.data()),
                                                     static_cast<std::size_t>(n)));
}

std::string contentSecurityPolicy(std::string_view html) {
  std::vector<std::string> scripts;
  for (std::string_view text : inlineElements(html, "script")) {
    scripts.push_back(cspHashSource(text));
  }
  std::vector<std::string> styles;
  for (std::string_view text : inlineElements(html, "style")) {
    styles.push_back(cspHashSource(text));
  }
  // An empty list would mean "anything": say 'none' instead.
  auto sources = [](const std::vector<std::string>& list) {
    return list.empty() ? std::string("'none'") : fmt::format("{}", fmt::join(list, " "));
  };
  return fmt::format(
      "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; "
      "form-action 'none'; frame-ancestors 'none'",
      sources(scripts), sources(styles));
}

HttpResponse statusPageResponse() {
  static const std::string policy = contentSecurityPolicy(statusPageHtml());
  HttpResponse response;
  response.status = 200;
  response.content_type = "text/html; charset=utf-8";
  response.body = std::string(statusPageHtml());
  response.headers = {{"Content-Security-Policy", policy},
                      {"X-Content-Type-Options", "nosniff"},
                      {"Referrer-Policy", "no-referrer"},
                      {"X-Frame-Options", "DENY"},
                      {"Cache-Control", "no-store"}};
  return response;
}

}  // namespace portico::health
