// Chunks and the BufferPool: reference-counted slices give a block back to
// its pool when the last one goes, and the pool caches at most max_free.

#include "net_types.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace portico::proxy {
namespace {

// A chunk over a fresh pooled block holding `bytes`, as a read makes one.
Chunk readInto(BufferPool& pool, const std::string& bytes) {
  Block* block = pool.acquire();
  std::memcpy(block->data(), bytes.data(), bytes.size());
  return Chunk(block, block->data(), bytes.size());
}

TEST(BufferPoolTest, AcquireGivesAFreshBlockOfTheConfiguredSize) {
  BufferPool pool(4096, 4);
  EXPECT_EQ(pool.blockSize(), 4096u);
  Block* block = pool.acquire();
  EXPECT_EQ(block->pool, &pool);
  EXPECT_EQ(block->refs, 1u);
  EXPECT_EQ(block->capacity, 4096u);
  EXPECT_EQ(pool.blocksInUse(), 1u);
  EXPECT_EQ(pool.blocksCached(), 0u);
  std::memset(block->data(), 'x', block->capacity);  // the whole capacity is writable
  pool.release(block);
  EXPECT_EQ(pool.blocksInUse(), 0u);
  EXPECT_EQ(pool.blocksCached(), 1u);
  EXPECT_EQ(pool.acquire(), block) << "a cached block is reused";
  EXPECT_EQ(block->refs, 1u);
  EXPECT_EQ(pool.blocksCached(), 0u);
  pool.release(block);
}

TEST(BufferPoolTest, CachesAtMostMaxFree) {
  BufferPool pool(512, 2);
  std::vector<Block*> blocks;
  for (int i = 0; i < 5; ++i) {
    blocks.push_back(pool.acquire());
  }
  EXPECT_EQ(pool.blocksInUse(), 5u);
  for (Block* block : blocks) {
    pool.release(block);
  }
  EXPECT_EQ(pool.blocksInUse(), 0u);
  EXPECT_EQ(pool.blocksCached(), 2u);
}

TEST(ChunkTest, SlicesShareTheBlockUntilTheLastGoes) {
  BufferPool pool(1024, 8);
  Chunk chunk = readInto(pool, "a1 NOOP\r\na2 NOOP\r\n");
  Chunk first = chunk.slice(0, 9);
  Chunk second = chunk.slice(9, 9);
  EXPECT_EQ(first.view(), "a1 NOOP\r\n");
  EXPECT_EQ(second.view(), "a2 NOOP\r\n");
  EXPECT_EQ(first.data(), chunk.data()) << "slices do not copy";
  chunk.reset();
  EXPECT_TRUE(chunk.empty());
  first.reset();
  EXPECT_EQ(pool.blocksInUse(), 1u) << "the second slice still holds the block";
  EXPECT_EQ(second.view(), "a2 NOOP\r\n");
  second.reset();
  EXPECT_EQ(pool.blocksInUse(), 0u);
  EXPECT_EQ(pool.blocksCached(), 1u);
}

TEST(ChunkTest, MovesTransferTheReference) {
  BufferPool pool(1024, 8);
  Chunk chunk = readInto(pool, "hello");
  Chunk moved(std::move(chunk));
  EXPECT_TRUE(chunk.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(chunk.data(), nullptr);
  EXPECT_EQ(moved.view(), "hello");
  EXPECT_EQ(pool.blocksInUse(), 1u);

  // Assigning over a chunk drops the reference it held.
  Chunk other = readInto(pool, "world");
  EXPECT_EQ(pool.blocksInUse(), 2u);
  other = std::move(moved);
  EXPECT_EQ(pool.blocksInUse(), 1u);
  EXPECT_EQ(other.view(), "hello");
  other = Chunk();
  EXPECT_EQ(pool.blocksInUse(), 0u);
}

TEST(ChunkTest, CopyOfOwnsAPrivateCopy) {
  BufferPool pool(1024, 8);
  std::string bytes = "buffered during login";
  Chunk chunk = Chunk::copyOf(bytes);
  bytes.assign(bytes.size(), '!');
  EXPECT_EQ(chunk.view(), "buffered during login");
  Chunk tail = chunk.slice(9, 6);
  chunk.reset();
  EXPECT_EQ(tail.view(), "during");
  EXPECT_EQ(pool.blocksInUse(), 0u) << "copies never come from a pool";

  Chunk empty = Chunk::copyOf("");
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.size(), 0u);
  Chunk none;
  EXPECT_TRUE(none.slice(0, 0).empty());
}

TEST(ChunkTest, BlocksGoBackToTheirOwnPool) {
  BufferPool a(256, 4);
  BufferPool b(256, 4);
  Chunk from_a = readInto(a, "a");
  Chunk from_b = readInto(b, "b");
  from_a.reset();
  EXPECT_EQ(a.blocksCached(), 1u);
  EXPECT_EQ(b.blocksCached(), 0u);
  from_b.reset();
  EXPECT_EQ(b.blocksCached(), 1u);
}

bool allZero(const char* data, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] != 0) {
      return false;
    }
  }
  return true;
}

