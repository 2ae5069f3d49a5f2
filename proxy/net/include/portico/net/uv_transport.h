// libuv implementations of the session seams: a TCP Transport (accepted or
// outgoing) reading into the worker's BufferPool and writing Chunks without
// copying, and a Timer. Both free themselves only after libuv's close
// callbacks, as libuv requires.
//
// Write queue accounting: queuedBytes() is the memory the queue holds, not
// its payload. A queued chunk counts its whole block plus the write request,
// so a peer that never reads reaches the high watermark after a bounded
// amount of memory however small the chunks are. Small slices of pooled
// blocks (under 1/kSparseFraction of a block) are copied out when they have
// to wait, so they hold about their own size instead of a whole block; a
// chunk written at once (the usual case) is never copied.
#pragma once

#include <uv.h>

#include <memory>

#include <functional>
#include <string>

#include "portico/net/transport.h"

namespace portico::net {

class UvTcpTransport final : public Transport {
 public:
  // Takes over `fd`, a connection the worker accepted itself (it accepts
  // with accept4() to handle fd exhaustion, see worker.h). nullptr on
  // failure, with `fd` closed.
  static UvTcpTransport* adopt(uv_loop_t* loop, int fd, BufferPool& pool);
  // Starts connecting to `address`; the handler hears onConnected().
  static UvTcpTransport* connect(uv_loop_t* loop, const sockaddr* address, BufferPool& pool,
                                 TransportHandler* handler);

  void setHandler(TransportHandler* handler) override { handler_ = handler; }
  void write(Chunk chunk) override;
  void write(std::string_view bytes) override;
  std::size_t queuedBytes() const override { return queued_; }
  void setHighWatermark(std::size_t bytes) override { high_ = bytes; }
  void pauseReading() override;
  void resumeReading() override;
  void shutdown() override;
  void close() override;
  void setCarriesSecrets(bool on) override { secrets_ = on; }
  void acknowledgeNow() override;
  const sockaddr_storage& peerAddress() const override { return peer_; }
  const sockaddr_storage& localAddress() const override { return local_; }
  // The client's addresses as a trusted PROXY header gave them: from then
  // on peerAddress() and localAddress() report these, not the balancer's.
  void setProxiedAddresses(const sockaddr_storage& peer, const sockaddr_storage& local) {
    peer_ = peer;
    local_ = local;
  }

  // How long shutdown() may take to flush before the connection is dropped.
  static constexpr std::uint64_t kShutdownFlushMs = 5'000;
  // Queued chunks using at most 1/kSparseFraction of a pooled block are copied.
  static constexpr std::uint32_t kSparseFraction = 8;
  // What one queued write costs besides its chunk.
  static std::size_t writeOverhead();

 public:
  struct WriteReq;  // public so the per-thread free list can name it

 private:
  UvTcpTransport(uv_loop_t* loop, BufferPool& pool);
  ~UvTcpTransport() override = default;

  void closeWithReason(std::string_view reason);
  void startReading();
  void queueWrite(Chunk chunk);
  void afterWrite(std::size_t held, int status);
  void readAddresses();

  static void onAlloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buf);
  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void onWrite(uv_write_t* req, int status);
  static void onConnect(uv_connect_t* req, int status);
  static void onShutdown(uv_shutdown_t* req, int status);
  static void onFlushTimeout(uv_timer_t* timer);
  static void onHandleClosed(uv_handle_t* handle);

  // Only the TCP handle lives as long as the connection: the connect
  // request and the shutdown's request and flush timer exist only while
  // they are in use, so an idle session does not carry them.
  struct Shutdown {
    uv_shutdown_t req;
    uv_timer_t flush_timer;
  };
  uv_tcp_t tcp_;
  std::unique_ptr<uv_connect_t> connect_req_;
  std::unique_ptr<Shutdown> shutdown_;
  BufferPool& pool_;
  TransportHandler* handler_ = nullptr;
  Block* read_block_ = nullptr;
  std::size_t queued_ = 0;  // memory held by queued writes (see above)
  std::size_t high_ = 256 * 1024;
  bool above_high_ = false;
  bool want_read_ = true;
  bool secrets_ = true;  // mark read blocks and copies for wiping (see Transport)
  bool reading_ = false;
  bool connected_ = false;
  bool shutting_down_ = false;
  bool closed_ = false;
  int handles_open_ = 0;
  std::string close_reason_;
  sockaddr_storage peer_{};
  sockaddr_storage local_{};
};

class UvTimer final : public Timer {
 public:
  UvTimer(uv_loop_t* loop, std::function<void()> callback);
  ~UvTimer() override;
  void arm(std::chrono::milliseconds delay) override;
  void cancel() override;

 private:
  static void onTimer(uv_timer_t* timer);
  uv_timer_t* handle_;
  std::function<void()> callback_;
};

}  // namespace portico::net
