// A client's side of COMPRESS=DEFLATE (RFC 4978) for tests: raw DEFLATE
// with zlib's usual window (15), as Python's zlib or a mail client runs it.
#pragma once

#include <zlib.h>

#include <string>
#include <string_view>

namespace portico::proxy::testing_zlib {

// One side of a raw DEFLATE stream, as a client runs it (window 15: what
// Python's zlib and most clients use).
class ClientDeflater {
 public:
  ClientDeflater() { deflateInit2(&z_, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY); }
  ~ClientDeflater() { deflateEnd(&z_); }
  std::string compress(std::string_view bytes, int flush = Z_SYNC_FLUSH) {
    std::string out;
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
    z_.avail_in = static_cast<uInt>(bytes.size());
    char buf[16384];
    do {
      z_.next_out = reinterpret_cast<Bytef*>(buf);
      z_.avail_out = sizeof(buf);
      deflate(&z_, flush);
      out.append(buf, sizeof(buf) - z_.avail_out);
    } while (z_.avail_out == 0);
    return out;
  }

 private:
  z_stream z_{};
};

class ClientInflater {
 public:
  ClientInflater() { inflateInit2(&z_, -15); }
  ~ClientInflater() { inflateEnd(&z_); }
  // Everything `bytes` decodes to; false on a corrupt stream.
  bool decompress(std::string_view bytes, std::string& out) {
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
    z_.avail_in = static_cast<uInt>(bytes.size());
    char buf[16384];
    for (;;) {
      z_.next_out = reinterpret_cast<Bytef*>(buf);
      z_.avail_out = sizeof(buf);
      int rc = inflate(&z_, Z_SYNC_FLUSH);
      out.append(buf, sizeof(buf) - z_.avail_out);
      if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return false;
      }
      if (z_.avail_out != 0) {
        return true;
      }
    }
  }

 private:
  z_stream z_{};
};

}  // namespace portico::proxy::testing_zlib
