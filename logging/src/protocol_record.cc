// Protocol log records: CSV formatting and redaction, pure functions. See
// portico/protocol_log.h for the contract.
#include "portico/ascii.h"
#include "portico/protocol_log.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "protocol_format.h"

namespace portico::logging {
namespace {

// ---------------------------------------------------------------------------
// Record formatting.

enum ByteClass : unsigned char { kPlain = 0, kNeedsQuotes = 1, kControl = 2 };

constexpr std::array<unsigned char, 256> makeByteClasses() {
  std::array<unsigned char, 256> classes{};
  for (int c = 0; c < 0x20; ++c) {
    classes[c] = c == '\t' ? kPlain : kControl;
  }
  classes[0x7f] = kControl;
  classes[','] = kNeedsQuotes;
  classes['"'] = kNeedsQuotes;
  return classes;
}
constexpr std::array<unsigned char, 256> kByteClasses = makeByteClasses();

// True when no byte of `value` is below 0x20, ',', '"' or DEL: eight bytes
// per step with the "has a zero byte / a byte less than n" word tricks,
// which are exact about whether such a byte exists.
bool plainFast(std::string_view value) {
  constexpr std::uint64_t kOnes = 0x0101010101010101ULL;
  constexpr std::uint64_t kHighs = 0x8080808080808080ULL;
  const auto hasZero = [](std::uint64_t x) { return (x - kOnes) & ~x & kHighs; };
  std::size_t i = 0;
  for (; i + 8 <= value.size(); i += 8) {
    std::uint64_t x;
    std::memcpy(&x, value.data() + i, sizeof(x));
    const std::uint64_t special = ((x - kOnes * 0x20) & ~x & kHighs) | hasZero(x ^ (kOnes * ',')) |
                                  hasZero(x ^ (kOnes * '"')) | hasZero(x ^ (kOnes * 0x7f));
    if (special != 0) {
      return false;
    }
  }
  for (; i < value.size(); ++i) {
    if (kByteClasses[static_cast<unsigned char>(value[i])] != kPlain) {
      return false;
    }
  }
  return true;
}

// Appends a CSV text field. Most fields need no quoting, so the plain case
// is a fast scan and a single append.
void appendField(std::string& out, std::string_view value) {
  if (plainFast(value)) {
    out.append(value);
    return;
  }
  unsigned char seen = 0;
  for (char c : value) {
    seen |= kByteClasses[static_cast<unsigned char>(c)];
  }
  if (seen == kPlain) {  // only TABs made the fast scan give up
    out.append(value);
    return;
  }
  const bool quote = (seen & kNeedsQuotes) != 0;
  if (quote) {
    out.push_back('"');
  }
  for (char c : value) {
    const unsigned char cls = kByteClasses[static_cast<unsigned char>(c)];
    if (cls == kControl) {
      out.push_back(' ');
    } else if (c == '"') {
      out.append("\"\"");
    } else {
      out.push_back(c);
    }
  }
  if (quote) {
    out.push_back('"');
  }
}

template <typename Int>
void appendNumber(std::string& out, Int value) {
  char buf[24];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out.append(buf, result.ptr);
}

void appendHex16(std::string& out, std::uint64_t value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  char buf[16];
  for (int i = 15; i >= 0; --i) {
    buf[i] = kDigits[value & 0xf];
    value >>= 4;
  }
  out.append(buf, sizeof(buf));
}

void putDigits(char* at, unsigned value, int width) {
  for (int i = width - 1; i >= 0; --i) {
    at[i] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
}

// Cuts at kMaxParameterBytes, backing off so a UTF-8 sequence is not split.
std::string_view truncateParameters(std::string_view parameters) {
  if (parameters.size() <= kMaxParameterBytes) {
    return parameters;
  }
  std::size_t end = kMaxParameterBytes;
  // At most three continuation bytes (10xxxxxx) precede a cut point.
  for (int i = 0; i < 3 && end > 0 && (static_cast<unsigned char>(parameters[end]) & 0xc0) == 0x80;
       ++i) {
    --end;
  }
  return parameters.substr(0, end);
}

// ---------------------------------------------------------------------------
// Redaction.

std::string_view trimLeft(std::string_view text) {
  const std::size_t start = text.find_first_not_of(' ');
  return start == std::string_view::npos ? std::string_view() : text.substr(start);
}

// End of LOGIN's first argument (atom, quoted string or literal header) in
// `p` (non-empty, no leading space), or npos when it cannot be parsed.
std::size_t loginUserEnd(std::string_view p) {
  if (p[0] == '"') {
    for (std::size_t i = 1; i < p.size(); ++i) {
      if (p[i] == '\\') {
        ++i;
      } else if (p[i] == '"') {
        return i + 1;
      }
    }
    return std::string_view::npos;
  }
  if (p[0] == '{') {
    const std::size_t close = p.find('}');
    if (close == std::string_view::npos) {
      return close;
    }
    std::string_view inside = p.substr(1, close - 1);
    if (!inside.empty() && (inside.back() == '+' || inside.back() == '-')) {
      inside.remove_suffix(1);
    }
    const bool digits = !inside.empty() && std::all_of(inside.begin(), inside.end(),
                                                       [](char c) { return c >= '0' && c <= '9'; });
    return digits ? close + 1 : std::string_view::npos;
  }
  const std::size_t space = p.find(' ');
  return space == std::string_view::npos ? p.size() : space;
}

}  // namespace

namespace internal {

// "YYYY-MM-DDTHH:MM:SS.mmmZ". Times outside years 1970..9999 are clamped so
// the column keeps its fixed width.
void appendIsoTime(std::string& out, std::int64_t time_ms) {
  using namespace std::chrono;
  constexpr std::int64_t kLast = 253402300799999;  // 9999-12-31T23:59:59.999Z
  time_ms = std::clamp<std::int64_t>(time_ms, 0, kLast);
  const sys_time<milliseconds> tp{milliseconds(time_ms)};
  const sys_days day = floor<days>(tp);
  const year_month_day ymd{day};
  const auto in_day = static_cast<unsigned>((tp - day).count());
  char buf[24] = {'0', '0', '0', '0', '-', '0', '0', '-', '0', '0', 'T', '0',
                  '0', ':', '0', '0', ':', '0', '0', '.', '0', '0', '0', 'Z'};
  putDigits(buf, static_cast<unsigned>(static_cast<int>(ymd.year())), 4);
  putDigits(buf + 5, static_cast<unsigned>(ymd.month()), 2);
  putDigits(buf + 8, static_cast<unsigned>(ymd.day()), 2);
  putDigits(buf + 11, in_day / 3600000, 2);
  putDigits(buf + 14, in_day / 60000 % 60, 2);
  putDigits(buf + 17, in_day / 1000 % 60, 2);
  putDigits(buf + 20, in_day % 1000, 3);
  out.append(buf, sizeof(buf));
}

}  // namespace internal

// ---------------------------------------------------------------------------
// Public functions.

void formatRecord(const ProtocolRecord& record, std::string& out) {
  internal::appendIsoTime(out, record.time_ms);
  out.push_back(',');
  appendHex16(out, record.session_id);
  out.push_back(',');
  appendNumber(out, record.seq);
  out.push_back(',');
  appendField(out, record.server_address);
  out.push_back(',');
  appendField(out, record.client_address);
  out.push_back(',');
  appendField(out, record.user);
  out.push_back(',');
  appendNumber(out, record.duration_ms);
  out.push_back(',');
  appendNumber(out, record.request_bytes);
  out.push_back(',');
  appendNumber(out, record.response_bytes);
  out.push_back(',');
  appendField(out, record.command);
  out.push_back(',');
  appendField(out, truncateParameters(record.parameters));
  out.push_back(',');
  appendField(out, record.context);
  out.append("\r\n");
}

std::string_view redactCommandParameters(std::string_view command, std::string_view parameters,
                                         std::string& storage) {
  if (equalsIgnoreCase(command, "LOGIN")) {
    const std::string_view p = trimLeft(parameters);
    if (p.empty()) {
      return p;
    }
    const std::size_t end = loginUserEnd(p);
    if (end == std::string_view::npos) {
      storage.assign("*****");
    } else {
      storage.assign(p.substr(0, end));
      storage.append(" *****");
    }
    return storage;
  }
  if (equalsIgnoreCase(command, "AUTHENTICATE")) {
    const std::string_view p = trimLeft(parameters);
    return p.substr(0, p.find(' '));
  }
  return parameters;
}

std::string redactCommandParameters(std::string_view command, std::string_view parameters) {
  std::string storage;
  return std::string(redactCommandParameters(command, parameters, storage));
}

}  // namespace portico::logging
