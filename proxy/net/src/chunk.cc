#include "portico/net/chunk.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace portico::net {

namespace {
// Zeroes what a secret left in a block before the memory is reused or
// freed; explicit_bzero is never optimised away.
void wipeSecret(Block* block) {
  if (block->wipe_len != 0) {
    explicit_bzero(block->data(), std::min(block->wipe_len, block->capacity));
    block->wipe_len = 0;
  }
}
}  // namespace

BufferPool::BufferPool(std::uint32_t block_size, std::size_t max_free)
    : block_size_(block_size), max_free_(max_free) {}

BufferPool::~BufferPool() {
  while (free_ != nullptr) {
    Block* next = free_->next_free;
    std::free(free_);
    free_ = next;
  }
}

Block* BufferPool::acquire() {
  Block* block = free_;
  if (block != nullptr) {
    free_ = block->next_free;
    --free_count_;
  } else {
    block = static_cast<Block*>(std::malloc(sizeof(Block) + block_size_));
    if (block == nullptr) {
      throw std::bad_alloc();
    }
  }
  block->pool = this;
  block->refs = 1;
  block->capacity = block_size_;
  block->next_free = nullptr;
  block->wipe_len = 0;
  ++in_use_;
  return block;
}

void BufferPool::release(Block* block) {
  --in_use_;
  wipeSecret(block);
  if (free_count_ >= max_free_) {
    std::free(block);
    return;
  }
  block->next_free = free_;
  free_ = block;
  ++free_count_;
}

Chunk Chunk::copyOf(std::string_view bytes, bool secret) {
  auto* block = static_cast<Block*>(std::malloc(sizeof(Block) + bytes.size() + 1));
  if (block == nullptr) {
    throw std::bad_alloc();
  }
  block->pool = nullptr;
  block->refs = 1;
  block->capacity = static_cast<std::uint32_t>(bytes.size());
  block->next_free = nullptr;
  block->wipe_len = secret ? static_cast<std::uint32_t>(bytes.size()) : 0;
  if (!bytes.empty()) {
    std::memcpy(block->data(), bytes.data(), bytes.size());
  }
  return Chunk(block, block->data(), bytes.size());
}

void Chunk::releaseBlock(Block* block) {
  if (block->pool != nullptr) {
    block->pool->release(block);
  } else {
    wipeSecret(block);
    std::free(block);
  }
}

}  // namespace portico::net
