// COMPRESS=DEFLATE (RFC 4978) on the client connection, terminated in
// Portico: the session keeps framing, accounting and logging plaintext
// while the client's wire carries raw DEFLATE (RFC 1951, no zlib header)
// both ways.
//
// DeflateTransport runs over another Transport (TCP, or TLS over TCP:
// Deflate(Tls(Tcp))), as TlsTransport does: it owns the inner transport and
// frees itself after forwarding onClosed(). Every write() is compressed and
// ended with Z_SYNC_FLUSH, so the client can decode all of it at once; the
// relay writes once per backend read, so a flush costs a few bytes per
// 64 KiB block, not per line.
//
// Memory per compressed session (zlib's own formulas, zlib.h/zconf.h):
//   deflate, windowBits 12 (a 4 KiB window), memLevel 6:
//     (1 << (12 + 2)) + (1 << (6 + 9)) = 16 KiB + 32 KiB = 48 KiB
//   inflate, windowBits 15 (RFC 4978 lets the client use any window, so
//     Portico must accept the largest): 1 << 15 = 32 KiB
//   plus zlib's state structs (about 6 KiB deflate, 7 KiB inflate):
//   95,032 bytes (92.8 KiB) measured per session that sent COMPRESS, under
//   kDeflateMemoryBound (tests/unit/proxy/compress_test.cc checks it), plus
//   one pool block while a read is inflated. Sessions that never COMPRESS
//   pay nothing. zlib's defaults (window 15, memLevel 8) would cost about
//   300 KiB; the 4 KiB window costs about 15% in ratio on mail traffic.
//
// Decompression is bounded: what the client sends is inflated one pool
// block at a time and each block is handed to the handler before the next
// is made. When the handler pauses reading (backend write queue over its
// watermark), inflation stops with the rest of the compressed input kept,
// and the inner transport is paused, so a small "zip bomb" costs at most
// one block beyond the session's usual backpressure.
//
// A corrupt stream (or a client that ends its DEFLATE stream) closes the
// transport; onClosed() carries the reason ("COMPRESS: ...").
#pragma once

#include <zlib.h>

#include <cstddef>
#include <string>

#include "portico/net/chunk.h"
#include "portico/net/layered_transport.h"
#include "portico/net/transport.h"

namespace portico::net {

inline constexpr int kDeflateWindowBits = 12;
inline constexpr int kDeflateMemLevel = 6;
// Level 1: 95% of level 6's saving on mail traffic for about half its extra CPU
// (bench/RESULTS.md, "COMPRESS=DEFLATE"); the level costs no memory.
inline constexpr int kDeflateLevel = 1;
inline constexpr int kInflateWindowBits = 15;
// What zlib allocates for one session's two streams, at most.
inline constexpr std::size_t kDeflateMemoryBound = 96 * 1024;

class DeflateTransport final : public LayeredTransport {
 public:
  // Starts compression on `inner` now: the next byte read from it is
  // compressed, and so is the next byte written. nullptr if zlib cannot
  // allocate its state (the caller keeps `inner`).
  static DeflateTransport* create(Transport* inner, const TimerFactory& timers, BufferPool& pool);

  // Bytes zlib holds for this transport's two streams (allocations minus
  // frees), for tests and memory figures.
  std::size_t zlibBytes() const { return zlib_bytes_; }

  // Transport
  using LayeredTransport::write;
  void write(std::string_view bytes) override;
  void pauseReading() override;
  void resumeReading() override;
  void shutdown() override;

  // TransportHandler (events of the inner transport)
  void onConnected(Transport* inner, bool ok, std::string_view error) override;
  void onData(Transport* inner, Chunk chunk) override;

 private:
  DeflateTransport(Transport* inner, const TimerFactory& timers, BufferPool& pool);
  ~DeflateTransport() override;
  bool init();
  void inflateInput();
  static void* zalloc(void* opaque, unsigned items, unsigned size);
  static void zfree(void* opaque, void* address);

  BufferPool& pool_;
  z_stream deflate_{};
  z_stream inflate_{};
  bool deflate_ready_ = false;
  bool inflate_ready_ = false;
  Chunk input_;  // compressed bytes not yet inflated (inflate_.next_in points into it)
  bool output_pending_ = false;  // the last inflate() filled its block: it may hold more
  bool want_read_ = true;
  bool in_read_ = false;
  std::size_t zlib_bytes_ = 0;
};

}  // namespace portico::net
