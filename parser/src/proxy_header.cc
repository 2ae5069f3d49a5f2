#include "portico/proxy_header.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace portico::parser {

namespace {

constexpr std::string_view kV1Signature = "PROXY ";
constexpr std::string_view kV2Signature("\r\n\r\n\0\r\nQUIT\n", 12);

// Address block sizes by v2 family nibble: UNSPEC, INET, INET6, UNIX.
constexpr std::size_t kV2AddressSize[4] = {0, 12, 36, 216};
// Bytes of an address block the parser keeps (INET6's): UNIX paths are skipped.
constexpr std::size_t kV2AddressKept = 36;
static_assert(kProxyV2FixedSize + kV2AddressKept <= kProxyV1MaxLine);

constexpr const char* kErrorNames[] = {
    "none",           "not_proxy",     "v1_malformed",     "v1_too_long", "v2_bad_version",
    "v2_bad_command", "v2_bad_family", "v2_short_address", "v2_bad_tlv",  "too_large",
};
static_assert(sizeof(kErrorNames) / sizeof(kErrorNames[0]) ==
              static_cast<std::size_t>(ProxyHeaderError::kCount));

// A decimal port: 1-5 digits, at most 65535.
bool parsePort(std::string_view text, std::uint16_t& out) {
  if (text.empty() || text.size() > 5) {
    return false;
  }
  std::uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return false;
    }
    value = value * 10 + static_cast<std::uint32_t>(c - '0');
  }
  if (value > 65535) {
    return false;
  }
  out = static_cast<std::uint16_t>(value);
  return true;
}

// inet_pton over a view (it wants a NUL-terminated string).
bool parseAddress(std::string_view text, int family, std::array<std::uint8_t, 16>& out) {
  char copy[48];
  if (text.empty() || text.size() >= sizeof(copy)) {
    return false;
  }
  std::memcpy(copy, text.data(), text.size());
  copy[text.size()] = '\0';
  return ::inet_pton(family, copy, out.data()) == 1;
}

// The next field up to a single space; false if there is none.
bool nextField(std::string_view& rest, std::string_view& field) {
  auto space = rest.find(' ');
  if (space == std::string_view::npos) {
    return false;
  }
  field = rest.substr(0, space);
  rest.remove_prefix(space + 1);
  return !field.empty();
}

}  // namespace

const char* proxyHeaderErrorName(ProxyHeaderError error) {
  auto i = static_cast<std::size_t>(error);
  return i < static_cast<std::size_t>(ProxyHeaderError::kCount) ? kErrorNames[i] : "unknown";
}

const char* proxyParseStatusName(ProxyParseStatus status) {
  switch (status) {
    case ProxyParseStatus::kNeedMore:
      return "need_more";
    case ProxyParseStatus::kDone:
      return "done";
    case ProxyParseStatus::kError:
      return "error";
  }
  return "unknown";
}

ProxyHeaderParser::ProxyHeaderParser(std::size_t max_size) : max_size_(max_size) {}

ProxyHeaderParser::Result ProxyHeaderParser::finish(std::size_t consumed, ProxyParseStatus status) {
  return Result{consumed, status};
}

ProxyHeaderParser::Result ProxyHeaderParser::fail(std::size_t consumed, ProxyHeaderError error) {
  phase_ = Phase::kError;
  error_ = error;
  return Result{consumed, ProxyParseStatus::kError};
}

