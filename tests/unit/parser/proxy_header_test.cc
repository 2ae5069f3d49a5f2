// ProxyHeaderParser: a table of headers, each run whole, byte by byte and
// split at every offset against a guard page; every run must stop at the
// same stream offset with the same result, and never take a byte that
// follows the header.

#include "portico/proxy_header.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "parser/split_harness.h"

namespace portico::parser {
namespace {

using testing::GuardedBuffer;

struct Outcome {
  ProxyParseStatus status = ProxyParseStatus::kNeedMore;
  ProxyHeaderError error = ProxyHeaderError::kNone;
  std::size_t offset = 0;  // stream offset where the parser stopped
  ProxyHeader header;
  std::string problem;  // a broken contract
};

bool sameHeader(const ProxyHeader& a, const ProxyHeader& b) {
  return a.version == b.version && a.local == b.local && a.family == b.family &&
         a.source == b.source && a.destination == b.destination && a.source_port == b.source_port &&
         a.destination_port == b.destination_port && a.size == b.size;
}

Outcome runCuts(std::string_view input, const std::vector<std::size_t>& cuts, GuardedBuffer& guard,
                std::size_t max_size) {
  Outcome out;
  ProxyHeaderParser parser(max_size);
  for (std::size_t c = 0; c < cuts.size(); ++c) {
    const std::size_t begin = cuts[c];
    const std::size_t end = c + 1 < cuts.size() ? cuts[c + 1] : input.size();
    std::string_view piece = guard.place(input.substr(begin, end - begin));
    auto r = parser.feed(piece);
    if (r.consumed > piece.size()) {
      out.problem = "consumed more than given at " + std::to_string(begin);
      return out;
    }
    out.offset = begin + r.consumed;
    if (r.status == ProxyParseStatus::kNeedMore) {
      if (r.consumed != piece.size()) {
        out.problem = "need_more without taking everything at " + std::to_string(begin);
      }
      continue;
    }
    out.status = r.status;
    out.error = parser.error();
    out.header = parser.header();
    auto again = parser.feed(piece.substr(r.consumed));
    if (again.consumed != 0 || again.status != r.status) {
      out.problem = "final state not sticky";
    }
    return out;
  }
  return out;
}

Outcome runAll(std::string_view input, std::string* mismatch,
               std::size_t max_size = kProxyHeaderDefaultMax) {
  GuardedBuffer guard(input.size() + 1);
  Outcome whole = runCuts(input, {0}, guard, max_size);
  mismatch->clear();
  if (!whole.problem.empty()) {
    *mismatch = "whole: " + whole.problem;
    return whole;
  }
  auto check = [&](const std::vector<std::size_t>& cuts, const std::string& what) {
    if (!mismatch->empty()) {
      return;
    }
    Outcome run = runCuts(input, cuts, guard, max_size);
    if (!run.problem.empty()) {
      *mismatch = what + ": " + run.problem;
    } else if (run.status != whole.status || run.error != whole.error ||
               run.offset != whole.offset || !sameHeader(run.header, whole.header)) {
      *mismatch = what + ": stopped at " + std::to_string(run.offset) + " with " +
                  proxyHeaderErrorName(run.error) + ", whole at " + std::to_string(whole.offset) +
                  " with " + proxyHeaderErrorName(whole.error);
    }
  };
  check(testing::cutsEvery(input.size(), 1), "byte by byte");
  for (std::size_t at = 1; at < input.size(); ++at) {
    check({0, at}, "split at " + std::to_string(at));
  }
  for (std::size_t chunk : {2, 3, 7, 16}) {
    check(testing::cutsEvery(input.size(), chunk), "chunks of " + std::to_string(chunk));
  }
  return whole;
}

std::string v2(std::uint8_t version_command, std::uint8_t family, const std::string& body) {
  std::string out("\r\n\r\n\0\r\nQUIT\n", 12);
  out.push_back(static_cast<char>(version_command));
  out.push_back(static_cast<char>(family));
  out.push_back(static_cast<char>(body.size() >> 8));
  out.push_back(static_cast<char>(body.size() & 0xff));
  return out + body;
}

std::string bytes(std::initializer_list<int> list) {
  std::string out;
  for (int b : list) {
    out.push_back(static_cast<char>(b));
  }
  return out;
}

std::string tlv(std::uint8_t type, const std::string& value) {
  return bytes({type, static_cast<int>(value.size() >> 8), static_cast<int>(value.size() & 0xff)}) +
         value;
}

// 192.0.2.1:56324 -> 198.51.100.2:143
const std::string kInetBody = bytes({192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x00, 143});
// 2001:db8::1:1234 -> ::1:993
const std::string kInet6Body =
    bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,  // source
           0,    0,    0,    0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,  // destination
           0x04, 0xd2, 0x03, 0xe1});

