#include "portico/net/compress.h"

#include <chrono>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace portico::net {

namespace {
// zalloc keeps each allocation's size in front of it so zfree can count it.
constexpr std::size_t kHeader = 16;  // keeps zlib's memory 16-byte aligned
}  // namespace

void* DeflateTransport::zalloc(void* opaque, unsigned items, unsigned size) {
  std::size_t bytes = static_cast<std::size_t>(items) * size;
  auto* p = static_cast<char*>(std::malloc(bytes + kHeader));
  if (p == nullptr) {
    return Z_NULL;
  }
  std::memcpy(p, &bytes, sizeof(bytes));
  static_cast<DeflateTransport*>(opaque)->zlib_bytes_ += bytes;
  return p + kHeader;
}

void DeflateTransport::zfree(void* opaque, void* address) {
  if (address == nullptr) {
    return;
  }
  char* p = static_cast<char*>(address) - kHeader;
  std::size_t bytes = 0;
  std::memcpy(&bytes, p, sizeof(bytes));
  static_cast<DeflateTransport*>(opaque)->zlib_bytes_ -= bytes;
  std::free(p);
}

DeflateTransport::DeflateTransport(Transport* inner, const TimerFactory& timers, BufferPool& pool)
    : LayeredTransport(inner), pool_(pool) {
  timer_ = timers([this] { inflateInput(); });
}

DeflateTransport::~DeflateTransport() {
  if (deflate_ready_) {
    deflateEnd(&deflate_);
  }
  if (inflate_ready_) {
    inflateEnd(&inflate_);
  }
}

bool DeflateTransport::init() {
  for (z_stream* s : {&deflate_, &inflate_}) {
    s->zalloc = &DeflateTransport::zalloc;
    s->zfree = &DeflateTransport::zfree;
    s->opaque = this;
  }
  // Negative window bits: raw DEFLATE, no zlib header or checksum (RFC 4978).
  deflate_ready_ = deflateInit2(&deflate_, kDeflateLevel, Z_DEFLATED, -kDeflateWindowBits,
                                kDeflateMemLevel, Z_DEFAULT_STRATEGY) == Z_OK;
  inflate_ready_ = deflate_ready_ && inflateInit2(&inflate_, -kInflateWindowBits) == Z_OK;
  return deflate_ready_ && inflate_ready_;
}

DeflateTransport* DeflateTransport::create(Transport* inner, const TimerFactory& timers,
                                           BufferPool& pool) {
  auto* t = new DeflateTransport(inner, timers, pool);
  if (!t->init()) {
    delete t;
    return nullptr;
  }
  inner->setHandler(t);
  return t;
}

void DeflateTransport::write(std::string_view bytes) {
  if (closing_ || bytes.empty()) {
    return;
  }
  deflate_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  deflate_.avail_in = static_cast<uInt>(bytes.size());
  // One flush per write: the client can decode everything written so far.
  // Output grows past input only by a few bytes per stored block.
  for (;;) {
    Block* block = pool_.acquire();
    deflate_.next_out = reinterpret_cast<Bytef*>(block->data());
    deflate_.avail_out = block->capacity;
    int rc = deflate(&deflate_, Z_SYNC_FLUSH);
    std::size_t produced = block->capacity - deflate_.avail_out;
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      pool_.release(block);
      fail(fmt::format("COMPRESS: deflate failed ({})", rc));
      return;
    }
    if (produced > 0) {
      inner_->write(Chunk(block, block->data(), produced));
    } else {
      pool_.release(block);
    }
    // A block left with room means the flush is complete.
    if (deflate_.avail_out != 0 && deflate_.avail_in == 0) {
      break;
    }
  }
  deflate_.next_in = nullptr;
}

void DeflateTransport::onData(Transport*, Chunk chunk) {
  if (closing_) {
    return;
  }
  if (inflate_.avail_in != 0) {
    // Only while paused, and a paused inner transport reads nothing; keep
    // the order anyway by joining the two.
    std::string joined(reinterpret_cast<const char*>(inflate_.next_in), inflate_.avail_in);
    joined.append(chunk.view());
    input_ = Chunk::copyOf(joined);
  } else {
    input_ = std::move(chunk);
  }
  inflate_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input_.data()));
  inflate_.avail_in = static_cast<uInt>(input_.size());
  inflateInput();
}

void DeflateTransport::inflateInput() {
  if (in_read_) {
    return;
  }
  in_read_ = true;
  while (want_read_ && !closing_ && (inflate_.avail_in > 0 || output_pending_)) {
    Block* block = pool_.acquire();
    inflate_.next_out = reinterpret_cast<Bytef*>(block->data());
    inflate_.avail_out = block->capacity;
    int rc = inflate(&inflate_, Z_SYNC_FLUSH);
    std::size_t produced = block->capacity - inflate_.avail_out;
    output_pending_ = inflate_.avail_out == 0;
    if (produced > 0 && handler_ != nullptr) {
      handler_->onData(this, Chunk(block, block->data(), produced));
    } else {
      pool_.release(block);
    }
    if (rc == Z_STREAM_END) {
      fail("COMPRESS: the client ended its DEFLATE stream");
      break;
    }
    if (rc == Z_DATA_ERROR || rc == Z_MEM_ERROR || rc == Z_NEED_DICT || rc == Z_STREAM_ERROR) {
      fail(fmt::format("COMPRESS: corrupt DEFLATE stream from the client ({})",
                       inflate_.msg != nullptr ? inflate_.msg : "inflate error"));
      break;
    }
    if (rc == Z_BUF_ERROR || produced == 0) {
      output_pending_ = false;  // no progress possible: wait for more input
      if (inflate_.avail_in == 0) {
        break;
      }
    }
  }
  if (inflate_.avail_in == 0) {
    input_.reset();  // the block goes back to the pool
    inflate_.next_in = nullptr;
  }
  in_read_ = false;
}

void DeflateTransport::pauseReading() {
  want_read_ = false;
  inner_->pauseReading();
}

void DeflateTransport::resumeReading() {
  want_read_ = true;
  inner_->resumeReading();
  // Compressed input may be left over from before the pause: inflate it
  // from the loop, never from inside the caller's stack.
  if (!closing_ && (inflate_.avail_in > 0 || output_pending_)) {
    timer_->arm(std::chrono::milliseconds(0));
  }
}

void DeflateTransport::shutdown() {
  if (closing_) {
    return;
  }
  closing_ = true;
  timer_->cancel();
  inner_->shutdown();  // every write was flushed already
}

void DeflateTransport::onConnected(Transport*, bool ok, std::string_view error) {
  if (handler_ != nullptr) {
    handler_->onConnected(this, ok, error);
  }
}

}  // namespace portico::net
