// The status page: health/web/status.html, compiled into the binary
// (health/cmake/embed.cmake), and the headers it is served with on GET /.
//
// Its Content-Security-Policy allows nothing but the page's own inline
// <style> and <script> elements, named by the SHA-256 of their text
// (computed from the embedded bytes once, on first use, so the hashes can
// never drift from the page), and fetches to the page's own origin. The
// page builds its DOM with textContent only, so the policy is a second
// wall, not the only one. Internal to health/.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "status_server.h"

namespace portico::health {

// The page's bytes, valid for the life of the process.
std::string_view statusPageHtml();

// The text of every `<tag>...</tag>` element (no attributes on the opening
// tag are expected, none are allowed) in `html`, in order.
std::vector<std::string_view> inlineElements(std::string_view html, std::string_view tag);

// "'sha256-<base64>'", a CSP source expression for an inline element's text.
std::string cspHashSource(std::string_view text);

// The policy for `html`: default-src 'none', its scripts and styles by hash,
// connect-src 'self', no base URI, no form posts, no framing.
std::string contentSecurityPolicy(std::string_view html);

// GET / : the page, text/html, with that policy, nosniff, no referrer, no
// framing and no caching.
HttpResponse statusPageResponse();

}  // namespace portico::health
