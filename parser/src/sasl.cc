// SASL helpers for the pre-login path: base64 (RFC 4648, standard alphabet,
// padded, no whitespace) and reading the user name out of a decoded SASL
// payload so the proxy can route before the backend sees the credentials.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "portico/parser.h"
#include "prelogin_internal.h"

namespace portico::parser {
namespace {

using internal::equalsIgnoreCase;
using internal::startsWithIgnoreCase;

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr std::uint8_t kInvalid = 0xff;

constexpr std::array<std::uint8_t, 256> makeDecodeTable() {
  std::array<std::uint8_t, 256> table{};
  for (auto& v : table) {
    v = kInvalid;
  }
  for (std::uint8_t i = 0; i < 64; ++i) {
    table[static_cast<unsigned char>(kAlphabet[i])] = i;
  }
  return table;
}
constexpr std::array<std::uint8_t, 256> kDecodeTable = makeDecodeTable();

// PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd.
std::optional<std::string> plainUser(std::string_view decoded) {
  const std::size_t first = decoded.find('\0');
  if (first == std::string_view::npos) {
    return std::nullopt;
  }
  const std::size_t second = decoded.find('\0', first + 1);
  if (second == std::string_view::npos ||
      decoded.find('\0', second + 1) != std::string_view::npos) {
    return std::nullopt;
  }
  const std::string_view authzid = decoded.substr(0, first);
  const std::string_view authcid = decoded.substr(first + 1, second - first - 1);
  if (authcid.empty()) {
    return std::nullopt;
  }
  return std::string(authzid.empty() ? authcid : authzid);
}

// XOAUTH2 (Google): "user=" u ^A "auth=Bearer " token ^A ^A.
std::optional<std::string> xoauth2User(std::string_view decoded) {
  while (!decoded.empty()) {
    const std::size_t end = decoded.find('\x01');
    const std::string_view field = decoded.substr(0, end);
    if (startsWithIgnoreCase(field, "user=")) {
      const std::string_view user = field.substr(5);
      if (user.empty()) {
        return std::nullopt;
      }
      return std::string(user);
    }
    if (end == std::string_view::npos) {
      break;
    }
    decoded.remove_prefix(end + 1);
  }
  return std::nullopt;
}

// OAUTHBEARER (RFC 7628) starts with a GS2 header (RFC 5801):
// gs2-cbind-flag "," ["a=" saslname] ",". In saslname "," is sent as "=2C"
// and "=" as "=3D"; any other "=" is malformed.
std::optional<std::string> oauthbearerUser(std::string_view decoded) {
  const std::size_t flag_end = decoded.find(',');
  if (flag_end == std::string_view::npos) {
    return std::nullopt;
  }
  const std::string_view flag = decoded.substr(0, flag_end);
  if (flag != "n" && flag != "y" && !(flag.size() > 2 && flag.substr(0, 2) == "p=")) {
    return std::nullopt;
  }
  const std::size_t authz_end = decoded.find(',', flag_end + 1);
  if (authz_end == std::string_view::npos) {
    return std::nullopt;
  }
  const std::string_view authz = decoded.substr(flag_end + 1, authz_end - flag_end - 1);
  if (authz.size() <= 2 || authz.substr(0, 2) != "a=") {
    return std::nullopt;  // no authorization identity: the user is only in the token
  }
  const std::string_view name = authz.substr(2);
  std::string user;
  user.reserve(name.size());
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '\0' || c == '\x01') {
      return std::nullopt;
    }
    if (c != '=') {
      user.push_back(c);
      continue;
    }
    const std::string_view escape = name.substr(i, 3);
    if (escape == "=2C" || escape == "=2c") {
      user.push_back(',');
    } else if (escape == "=3D" || escape == "=3d") {
      user.push_back('=');
    } else {
      return std::nullopt;
    }
    i += 2;
  }
  return user;
}

}  // namespace

std::optional<std::string> decodeBase64(std::string_view text) {
  if (text.size() % 4 != 0) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    std::uint8_t v[4];
    std::size_t pad = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      if (c == '=') {
        // Padding: only in the last quantum, only its last one or two
        // characters, and never followed by data.
        if (!last || j < 2) {
          return std::nullopt;
        }
        ++pad;
        v[j] = 0;
        continue;
      }
      if (pad != 0) {
        return std::nullopt;
      }
      v[j] = kDecodeTable[static_cast<unsigned char>(c)];
      if (v[j] == kInvalid) {
        return std::nullopt;
      }
    }
    const std::uint32_t n = (std::uint32_t{v[0]} << 18) | (std::uint32_t{v[1]} << 12) |
                            (std::uint32_t{v[2]} << 6) | std::uint32_t{v[3]};
    out.push_back(static_cast<char>((n >> 16) & 0xff));
    if (pad < 2) {
      out.push_back(static_cast<char>((n >> 8) & 0xff));
    }
    if (pad < 1) {
      out.push_back(static_cast<char>(n & 0xff));
    }
  }
  return out;
}

std::string encodeBase64(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t n = (std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16) |
                            (std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8) |
                            std::uint32_t{static_cast<unsigned char>(bytes[i + 2])};
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(kAlphabet[(n >> 6) & 63]);
    out.push_back(kAlphabet[n & 63]);
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    std::uint32_t n = std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16;
    if (rest == 2) {
      n |= std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8;
    }
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> saslUser(std::string_view mechanism, std::string_view decoded) {
  if (equalsIgnoreCase(mechanism, "PLAIN")) {
    return plainUser(decoded);
  }
  if (equalsIgnoreCase(mechanism, "XOAUTH2")) {
    return xoauth2User(decoded);
  }
  if (equalsIgnoreCase(mechanism, "OAUTHBEARER")) {
    return oauthbearerUser(decoded);
  }
  return std::nullopt;
}

}  // namespace portico::parser