struct Case {
  const char* name;
  std::string header;  // the header bytes (or the bytes that fail)
  std::string after;   // what follows it on the wire, never consumed on success
  ProxyParseStatus status;
  ProxyHeaderError error = ProxyHeaderError::kNone;
  std::size_t error_offset = 0;  // for errors: where the parser stops
  ProxyFamily family = ProxyFamily::kUnspec;
  bool local = false;
};

std::vector<Case> cases() {
  const auto done = ProxyParseStatus::kDone;
  const auto error = ProxyParseStatus::kError;
  using E = ProxyHeaderError;
  const std::string six =
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  return {
      {"v1_tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 143\r\n", "a1 NOOP\r\n", done, E::kNone,
       0, ProxyFamily::kInet},
      {"v1_tcp6", "PROXY TCP6 2001:db8::1 ::1 1234 993\r\n", "\x16\x03\x01", done, E::kNone, 0,
       ProxyFamily::kInet6},
      {"v1_longest", six, "", done, E::kNone, 0, ProxyFamily::kInet6},
      {"v1_unknown", "PROXY UNKNOWN\r\n", "x", done},
      {"v1_unknown_with_junk", "PROXY UNKNOWN ffff:: ffff:: 1 2\r\n", "", done},
      {"v1_too_long", "PROXY UNKNOWN " + std::string(100, 'x') + "\r\n", "", error, E::kV1TooLong,
       107},
      {"v1_no_cr", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "", error, E::kV1Malformed, 31},
      {"v1_short_address", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "", error, E::kV1Malformed, 30},
      {"v1_tcp4_with_ipv6", "PROXY TCP4 ::1 ::1 1 2\r\n", "", error, E::kV1Malformed, 24},
      {"v1_port_too_big", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "", error, E::kV1Malformed, 36},
      {"v1_port_not_number", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2x\r\n", "", error, E::kV1Malformed, 33},
      {"v1_double_space", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "", error, E::kV1Malformed, 33},
      {"v1_extra_field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "", error, E::kV1Malformed, 34},
      {"v1_bad_protocol", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "", error, E::kV1Malformed, 32},
      {"v1_bare", "PROXY \r\n", "", error, E::kV1Malformed, 8},
      {"imap_command", "a1 LOGIN alice secret\r\n", "", error, E::kNotProxy, 1},
      {"almost_v1", "PROXZ TCP4", "", error, E::kNotProxy, 5},
      {"almost_v2", std::string("\r\n\r\n\0\r\nQUIX\n", 12), "", error, E::kNotProxy, 11},
      {"v2_inet", v2(0x21, 0x11, kInetBody), "a1 NOOP\r\n", done, E::kNone, 0, ProxyFamily::kInet},
      {"v2_inet6", v2(0x21, 0x21, kInet6Body), "\x16\x03\x01", done, E::kNone, 0,
       ProxyFamily::kInet6},
      {"v2_inet_tlvs",
       v2(0x21, 0x11, kInetBody + tlv(0x01, "imap") + tlv(0x04, "") + tlv(0x05, "unique-id")), "x",
       done, E::kNone, 0, ProxyFamily::kInet},
      {"v2_local_empty", v2(0x20, 0x00, ""), "a", done, E::kNone, 0, ProxyFamily::kUnspec, true},
      {"v2_local_with_addresses", v2(0x20, 0x11, kInetBody), "a", done, E::kNone, 0,
       ProxyFamily::kUnspec, true},
      {"v2_local_junk_body", v2(0x20, 0x00, std::string(40, '\xff')), "", done, E::kNone, 0,
       ProxyFamily::kUnspec, true},
      {"v2_unspec", v2(0x21, 0x00, ""), "", done},
      {"v2_unix", v2(0x21, 0x31, std::string(216, '/')), "", done},
      {"v2_udp_inet", v2(0x21, 0x12, kInetBody), "", done},
      {"v2_version_1", v2(0x11, 0x11, kInetBody), "", error, E::kV2BadVersion, 13},
      {"v2_command_2", v2(0x22, 0x11, kInetBody), "", error, E::kV2BadCommand, 16},
      {"v2_family_4", v2(0x21, 0x41, kInetBody), "", error, E::kV2BadFamily, 16},
      {"v2_transport_3", v2(0x21, 0x13, kInetBody), "", error, E::kV2BadFamily, 16},
      {"v2_short_inet", v2(0x21, 0x11, kInetBody.substr(0, 11)), "", error, E::kV2ShortAddress, 16},
      {"v2_short_inet6", v2(0x21, 0x21, kInetBody), "", error, E::kV2ShortAddress, 16},
      {"v2_too_large", v2(0x21, 0x11, kInetBody + tlv(0xe0, std::string(1000, 'x'))), "", error,
       E::kTooLarge, 16},
      {"v2_tlv_past_end", v2(0x21, 0x11, kInetBody + bytes({0x01, 0x00, 0x05, 'a', 'b'})), "",
       error, E::kV2BadTlv, 31},
      {"v2_tlv_cut_header", v2(0x21, 0x11, kInetBody + bytes({0x01, 0x00})), "", error,
       E::kV2BadTlv, 30},
  };
}

TEST(ProxyHeaderParser, TableWholeAndSplit) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    std::string mismatch;
    Outcome o = runAll(c.header + c.after, &mismatch);
    ASSERT_EQ(mismatch, "");
    ASSERT_EQ(proxyParseStatusName(o.status), std::string(proxyParseStatusName(c.status)));
    EXPECT_EQ(proxyHeaderErrorName(o.error), std::string(proxyHeaderErrorName(c.error)));
    if (c.status == ProxyParseStatus::kDone) {
      EXPECT_EQ(o.offset, c.header.size()) << "took bytes that follow the header";
      EXPECT_EQ(o.header.size, c.header.size());
      EXPECT_EQ(o.header.family, c.family);
      EXPECT_EQ(o.header.local, c.local);
      EXPECT_EQ(o.header.version, c.header[0] == 'P' ? 1 : 2);
    } else {
      EXPECT_EQ(o.offset, c.error_offset);
    }
    // Every proper prefix of a complete header asks for more.
    if (c.status == ProxyParseStatus::kDone) {
      ProxyHeaderParser prefix;
      auto r = prefix.feed(std::string_view(c.header).substr(0, c.header.size() - 1));
      EXPECT_EQ(r.status, ProxyParseStatus::kNeedMore);
    }
  }
}

