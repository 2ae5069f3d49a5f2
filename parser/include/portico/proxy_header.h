// Inbound PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1
// and 2): what a load balancer sends as the first bytes of a connection to
// say which client it carries.
//
// Contract:
// - Pure: no I/O, no clocks, no exceptions, no allocation. The parser keeps
//   at most kProxyV1MaxLine bytes of its own (the v1 line, or the fixed part
//   and address block of a v2 header); v2 TLVs are walked by count and
//   never stored.
// - Resumable: feed() takes any split of the stream and reaches the same
//   result at the same stream offset. It never consumes a byte past the
//   header: what follows (an IMAP command, a TLS ClientHello) stays with the
//   caller.
// - Bounded: a v2 header longer than the max_size given to the constructor
//   (16 + its length field) is an error as soon as its length is known,
//   before its bytes arrive; a v1 line is an error past 107 bytes, whatever
//   max_size says.
// - Errors are final: after kError every feed() returns kError and takes
//   nothing; after kDone every feed() returns kDone and takes nothing.
// - What is believed: a v2 LOCAL header, a v1 UNKNOWN line and a v2 PROXY
//   header whose family is not TCP over IPv4/IPv6 all parse as kDone with
//   family kUnspec: the caller keeps the connection's own addresses, as the
//   specification says. The caller alone decides whether the peer may send
//   a header at all.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace portico::parser {

// The longest v1 line, CRLF included ("PROXY TCP6" with two full IPv6
// addresses and ports).
inline constexpr std::size_t kProxyV1MaxLine = 107;
// The v2 fixed part: 12-byte signature, version/command, family, length.
inline constexpr std::size_t kProxyV2FixedSize = 16;
// A default bound for a whole v2 header: addresses plus a few hundred bytes
// of TLVs (HAProxy's SSL and unique-id TLVs stay well under it).
inline constexpr std::size_t kProxyHeaderDefaultMax = 1024;

enum class ProxyHeaderError : std::uint8_t {
  kNone = 0,
  kNotProxy,        // the first bytes are neither the v1 nor the v2 signature
  kV1Malformed,     // v1 line without CR LF, bad protocol, address or port
  kV1TooLong,       // no LF within kProxyV1MaxLine bytes
  kV2BadVersion,    // v2 signature followed by a version other than 2
  kV2BadCommand,    // neither LOCAL nor PROXY
  kV2BadFamily,     // unknown address family or transport nibble
  kV2ShortAddress,  // length too small for the addresses of its family
  kV2BadTlv,        // a TLV that runs past the end of the header
  kTooLarge,        // longer than max_size
  kCount,
};
const char* proxyHeaderErrorName(ProxyHeaderError error);

enum class ProxyFamily : std::uint8_t {
  kUnspec,  // LOCAL, UNKNOWN, or a family without usable addresses
  kInet,    // IPv4: the first 4 bytes of source/destination
  kInet6,   // IPv6: all 16 bytes
};

struct ProxyHeader {
  std::uint8_t version = 0;  // 1 or 2
  bool local = false;        // v2 LOCAL: the balancer's own connection (a health check)
  ProxyFamily family = ProxyFamily::kUnspec;
  std::array<std::uint8_t, 16> source{};  // network byte order
  std::array<std::uint8_t, 16> destination{};
  std::uint16_t source_port = 0;  // host byte order
  std::uint16_t destination_port = 0;
  std::size_t size = 0;  // bytes of the whole header
};

enum class ProxyParseStatus : std::uint8_t { kNeedMore, kDone, kError };
const char* proxyParseStatusName(ProxyParseStatus status);

class ProxyHeaderParser {
 public:
  explicit ProxyHeaderParser(std::size_t max_size = kProxyHeaderDefaultMax);

  struct Result {
    std::size_t consumed = 0;  // bytes of `bytes` that belong to the header
    ProxyParseStatus status = ProxyParseStatus::kNeedMore;
  };
  // kNeedMore: every byte was taken, send more. kDone: header() is set and
  // `consumed` may be less than given (the rest is not the header's).
  // kError: error() says why; `consumed` counts the byte that showed it.
  Result feed(std::string_view bytes);

  const ProxyHeader& header() const { return header_; }  // after kDone
  ProxyHeaderError error() const { return error_; }
  std::size_t bytesSeen() const { return seen_; }

 private:
  enum class Phase : std::uint8_t { kStart, kV1, kV2Fixed, kV2Body, kDone, kError };
  Result finish(std::size_t consumed, ProxyParseStatus status);
  Result fail(std::size_t consumed, ProxyHeaderError error);
  bool parseV1Line();
  ProxyHeaderError checkV2Fixed();
  ProxyHeaderError takeV2Byte(std::uint8_t byte);
  void finishV2();

  std::size_t max_size_;
  Phase phase_ = Phase::kStart;
  ProxyHeaderError error_ = ProxyHeaderError::kNone;
  ProxyHeader header_;
  std::size_t seen_ = 0;  // header bytes taken so far
  std::array<char, kProxyV1MaxLine> buffer_{};
  std::size_t stored_ = 0;  // bytes in buffer_
  // v2 body walk
  std::size_t body_length_ = 0;   // the length field
  std::size_t address_size_ = 0;  // bytes of it that are addresses
  std::size_t body_seen_ = 0;
  std::size_t tlv_header_seen_ = 0;  // 0-2 bytes of the current TLV's type and length
  std::size_t tlv_left_ = 0;         // value bytes of the current TLV still to skip
  std::uint16_t tlv_length_ = 0;
};

}  // namespace portico::parser