ProxyHeaderParser::Result ProxyHeaderParser::feed(std::string_view bytes) {
  if (phase_ == Phase::kDone) {
    return finish(0, ProxyParseStatus::kDone);
  }
  if (phase_ == Phase::kError) {
    return finish(0, ProxyParseStatus::kError);
  }
  std::size_t i = 0;
  while (i < bytes.size()) {
    // Skipped v2 bytes (a LOCAL body, a UNIX or UNSPEC address block, TLV
    // values) go by count, never one at a time.
    if (phase_ == Phase::kV2Body && tlv_left_ > 0) {
      std::size_t skip = std::min(tlv_left_, bytes.size() - i);
      tlv_left_ -= skip;
      body_seen_ += skip;
      seen_ += skip;
      i += skip;
      if (body_seen_ == body_length_) {
        finishV2();
        return finish(i, ProxyParseStatus::kDone);
      }
      continue;
    }
    const char c = bytes[i++];
    ++seen_;
    switch (phase_) {
      case Phase::kStart:
        if (c == kV1Signature[0]) {
          phase_ = Phase::kV1;
        } else if (c == kV2Signature[0]) {
          phase_ = Phase::kV2Fixed;
        } else {
          return fail(i, ProxyHeaderError::kNotProxy);
        }
        buffer_[stored_++] = c;
        break;
      case Phase::kV1:
        if (stored_ < kV1Signature.size() && c != kV1Signature[stored_]) {
          return fail(i, ProxyHeaderError::kNotProxy);
        }
        buffer_[stored_++] = c;
        if (c == '\n') {
          if (!parseV1Line()) {
            return fail(i, ProxyHeaderError::kV1Malformed);
          }
          header_.version = 1;
          header_.size = seen_;
          phase_ = Phase::kDone;
          return finish(i, ProxyParseStatus::kDone);
        }
        if (stored_ == kProxyV1MaxLine) {
          return fail(i, ProxyHeaderError::kV1TooLong);
        }
        break;
      case Phase::kV2Fixed:
        if (stored_ < kV2Signature.size() && c != kV2Signature[stored_]) {
          return fail(i, ProxyHeaderError::kNotProxy);
        }
        buffer_[stored_++] = c;
        if (stored_ == kProxyV2FixedSize) {
          if (ProxyHeaderError e = checkV2Fixed(); e != ProxyHeaderError::kNone) {
            return fail(i, e);
          }
          phase_ = Phase::kV2Body;
          if (body_length_ == 0) {
            finishV2();
            return finish(i, ProxyParseStatus::kDone);
          }
        } else if (stored_ == 13 && (static_cast<std::uint8_t>(c) >> 4) != 2) {
          return fail(i, ProxyHeaderError::kV2BadVersion);
        }
        break;
      case Phase::kV2Body:
        if (ProxyHeaderError e = takeV2Byte(static_cast<std::uint8_t>(c));
            e != ProxyHeaderError::kNone) {
          return fail(i, e);
        }
        if (body_seen_ == body_length_) {
          finishV2();
          return finish(i, ProxyParseStatus::kDone);
        }
        break;
      case Phase::kDone:
      case Phase::kError:
        break;  // unreachable: both return before the loop
    }
  }
  return finish(i, ProxyParseStatus::kNeedMore);
}

bool ProxyHeaderParser::parseV1Line() {
  std::string_view line(buffer_.data(), stored_);
  if (line.size() < kV1Signature.size() + 2 || line.substr(line.size() - 2) != "\r\n") {
    return false;
  }
  std::string_view rest = line.substr(kV1Signature.size(), line.size() - kV1Signature.size() - 2);
  if (rest.substr(0, 7) == "UNKNOWN" && (rest.size() == 7 || rest[7] == ' ')) {
    // Whatever follows UNKNOWN is to be ignored (the specification's words).
    header_.family = ProxyFamily::kUnspec;
    return true;
  }
  std::string_view protocol, source, destination, source_port;
  if (!nextField(rest, protocol) || !nextField(rest, source) || !nextField(rest, destination) ||
      !nextField(rest, source_port)) {
    return false;
  }
  int family = 0;
  if (protocol == "TCP4") {
    family = AF_INET;
    header_.family = ProxyFamily::kInet;
  } else if (protocol == "TCP6") {
    family = AF_INET6;
    header_.family = ProxyFamily::kInet6;
  } else {
    return false;
  }
  // `rest` is the destination port, up to the CR: no further field.
  return parseAddress(source, family, header_.source) &&
         parseAddress(destination, family, header_.destination) &&
         parsePort(source_port, header_.source_port) && parsePort(rest, header_.destination_port);
}

