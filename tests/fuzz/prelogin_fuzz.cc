// libFuzzer target for the pre-login side of the parser: parsePrelogin over
// arbitrary bytes (small limits and the defaults), LOGIN commands whose
// password carries a marker, the SASL helpers and capability editing.
//
// Invariants checked (abort on violation):
// - parsePrelogin never fails fatally; ok exactly when the code is kNone; the
//   message is short printable ASCII, and non-empty on error.
// - On ok the command is consistent: a known verb, name == verbName(verb),
//   a valid tag at the start of the input, and only the fields of that verb
//   set; ID and the initial response respect their limits and grammar.
// - On error no user or password is returned and the message never holds
//   the password marker.
// - decodeBase64(encodeBase64(x)) == x; a decoded string re-encodes to input
//   that decodes the same.
// - saslUser results are bounded by the payload; editCapabilities is
//   idempotent and keeps the line end.
// - A quoted password that parses is well-formed UTF-8 (checked here by an
//   independent decoder); the ID line allowance accepts what max_line
//   accepts, and more only for ID.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "portico/parser.h"

namespace {

using namespace portico::parser;

constexpr std::string_view kPasswordMarker = "Zq7Pw0rdMark";

void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

bool isTagChar(unsigned char c) {
  if (c < 0x21 || c >= 0x7f) {
    return false;
  }
  return std::strchr("(){%*\"\\]+", c) == nullptr;
}

PreloginResult checkedParse(std::string_view input, const Limits& limits) {
  const PreloginResult r = parsePrelogin(input, limits);
  const Error& e = r.error;
  check(e.message != nullptr, "message is null");
  check(!e.fatal, "pre-login errors are recoverable");
  check(r.ok == (e.code == ErrorCode::kNone), "ok iff no error code");
  const std::size_t len = std::strlen(e.message);
  check(len < 80, "message is short");
  for (std::size_t i = 0; i < len; ++i) {
    check(e.message[i] >= 0x20 && e.message[i] < 0x7f, "message is printable ASCII");
  }
  const PreloginCommand& c = r.command;
  check(c.tag.size() <= limits.max_tag, "tag within limit");
  check(input.substr(0, c.tag.size()) == c.tag, "tag is the start of the input");
  for (unsigned char ch : c.tag) {
    check(isTagChar(ch), "tag characters");
  }
  if (!r.ok) {
    check(len > 0, "error has a message");
    check(c.user.empty() && c.password.empty(), "no credentials on error");
    check(e.code != ErrorCode::kUnknownCommand || c.verb == Verb::kOther, "unknown is kOther");
    return r;
  }
  check(!c.tag.empty() && input.size() > c.tag.size() && input[c.tag.size()] == ' ', "tag then SP");
  check(c.verb != Verb::kOther, "ok verb is known");
  check(c.name == verbName(c.verb), "name matches verb");
  check(c.user.size() <= input.size() && c.password.size() <= input.size(), "bounded");
  if (c.verb != Verb::kLogin) {
    check(c.user.empty() && c.password.empty(), "user/password only for LOGIN");
  }
  if (c.verb != Verb::kAuthenticate) {
    check(c.mechanism.empty() && !c.initial_response, "mechanism only for AUTHENTICATE");
  } else {
    check(!c.mechanism.empty(), "mechanism present");
    for (char ch : c.mechanism) {
      check(!(ch >= 'a' && ch <= 'z'), "mechanism upper-cased");
    }
    if (c.initial_response && !c.initial_response->empty()) {
      check(decodeBase64(*c.initial_response).has_value(), "initial response is base64");
    }
  }
  if (c.verb != Verb::kId) {
    check(!c.id, "id only for ID");
  } else if (c.id) {
    check(c.id->size() <= 30, "at most 30 ID pairs");
    for (const IdField& f : *c.id) {
      check(f.key.size() <= 30, "ID key limit");
      check(!f.value || f.value->size() <= 1024, "ID value limit");
    }
  }
  return r;
}

// Well-formed UTF-8 (RFC 3629), decoded to code points rather than matched
// byte range by byte range as the parser does.
bool wellFormedUtf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char lead = static_cast<unsigned char>(s[i]);
    std::size_t n = lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 0;
    if (n == 0 || lead > 0xf7 || i + n > s.size()) {
      return false;
    }
    std::uint32_t cp = n == 1 ? lead : lead & (0x7f >> n);
    for (std::size_t j = 1; j < n; ++j) {
      const unsigned char c = static_cast<unsigned char>(s[i + j]);
      if ((c & 0xc0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (c & 0x3f);
    }
    const std::uint32_t min = n == 1 ? 0 : n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000;
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n;
  }
  return true;
}

void fuzzLogin(std::string_view tail, const Limits& limits) {
  const std::string marker(kPasswordMarker);
  const std::string forms[] = {
      "a LOGIN user " + marker + std::string(tail),
      "a LOGIN user \"" + marker + std::string(tail),
      "a LOGIN user {" + std::to_string(marker.size() + tail.size()) + "}\r\n" + marker +
          std::string(tail),
  };
  for (const std::string& input : forms) {
    const PreloginResult r = checkedParse(input, limits);
    check(std::strstr(r.error.message, "Zq7Pw0rd") == nullptr, "password in message");
    if (r.ok) {
      check(r.command.verb == Verb::kLogin && r.command.user == "user", "LOGIN user");
      check(r.command.password.compare(0, marker.size(), marker) == 0, "LOGIN password");
      if (&input == &forms[1]) {
        check(wellFormedUtf8(r.command.password), "quoted password is well-formed UTF-8");
      }
    }
  }
}

void fuzzBase64(std::string_view bytes) {
  const std::string encoded = encodeBase64(bytes);
  check(encoded.size() % 4 == 0, "encoded length");
  const auto round = decodeBase64(encoded);
  check(round && *round == bytes, "decode(encode(x)) == x");
  if (const auto decoded = decodeBase64(bytes)) {
    check(decoded->size() <= bytes.size() / 4 * 3, "decoded size");
    const auto again = decodeBase64(encodeBase64(*decoded));
    check(again && *again == *decoded, "re-encode decodes the same");
  }
}

void fuzzSasl(std::string_view payload) {
  if (const auto user = saslUser("PLAIN", payload)) {
    check(!user->empty() && payload.find(*user) != std::string_view::npos, "PLAIN user");
    check(user->find('\0') == std::string::npos, "PLAIN user has no NUL");
  }
  if (const auto user = saslUser("xoauth2", payload)) {
    check(!user->empty() && payload.find(*user) != std::string_view::npos, "XOAUTH2 user");
  }
  if (const auto user = saslUser("OAuthBearer", payload)) {
    check(!user->empty() && user->size() <= payload.size(), "OAUTHBEARER user");
  }
  check(!saslUser("GSSAPI", payload), "unknown mechanism");
}

void fuzzCapabilities(std::string_view line) {
  for (std::string_view atom : parseCapabilities(line)) {
    check(!atom.empty() && atom.find(' ') == std::string_view::npos, "atom shape");
    check(hasCapability(line, atom), "hasCapability finds every atom");
  }
  const std::vector<std::string_view> remove = {"COMPRESS=DEFLATE", "AUTH=", "x"};
  const std::vector<std::string_view> add = {"IDLE", "SASL-IR"};
  const std::string once = editCapabilities(line, remove, add);
  const std::string twice = editCapabilities(once, remove, add);
  check(once == twice, "editCapabilities is idempotent");
  if (line.size() >= 2 && line.substr(line.size() - 2) == "\r\n") {
    check(once.size() >= 2 && once.substr(once.size() - 2) == "\r\n", "CRLF kept");
  }
  check(editCapabilities(line, {}, {}) == line, "no edits, no change");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  Limits small;
  small.max_line = 200;
  small.max_tag = 12;
  small.max_literal = 48;
  small.max_number_digits = 3;
  small.max_list_depth = 3;

  const PreloginResult a = checkedParse(input, small);
  const PreloginResult b = checkedParse(input, Limits{});
  if (a.ok) {
    // Smaller limits can only refuse more; what they accept, the defaults do.
    check(b.ok && b.command.verb == a.command.verb && b.command.password == a.command.password,
          "default limits accept what small limits accept");
  }
  Limits with_id = small;
  with_id.max_id_line = 600;
  const PreloginResult c = checkedParse(input, with_id);
  check(!a.ok || c.ok, "the ID allowance accepts what max_line accepts");
  check(!c.ok || a.ok || c.command.verb == Verb::kId, "the allowance is for ID only");

  fuzzLogin(input, small);
  fuzzBase64(input);
  fuzzSasl(input);
  fuzzCapabilities(input);
  return 0;
}