TEST(ProxyHeaderParser, AddressesAndPorts) {
  std::string mismatch;
  Outcome v1 = runAll("PROXY TCP4 192.0.2.1 198.51.100.2 56324 143\r\n", &mismatch);
  ASSERT_EQ(mismatch, "");
  ASSERT_EQ(v1.status, ProxyParseStatus::kDone);
  EXPECT_EQ(std::string(v1.header.source.begin(), v1.header.source.begin() + 4),
            bytes({192, 0, 2, 1}));
  EXPECT_EQ(std::string(v1.header.destination.begin(), v1.header.destination.begin() + 4),
            bytes({198, 51, 100, 2}));
  EXPECT_EQ(v1.header.source_port, 56324);
  EXPECT_EQ(v1.header.destination_port, 143);

  Outcome v2i = runAll(v2(0x21, 0x11, kInetBody), &mismatch);
  ASSERT_EQ(mismatch, "");
  EXPECT_TRUE(sameHeader(v2i.header,
                         [&] {
                           ProxyHeader h = v1.header;
                           h.version = 2;
                           h.size = 28;
                           return h;
                         }()))
      << "v1 and v2 of the same connection differ";

  Outcome v6 = runAll(v2(0x21, 0x21, kInet6Body), &mismatch);
  ASSERT_EQ(mismatch, "");
  Outcome v6text = runAll("PROXY TCP6 2001:db8::1 ::1 1234 993\r\n", &mismatch);
  ASSERT_EQ(mismatch, "");
  EXPECT_EQ(v6.header.source, v6text.header.source);
  EXPECT_EQ(v6.header.destination, v6text.header.destination);
  EXPECT_EQ(v6.header.source_port, 1234);
  EXPECT_EQ(v6.header.destination_port, 993);
  EXPECT_EQ(v6text.header.source_port, 1234);
}

TEST(ProxyHeaderParser, MaxSizeIsInclusive) {
  // 16 + 12 addresses + TLV of 3 + n = max
  const std::size_t max = 200;
  std::string fits = v2(0x21, 0x11, kInetBody + tlv(0xe0, std::string(max - 31, 'x')));
  ASSERT_EQ(fits.size(), max);
  std::string mismatch;
  EXPECT_EQ(runAll(fits, &mismatch, max).status, ProxyParseStatus::kDone);
  EXPECT_EQ(mismatch, "");
  Outcome over = runAll(fits, &mismatch, max - 1);
  EXPECT_EQ(over.error, ProxyHeaderError::kTooLarge);
  EXPECT_EQ(over.offset, 16u) << "refused before its body arrives";
}

TEST(ProxyHeaderParser, EveryErrorHasAName) {
  for (int i = 0; i < static_cast<int>(ProxyHeaderError::kCount); ++i) {
    EXPECT_STRNE(proxyHeaderErrorName(static_cast<ProxyHeaderError>(i)), "unknown");
  }
}

}  // namespace
}  // namespace portico::parser