ProxyHeaderError ProxyHeaderParser::checkV2Fixed() {
  const auto byte = [this](std::size_t i) { return static_cast<std::uint8_t>(buffer_[i]); };
  const std::uint8_t command = byte(12) & 0x0f;
  if (command > 1) {
    return ProxyHeaderError::kV2BadCommand;
  }
  header_.local = command == 0;
  const std::uint8_t family = byte(13) >> 4;
  const std::uint8_t transport = byte(13) & 0x0f;
  if (family > 3 || transport > 2) {
    return ProxyHeaderError::kV2BadFamily;
  }
  body_length_ = static_cast<std::size_t>(byte(14)) << 8 | byte(15);
  if (kProxyV2FixedSize + body_length_ > max_size_) {
    return ProxyHeaderError::kTooLarge;
  }
  if (header_.local) {
    // LOCAL: the receiver must ignore the addresses and whatever follows.
    tlv_left_ = body_length_;
    return ProxyHeaderError::kNone;
  }
  address_size_ = kV2AddressSize[family];
  if (body_length_ < address_size_) {
    return ProxyHeaderError::kV2ShortAddress;
  }
  // Only TCP over IPv4 or IPv6 gives an address to use; UNSPEC, UNIX and
  // datagram families keep the connection's own.
  if (transport == 1 && family == 1) {
    header_.family = ProxyFamily::kInet;
  } else if (transport == 1 && family == 2) {
    header_.family = ProxyFamily::kInet6;
  }
  if (family == 0) {
    tlv_left_ = body_length_;  // UNSPEC: nothing in it has a meaning to check
  }
  return ProxyHeaderError::kNone;
}

ProxyHeaderError ProxyHeaderParser::takeV2Byte(std::uint8_t byte) {
  ++body_seen_;
  if (body_seen_ <= address_size_) {
    if (body_seen_ <= kV2AddressKept) {
      buffer_[stored_++] = static_cast<char>(byte);
    }
    return ProxyHeaderError::kNone;
  }
  // TLVs: a type byte and a two-byte length, then that many value bytes,
  // which must end within the header.
  ++tlv_header_seen_;
  if (tlv_header_seen_ == 2) {
    tlv_length_ = static_cast<std::uint16_t>(byte << 8);
  } else if (tlv_header_seen_ == 3) {
    tlv_length_ = static_cast<std::uint16_t>(tlv_length_ | byte);
    tlv_header_seen_ = 0;
    if (tlv_length_ > body_length_ - body_seen_) {
      return ProxyHeaderError::kV2BadTlv;
    }
    tlv_left_ = tlv_length_;
  }
  if (body_seen_ == body_length_ && tlv_header_seen_ != 0) {
    return ProxyHeaderError::kV2BadTlv;  // the header ends inside a TLV's type and length
  }
  return ProxyHeaderError::kNone;
}

void ProxyHeaderParser::finishV2() {
  header_.version = 2;
  header_.size = seen_;
  phase_ = Phase::kDone;
  const auto* a = reinterpret_cast<const std::uint8_t*>(buffer_.data()) + kProxyV2FixedSize;
  const auto port = [a](std::size_t at) {
    return static_cast<std::uint16_t>(a[at] << 8 | a[at + 1]);
  };
  if (header_.family == ProxyFamily::kInet) {
    std::copy(a, a + 4, header_.source.begin());
    std::copy(a + 4, a + 8, header_.destination.begin());
    header_.source_port = port(8);
    header_.destination_port = port(10);
  } else if (header_.family == ProxyFamily::kInet6) {
    std::copy(a, a + 16, header_.source.begin());
    std::copy(a + 16, a + 32, header_.destination.begin());
    header_.source_port = port(32);
    header_.destination_port = port(34);
  }
}

}  // namespace portico::parser