TEST(ChunkTest, ABlockThatCarriedALoginIsZeroedWhenReleased) {
  BufferPool pool(4096, 4);
  const std::string login = "a1 LOGIN alice s3cret-pw\r\n";
  Chunk chunk = readInto(pool, login);
  chunk.markSecret();
  EXPECT_TRUE(chunk.secret());
  const char* bytes = chunk.data();
  Chunk user = chunk.slice(9, 5);  // a slice keeps the block (and the mark)
  chunk.reset();
  EXPECT_EQ(std::string(bytes, login.size()), login) << "not wiped while a slice holds it";
  user.reset();
  ASSERT_EQ(pool.blocksCached(), 1u);
  Block* again = pool.acquire();  // the same block, back from the pool
  ASSERT_EQ(again->data(), bytes);
  EXPECT_TRUE(allZero(again->data(), login.size())) << "the password survived in the pool";
  EXPECT_EQ(again->wipe_len, 0u) << "a reused block starts unmarked";
  pool.release(again);
}

TEST(ChunkTest, AMarkedSliceWipesItsBlockUpToItsEnd) {
  BufferPool pool(4096, 4);
  Chunk chunk = readInto(pool, "b1 NOOP\r\na1 LOGIN alice pw\r\n");
  Chunk login = chunk.slice(9, 20);
  login.markSecret();
  EXPECT_EQ(chunk.slice(0, 1).secret(), true) << "the mark belongs to the block";
  const char* bytes = chunk.data();
  chunk.reset();
  login.reset();
  Block* again = pool.acquire();
  ASSERT_EQ(again->data(), bytes);
  EXPECT_TRUE(allZero(again->data(), 29)) << "zeroed up to the end of the marked slice";
  pool.release(again);
}

TEST(ChunkTest, RelayBlocksAreNotWiped) {
  // No per-chunk cost on the relay path: unmarked blocks keep their bytes.
  BufferPool pool(4096, 4);
  Chunk chunk = readInto(pool, "* 1 FETCH (FLAGS (\\Seen))\r\n");
  EXPECT_FALSE(chunk.secret());
  const char* bytes = chunk.data();
  chunk.reset();
  Block* again = pool.acquire();
  EXPECT_EQ(std::string(again->data(), 9), "* 1 FETCH");
  EXPECT_EQ(again->data(), bytes);
  pool.release(again);
  EXPECT_FALSE(Chunk::copyOf("x").secret());
  EXPECT_TRUE(Chunk::copyOf("a1 LOGIN a b\r\n", true).secret());
}

TEST(ChunkTest, FootprintIsTheWholeBlockASliceKeepsAlive) {
  BufferPool pool(4096, 4);
  Chunk read = readInto(pool, "a1 OK done\r\n");
  EXPECT_EQ(read.footprint(), sizeof(Block) + 4096u) << "12 bytes pin the whole block";
  EXPECT_EQ(read.slice(0, 2).footprint(), sizeof(Block) + 4096u);
  Chunk copy = Chunk::copyOf(read.view());
  EXPECT_EQ(copy.footprint(), sizeof(Block) + read.size()) << "a copy holds its own size";
  EXPECT_EQ(Chunk().footprint(), 0u);
}

TEST(ChunkTest, SparseOnlyForSmallSlicesOfPooledBlocks) {
  BufferPool pool(4096, 4);
  Chunk read = readInto(pool, std::string(4096, 'x'));
  EXPECT_FALSE(read.sparse(8));
  EXPECT_TRUE(read.slice(0, 512).sparse(8));
  EXPECT_FALSE(read.slice(0, 513).sparse(8));
  EXPECT_FALSE(Chunk::copyOf("small").sparse(8)) << "copies are already compact";
  EXPECT_FALSE(Chunk().sparse(8));
}

}  // namespace
}  // namespace portico::proxy
