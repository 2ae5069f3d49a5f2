// Reference-counted slices of pooled read buffers: the relay's zero-copy
// unit. A read fills a Block from the worker's BufferPool; the Chunk that
// describes the bytes read is handed to the other side's write and the
// Block goes back to the pool when the last Chunk referring to it is gone.
// Single-threaded: a Block never leaves the worker that allocated it.
//
// Secrets: a block that held a password or SASL payload is marked
// (Chunk::markSecret(), Chunk::copyOf(bytes, true)) and zeroed when it goes
// back to the pool or is freed. Unmarked blocks, all of the relay's after
// login, cost nothing extra.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace portico::net {

class BufferPool;

struct Block {
  BufferPool* pool;
  std::uint32_t refs;
  std::uint32_t capacity;
  Block* next_free;
  std::uint32_t wipe_len;  // bytes from data() to zero on release (secrets); 0: none
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

// Per-worker pool of fixed-size blocks. Idle sessions hold none: a block is
// taken only when data arrives (libuv's alloc callback) and returned as soon
// as its bytes are written out. Keeps at most `max_free` blocks cached.
class BufferPool {
 public:
  explicit BufferPool(std::uint32_t block_size = 64 * 1024, std::size_t max_free = 256);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  Block* acquire();
  void release(Block* block);
  std::uint32_t blockSize() const { return block_size_; }
  std::size_t blocksInUse() const { return in_use_; }
  std::size_t blocksCached() const { return free_count_; }

 private:
  std::uint32_t block_size_;
  std::size_t max_free_;
  Block* free_ = nullptr;
  std::size_t free_count_ = 0;
  std::size_t in_use_ = 0;
};

class Chunk {
 public:
  Chunk() = default;
  // Takes over one reference to `block`.
  Chunk(Block* block, const char* data, std::size_t size)
      : block_(block), data_(data), size_(size) {}
  Chunk(Chunk&& other) noexcept { swap(other); }
  Chunk& operator=(Chunk&& other) noexcept {
    Chunk tmp(std::move(other));
    swap(tmp);
    return *this;
  }
  Chunk(const Chunk&) = delete;
  Chunk& operator=(const Chunk&) = delete;
  ~Chunk() { reset(); }

  const char* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const { return {data_, size_}; }

  // Memory this chunk keeps alive: its whole block, header included. A
  // small slice of a pooled read still pins all of the block; a copy holds
  // about its own size.
  std::size_t footprint() const {
    return block_ == nullptr ? size_ : sizeof(Block) + block_->capacity;
  }
  // A slice of a pooled block of which it uses at most 1/`fraction`: worth
  // copying out before it waits in a queue (see UvTcpTransport).
  bool sparse(std::uint32_t fraction) const {
    return block_ != nullptr && block_->pool != nullptr && size_ * fraction <= block_->capacity;
  }

  // A chunk over a private heap copy of `bytes` (bytes that did not come
  // from a pooled read, such as data buffered during login). `secret`: the
  // copy is zeroed when freed.
  static Chunk copyOf(std::string_view bytes, bool secret = false);

  // The block holds a secret up to the end of this chunk: zero that much
  // when the block is released.
  void markSecret() {
    if (block_ != nullptr) {
      auto end = static_cast<std::uint32_t>(data_ + size_ - block_->data());
      block_->wipe_len = std::max(block_->wipe_len, end);
    }
  }
  bool secret() const { return block_ != nullptr && block_->wipe_len != 0; }

  // Another reference to bytes [offset, offset + length) of this chunk.
  Chunk slice(std::size_t offset, std::size_t length) const {
    if (block_ != nullptr) {
      ++block_->refs;
    }
    return Chunk(block_, data_ + offset, length);
  }
  void reset() {
    if (block_ != nullptr && --block_->refs == 0) {
      releaseBlock(block_);
    }
    block_ = nullptr;
    data_ = nullptr;
    size_ = 0;
  }

 private:
  static void releaseBlock(Block* block);
  void swap(Chunk& other) noexcept {
    std::swap(block_, other.block_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
  }
  Block* block_ = nullptr;
  const char* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace portico::net
