// Line scanning shared by CommandFramer and ResponseFramer.
//
// A line is scanned in one of two ways that must agree byte for byte:
// - whole: the line and its LF are in one input and nothing of it was seen
//   before. One memchr finds the LF, one finds a bare CR, the head is copied
//   with one memcpy, and quotes and literal headers are looked at only when
//   the line ends with '}' (markerOf() with `whole` set).
// - absorbed: the line spans inputs. Each piece updates detail::LineScan
//   (head bytes kept, bare CR, quote state, the text after the last '{'),
//   and a CR at the end of a piece stays pending until the next byte says
//   whether it ends the line.
// The split tests and the fuzz targets check that both give the same events.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "portico/ascii.h"
#include "portico/parser.h"

namespace portico::parser::detail {

// Longest command name the command framer accepts (kBadCommand beyond).
constexpr std::size_t kMaxCommandName = 64;

struct CharClasses {
  std::array<bool, 256> tag{};   // ASTRING-CHAR minus '+' and ']'
  std::array<bool, 256> atom{};  // ATOM-CHAR
};

constexpr CharClasses makeCharClasses() {
  CharClasses classes;
  for (int c = 0x21; c < 0x7f; ++c) {
    classes.atom[c] = true;
    classes.tag[c] = true;
  }
  // atom-specials: ( ) { SP CTL % * " \ and resp-specials: ]
  for (unsigned char c : std::string_view("(){%*\"\\]")) {
    classes.atom[c] = false;
    classes.tag[c] = false;
  }
  // A tag is an astring minus '+'. RFC 9051 would allow ']' (resp-specials)
  // but, like Dovecot, Portico refuses it: it confuses response-code parsing.
  classes.tag['+'] = false;
  return classes;
}
inline constexpr CharClasses kChars = makeCharClasses();

inline bool isTagChar(char c) {
  return kChars.tag[static_cast<unsigned char>(c)];
}
inline bool isAtomChar(char c) {
  return kChars.atom[static_cast<unsigned char>(c)];
}
using portico::asciiUpper;

// `text` equals `upper` (already upper case) ignoring ASCII case: the framer's
// hot-path form of equalsIgnoreCase, folding one side only.
inline bool equalsUpper(std::string_view text, std::string_view upper) {
  if (text.size() != upper.size()) {
    return false;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (asciiUpper(text[i]) != upper[i]) {
      return false;
    }
  }
  return true;
}

// Headroom so that a tag and a command name (or a response status) are always
// inside the kept part of a line even when Limits::max_head is tiny.
inline std::size_t headCapacity(const Limits& limits) {
  const std::size_t needed = limits.max_tag + kMaxCommandName + 8;
  return limits.max_head > needed ? limits.max_head : needed;
}

inline void resetLine(LineScan& scan) {
  scan = LineScan{};
}

// Advances the quote state over `n` bytes. Inside a quote a backslash escapes
// the next byte. Linear in n even for runs of backslashes or escaped quotes.
inline void scanQuotes(bool& in_quote, bool& escape, const char* p, std::size_t n) {
  const char* end = p + n;
  const char* close = nullptr;  // next '"' at or after p, while in a quote
  while (p < end) {
    if (!in_quote) {
      const char* open = static_cast<const char*>(std::memchr(p, '"', end - p));
      if (open == nullptr) {
        return;
      }
      in_quote = true;
      p = open + 1;
      close = nullptr;
      continue;
    }
    if (escape) {
      escape = false;
      if (p == close) {
        close = nullptr;
      }
      ++p;
      continue;
    }
    if (close == nullptr || close < p) {
      close = static_cast<const char*>(std::memchr(p, '"', end - p));
    }
    const char* limit = close != nullptr ? close : end;
    const char* backslash = static_cast<const char*>(std::memchr(p, '\\', limit - p));
    if (backslash != nullptr) {
      escape = true;
      p = backslash + 1;
      continue;
    }
    if (close == nullptr) {
      return;
    }
    in_quote = false;
    p = close + 1;
  }
}

// Quote state and the text after the last '{' for `n` content bytes.
inline void trackContent(LineScan& scan, const char* p, std::size_t n) {
  if (n == 0) {
    return;
  }
  scanQuotes(scan.in_quote, scan.escape, p, n);
  const char* from = p;
  const char* brace = static_cast<const char*>(memrchr(p, '{', n));
  if (brace != nullptr) {
    scan.brace = true;
    scan.brace_tilde = (brace > p ? brace[-1] : scan.last[1]) == '~';
    scan.brace_chars = 0;
    scan.brace_digits = 0;
    scan.brace_value = 0;
    scan.brace_lead = true;
    scan.brace_overflow = false;
    scan.brace_quote = false;
    from = brace + 1;
  } else if (!scan.brace) {
    from = nullptr;
  }
  if (from != nullptr) {
    const std::size_t k = static_cast<std::size_t>(p + n - from);
    scan.brace_chars += k;
    std::size_t i = 0;
    while (scan.brace_lead && i < k) {
      const char c = from[i];
      if (c < '0' || c > '9') {
        scan.brace_lead = false;
        break;
      }
      std::uint64_t value = 0;
      if (__builtin_mul_overflow(scan.brace_value, 10, &value) ||
          __builtin_add_overflow(value, static_cast<std::uint64_t>(c - '0'), &value)) {
        scan.brace_overflow = true;
      }
      scan.brace_value = value;
      ++scan.brace_digits;
      ++i;
    }
    if (!scan.brace_quote && k > i && std::memchr(from + i, '"', k - i) != nullptr) {
      scan.brace_quote = true;
    }
  }
  if (n >= 2) {
    scan.last[0] = p[n - 2];
    scan.last[1] = p[n - 1];
  } else {
    scan.last[0] = scan.last[1];
    scan.last[1] = p[0];
  }
}

// Line content that is not the CR of a CRLF: keep it, note CRs, track.
inline void absorbContent(LineScan& scan, const char* p, std::size_t n, char* store,
                          std::size_t cap, bool track) {
  if (n == 0) {
    return;
  }
  if (scan.stored < cap) {
    const std::size_t keep = n < cap - scan.stored ? n : cap - scan.stored;
    std::memcpy(store + scan.stored, p, keep);
    scan.stored += static_cast<std::uint32_t>(keep);
  }
  if (!scan.bare_cr && std::memchr(p, '\r', n) != nullptr) {
    scan.bare_cr = true;  // only a CR right before the LF ends a line
  }
  if (track) {
    trackContent(scan, p, n);
  }
  scan.line_bytes += n;
}

// Bytes of a line without its LF; a CR at the very end stays pending.
inline void absorb(LineScan& scan, const char* p, std::size_t n, char* store, std::size_t cap,
                   bool track) {
  if (n == 0) {
    return;
  }
  if (scan.pending_cr) {
    scan.pending_cr = false;
    scan.line_bytes -= 1;
    absorbContent(scan, "\r", 1, store, cap, track);
  }
  const bool cr_last = p[n - 1] == '\r';
  absorbContent(scan, p, n - (cr_last ? 1 : 0), store, cap, track);
  if (cr_last) {
    scan.pending_cr = true;
    scan.line_bytes += 1;
  }
}

enum class LineStatus : std::uint8_t { kPartial, kTooLong, kEnded };

struct LineResult {
  LineStatus status = LineStatus::kPartial;
  std::size_t used = 0;           // input bytes taken (the LF included)
  std::uint64_t content_len = 0;  // kEnded: the line without CR LF
  const char* whole = nullptr;    // kEnded: the whole content, in the input
  bool bare_cr = false;
};

// Scans the current line from `p`. kTooLong: the line passed max_line (see
// parser.h); `used` ends at the byte that showed it.
inline LineResult scanLine(LineScan& scan, const char* p, std::size_t avail, std::uint64_t max_line,
                           char* store, std::size_t cap, bool track) {
  LineResult result;
  // Content up to max_line, then a CR and the LF.
  const std::uint64_t budget =
      max_line >= UINT64_MAX - 2 ? UINT64_MAX : max_line + 2 - scan.line_bytes;
  const std::size_t window = avail < budget ? avail : static_cast<std::size_t>(budget);
  const char* lf = static_cast<const char*>(std::memchr(p, '\n', window));
  if (lf != nullptr) {
    const std::size_t len = static_cast<std::size_t>(lf - p);
    const bool cr = len != 0 && p[len - 1] == '\r';
    result.status = LineStatus::kEnded;
    result.used = len + 1;
    if (scan.line_bytes == 0) {
      const std::size_t content = len - (cr ? 1 : 0);
      result.content_len = content;
      result.whole = p;
      result.bare_cr = content != 0 && std::memchr(p, '\r', content) != nullptr;
      if (cap != 0) {
        const std::size_t keep = content < cap ? content : cap;
        std::memcpy(store, p, keep);
        scan.stored = static_cast<std::uint32_t>(keep);
      }
      return result;
    }
    if (len != 0) {
      absorb(scan, p, len - (cr ? 1 : 0), store, cap, track);
      if (scan.pending_cr) {  // the CR of the piece before was bare
        scan.pending_cr = false;
        scan.line_bytes -= 1;
        absorbContent(scan, "\r", 1, store, cap, track);
      }
    }
    result.content_len = scan.line_bytes - (scan.pending_cr ? 1 : 0);
    result.bare_cr = scan.bare_cr;
    return result;
  }
  absorb(scan, p, window, store, cap, track);
  result.used = window;
  result.status = avail >= budget ? LineStatus::kTooLong : LineStatus::kPartial;
  result.bare_cr = scan.bare_cr;
  return result;
}

enum class MarkerKind : std::uint8_t { kNone, kLiteral, kBadLiteral, kNumberTooLong };

struct Marker {
  MarkerKind kind = MarkerKind::kNone;
  LiteralKind literal = LiteralKind::kSync;
  std::uint64_t size = 0;
};

// The literal header a tracked line ends with, given that its content ends
// with '}' outside a quote. A '{' followed by a '"' is text, not a header.
inline Marker evaluateMarker(const LineScan& scan, std::size_t max_digits) {
  Marker marker;
  if (!scan.brace || scan.brace_quote || scan.in_quote) {
    return marker;
  }
  const std::uint64_t body = scan.brace_chars - 1;  // between '{' and the final '}'
  const bool plus = body >= 1 && scan.last[0] == '+';
  const std::uint64_t digits = body - (plus ? 1 : 0);
  if (digits == 0 || scan.brace_digits != digits) {
    marker.kind = MarkerKind::kBadLiteral;
    return marker;
  }
  if (digits > max_digits || scan.brace_overflow) {
    marker.kind = MarkerKind::kNumberTooLong;
    return marker;
  }
  marker.kind = MarkerKind::kLiteral;
  marker.size = scan.brace_value;
  if (scan.brace_tilde) {
    marker.literal = plus ? LiteralKind::kBinaryNonSync : LiteralKind::kBinarySync;
  } else {
    marker.literal = plus ? LiteralKind::kNonSync : LiteralKind::kSync;
  }
  return marker;
}

// The literal header at the end of the line scanLine() just ended.
inline Marker markerOf(const LineScan& scan, const LineResult& line, std::size_t max_digits) {
  if (line.content_len == 0) {
    return {};
  }
  if (line.whole != nullptr) {
    const std::size_t n = static_cast<std::size_t>(line.content_len);
    if (line.whole[n - 1] != '}') {
      return {};
    }
    LineScan whole;
    trackContent(whole, line.whole, n);
    return evaluateMarker(whole, max_digits);
  }
  if (scan.last[1] != '}') {
    return {};
  }
  return evaluateMarker(scan, max_digits);
}

// The part of feeding that commands and responses share, for a framer whose
// State has kLine, kBody and kSkip: in kBody, passes over what the input
// holds of a literal's body (counted in `bytes`; back to kLine when it is
// all there); in kSkip, passes over everything up to the LF that ends a line
// that could not be read, and sets `line_skipped` when that LF came, so the
// caller starts its next command or response. Returns false in kLine: a
// line to scan, the caller's part.
template <typename State>
inline bool passBodyOrSkip(State& state, std::uint64_t& literal_left, std::uint64_t& bytes,
                           const char* data, std::size_t size, std::size_t& pos,
                           bool& line_skipped) {
  if (state == State::kBody) {
    const std::uint64_t take = std::min<std::uint64_t>(literal_left, size - pos);
    pos += take;
    literal_left -= take;
    bytes += take;
    if (literal_left == 0) {
      state = State::kLine;
    }
    return true;
  }
  if (state == State::kSkip) {
    const void* lf = std::memchr(data + pos, '\n', size - pos);
    if (lf == nullptr) {
      pos = size;
    } else {
      pos = static_cast<const char*>(lf) - data + 1;
      line_skipped = true;
    }
    return true;
  }
  return false;
}

}  // namespace portico::parser::detail
