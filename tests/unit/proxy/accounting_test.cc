// Per-command accounting: histogram bucket boundaries, command names,
// recording, summing across workers, and stable backend stats slots.

#include "accounting.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace portico::proxy {
namespace {

using std::chrono::microseconds;
using ::testing::ElementsAre;

TEST(BucketForTest, Boundaries) {
  EXPECT_EQ(bucketFor(microseconds(0)), 0u);
  EXPECT_EQ(bucketFor(microseconds(1)), 0u);
  EXPECT_EQ(bucketFor(microseconds(100)), 0u);  // bucket 0 is <= 100 us
  EXPECT_EQ(bucketFor(microseconds(101)), 1u);
  EXPECT_EQ(bucketFor(microseconds(150)), 1u);
  EXPECT_EQ(bucketFor(microseconds(200)), 1u);  // bucket 1 is <= 200 us
  EXPECT_EQ(bucketFor(microseconds(201)), 2u);
  EXPECT_EQ(bucketFor(microseconds(400)), 2u);
  EXPECT_EQ(bucketFor(microseconds(401)), 3u);
  EXPECT_EQ(bucketFor(microseconds(250'000)), 12u);
  EXPECT_EQ(bucketFor(microseconds(-5)), 0u);
  EXPECT_EQ(bucketFor(microseconds(std::numeric_limits<std::int64_t>::max())), kBuckets - 1);
  EXPECT_EQ(bucketFor(std::chrono::hours(24)), kBuckets - 1);
}

TEST(BucketForTest, AgreesWithBucketUpperSecondsEverywhere) {
  // Every time lies in (upper(k-1), upper(k)] of its bucket k.
  std::vector<std::int64_t> times;
  for (int k = 0; k < static_cast<int>(kBuckets); ++k) {
    auto edge = static_cast<std::int64_t>(std::llround(100.0 * std::ldexp(1.0, k)));
    times.insert(times.end(), {edge - 1, edge, edge + 1});
  }
  for (std::int64_t us : times) {
    std::size_t k = bucketFor(microseconds(us));
    double seconds = static_cast<double>(us) / 1e6;
    EXPECT_LE(seconds, bucketUpperSeconds(k)) << us << " us in bucket " << k;
    if (k > 0) {
      EXPECT_GT(seconds, bucketUpperSeconds(k - 1)) << us << " us in bucket " << k;
    }
  }
  EXPECT_DOUBLE_EQ(bucketUpperSeconds(0), 0.0001);
  EXPECT_DOUBLE_EQ(bucketUpperSeconds(1), 0.0002);
  EXPECT_TRUE(std::isinf(bucketUpperSeconds(kBuckets - 1)));
}

TEST(CommandIdTest, NamesMapBothWays) {
  EXPECT_EQ(commandId("FETCH"), CommandId::kFETCH);
  EXPECT_EQ(commandId("SELECT"), CommandId::kSELECT);
  EXPECT_EQ(commandId("IDLE"), CommandId::kIDLE);
  EXPECT_EQ(commandId("XLIST"), CommandId::kXLIST);
  EXPECT_EQ(commandId("CAPABILITY"), CommandId::kCAPABILITY);
  EXPECT_EQ(commandId("XYZZY"), CommandId::kOTHER);
  EXPECT_EQ(commandId(""), CommandId::kOTHER);
  EXPECT_EQ(commandId("fetch"), CommandId::kOTHER) << "callers pass upper-cased names";
  EXPECT_EQ(commandId("FETCHX"), CommandId::kOTHER);
  EXPECT_EQ(commandId("FETC"), CommandId::kOTHER);
  for (std::size_t i = 0; i < kCommandCount; ++i) {
    auto id = static_cast<CommandId>(i);
    EXPECT_EQ(commandId(commandName(id)), id) << commandName(id);
  }
  EXPECT_STREQ(commandName(CommandId::kFETCH), "FETCH");
  EXPECT_STREQ(commandName(CommandId::kCount), "OTHER");
}

TEST(BackendStatsTest, RecordsCountsErrorsTimeAndHistogram) {
  BackendStats stats;
  stats.recordCommand(CommandId::kFETCH, parser::Status::kOk, microseconds(150));
  stats.recordCommand(CommandId::kFETCH, parser::Status::kNo, microseconds(250'000));
  stats.recordCommand(CommandId::kFETCH, parser::Status::kBad, microseconds(90));
  stats.recordCommand(CommandId::kSTORE, parser::Status::kOk, microseconds(-3));
  stats.recordIdle(std::chrono::seconds(30));
  const CommandStats& fetch = stats.commands[static_cast<std::size_t>(CommandId::kFETCH)];
  EXPECT_EQ(fetch.count.get(), 3u);
  EXPECT_EQ(fetch.no.get(), 1u);
  EXPECT_EQ(fetch.bad.get(), 1u);
  EXPECT_EQ(fetch.time_us.get(), 250'240u);
  EXPECT_EQ(fetch.histogram[0].get(), 1u);
  EXPECT_EQ(fetch.histogram[1].get(), 1u);
  EXPECT_EQ(fetch.histogram[12].get(), 1u);
  const CommandStats& store = stats.commands[static_cast<std::size_t>(CommandId::kSTORE)];
  EXPECT_EQ(store.count.get(), 1u);
  EXPECT_EQ(store.time_us.get(), 0u) << "a negative time counts as zero";
  EXPECT_EQ(stats.idle.count.get(), 1u);
  EXPECT_EQ(stats.idle.time_us.get(), 30'000'000u);
  EXPECT_EQ(stats.commands[static_cast<std::size_t>(CommandId::kIDLE)].count.get(), 0u);
}

TEST(CounterTest, AddsAndSubtracts) {
  Counter counter;
  counter.add();
  counter.add(41);
  counter.sub(2);
  EXPECT_EQ(counter.get(), 40u);
}

TEST(SnapshotTest, SumsAcrossWorkers) {
  auto first = std::make_unique<WorkerStats>();
  auto second = std::make_unique<WorkerStats>();
  first->connections_current.add(2);
  second->connections_current.add(3);
  first->connections_total.add(10);
  second->connections_total.add(20);
  second->connections_rejected.add(1);
  first->connections_unauthenticated.add(1);
  first->bytes_from_clients.add(100);
  second->bytes_to_clients.add(200);

  first->backend(0).sessions_current.add(1);
  first->backend(3).sessions_total.add(5);
  first->backend(3).bytes_to_backend.add(7);
  second->backend(3).sessions_total.add(6);
  second->backend(3).bytes_from_backend.add(8);
  second->backend(3).login_failures.add(1);
  second->backend(3).connect_failures.add(2);
  second->backend(3).commands_in_flight.add(4);
  first->backend(3).recordCommand(CommandId::kFETCH, parser::Status::kOk, microseconds(150));
  second->backend(3).recordCommand(CommandId::kFETCH, parser::Status::kNo, microseconds(200));
  second->backend(3).recordCommand(CommandId::kSELECT, parser::Status::kBad, microseconds(500));
  first->backend(3).recordIdle(microseconds(1000));
  second->backend(3).recordIdle(microseconds(3000));

  StatsSnapshot snap = snapshot({first.get(), second.get()});
  EXPECT_EQ(snap.connections_current, 5u);
  EXPECT_EQ(snap.connections_total, 30u);
  EXPECT_EQ(snap.connections_rejected, 1u);
  EXPECT_EQ(snap.connections_unauthenticated, 1u);
  EXPECT_EQ(snap.bytes_from_clients, 100u);
  EXPECT_EQ(snap.bytes_to_clients, 200u);
  ASSERT_EQ(snap.backends.size(), 4u) << "sized to the highest slot in use";
  EXPECT_EQ(snap.backends[0].sessions_current, 1u);
  EXPECT_EQ(snap.backends[1].sessions_total, 0u);
  const StatsSnapshot::Backend& b = snap.backends[3];
  EXPECT_EQ(b.sessions_total, 11u);
  EXPECT_EQ(b.bytes_to_backend, 7u);
  EXPECT_EQ(b.bytes_from_backend, 8u);
  EXPECT_EQ(b.login_failures, 1u);
  EXPECT_EQ(b.connect_failures, 2u);
  EXPECT_EQ(b.commands_in_flight, 4u);
  const StatsSnapshot::Command& fetch = b.commands[static_cast<std::size_t>(CommandId::kFETCH)];
  EXPECT_EQ(fetch.count, 2u);
  EXPECT_EQ(fetch.no, 1u);
  EXPECT_EQ(fetch.time_us, 350u);
  EXPECT_EQ(fetch.histogram[1], 2u);
  const StatsSnapshot::Command& select = b.commands[static_cast<std::size_t>(CommandId::kSELECT)];
  EXPECT_EQ(select.count, 1u);
  EXPECT_EQ(select.bad, 1u);
  EXPECT_EQ(select.histogram[bucketFor(microseconds(500))], 1u);
  EXPECT_EQ(b.idle.count, 2u);
  EXPECT_EQ(b.idle.time_us, 4000u);

  EXPECT_TRUE(snapshot({}).backends.empty());
}

TEST(WorkerStatsTest, BackendSlotIsAllocatedOnceAndKept) {
  WorkerStats stats;
  EXPECT_EQ(stats.backends[5].load(), nullptr);
  BackendStats& first = stats.backend(5);
  first.sessions_total.add();
  EXPECT_EQ(&stats.backend(5), &first);
  EXPECT_EQ(stats.backends[5].load(), &first);
  EXPECT_EQ(stats.backend(5).sessions_total.get(), 1u);
  EXPECT_EQ(stats.backends[4].load(), nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(&first) % 64, 0u) << "cache-line aligned";
}

TEST(BackendRegistryTest, SlotsAreStableAcrossReloads) {
  BackendRegistry registry;
  EXPECT_EQ(registry.slot("mbx1"), 0u);
  EXPECT_EQ(registry.slot("mbx2"), 1u);
  // A reload that reorders the backends and adds one keeps the old slots.
  EXPECT_EQ(registry.slot("mbx3"), 2u);
  EXPECT_EQ(registry.slot("mbx2"), 1u);
  EXPECT_EQ(registry.slot("mbx1"), 0u);
  EXPECT_THAT(registry.names(), ElementsAre("mbx1", "mbx2", "mbx3"));
}

TEST(BackendRegistryTest, FullRegistryReturnsMaxBackends) {
  BackendRegistry registry;
  for (std::size_t i = 0; i < kMaxBackends; ++i) {
    ASSERT_EQ(registry.slot("b" + std::to_string(i)), i);
  }
  EXPECT_EQ(registry.slot("one-too-many"), kMaxBackends);
  EXPECT_EQ(registry.slot("b7"), 7u) << "known names still resolve";
  EXPECT_EQ(registry.names().size(), kMaxBackends);
}

// The moving average that AverageCommandProcessingTimeGt60sMonitor samples
// covers exactly the last 1,024 commands and leaves IDLE out.
TEST(BackendStatsTest, MovingAverageCoversTheLast1024Commands) {
  BackendStats stats;
  for (int i = 0; i < 1024; ++i) {
    stats.recordCommand(CommandId::kNOOP, parser::Status::kOk, std::chrono::milliseconds(10));
  }
  stats.recordIdle(std::chrono::minutes(5));
  StatsSnapshot::Backend b;
  b.recent_sum_us = stats.recent_sum_us.get();
  b.recent_count = stats.recent_count.get();
  EXPECT_EQ(b.recent_count, 1024u);
  EXPECT_DOUBLE_EQ(b.averageProcessingMs(), 10.0);
  // 512 slow commands push out the 512 oldest fast ones: (512*10 + 512*1000)/1024.
  for (int i = 0; i < 512; ++i) {
    stats.recordCommand(CommandId::kFETCH, parser::Status::kOk, std::chrono::seconds(1));
  }
  b.recent_sum_us = stats.recent_sum_us.get();
  b.recent_count = stats.recent_count.get();
  EXPECT_EQ(b.recent_count, 1024u);
  EXPECT_DOUBLE_EQ(b.averageProcessingMs(), 505.0);
}

}  // namespace
}  // namespace portico::proxy
