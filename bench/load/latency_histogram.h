// LatencyHistogram: log-linear buckets in the spirit of HdrHistogram, with
// 128 sub-buckets per power of two, so any recorded value is reported within
// 0.4% (values below 128 exactly). Recording is an index computation and an
// increment: no allocation after construction (59 KiB of counters).
// Not thread-safe; one per loop and command, merged after the run.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace portico::load {

class LatencyHistogram {
 public:
  static constexpr int kSubBits = 7;
  static constexpr std::uint64_t kSub = 1u << kSubBits;
  static constexpr std::size_t kBuckets = kSub + (64 - kSubBits) * kSub;

  LatencyHistogram() : counts_(kBuckets, 0) {}

  void record(std::uint64_t value) {
    ++counts_[bucketOf(value)];
    ++count_;
    sum_ += value;
    min_ = std::min(min_, value);
    max_ = std::max(max_, value);
  }

  void merge(const LatencyHistogram& other) {
    for (std::size_t i = 0; i < kBuckets; ++i) {
      counts_[i] += other.counts_[i];
    }
    count_ += other.count_;
    sum_ += other.sum_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }

  std::uint64_t count() const { return count_; }
  std::uint64_t min() const { return count_ ? min_ : 0; }
  std::uint64_t max() const { return max_; }
  double mean() const { return count_ ? static_cast<double>(sum_) / count_ : 0.0; }

  // The value at percentile q (0..100): the smallest recorded value (to
  // bucket precision) with at least q% of the samples at or below it.
  std::uint64_t percentile(double q) const {
    if (count_ == 0) {
      return 0;
    }
    auto rank = static_cast<std::uint64_t>(std::ceil(q / 100.0 * static_cast<double>(count_)));
    rank = std::clamp<std::uint64_t>(rank, 1, count_);
    if (rank == count_) {
      return max_;
    }
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) {
        return std::clamp(valueOf(i), min_, max_);
      }
    }
    return max_;
  }

  static std::size_t bucketOf(std::uint64_t v) {
    if (v < kSub) {
      return static_cast<std::size_t>(v);
    }
    int e = 63 - std::countl_zero(v);  // >= kSubBits
    std::uint64_t mantissa = (v >> (e - kSubBits)) - kSub;
    return static_cast<std::size_t>(kSub + static_cast<std::uint64_t>(e - kSubBits) * kSub +
                                    mantissa);
  }

  // Midpoint of bucket i.
  static std::uint64_t valueOf(std::size_t i) {
    if (i < kSub) {
      return i;
    }
    int e = static_cast<int>((i - kSub) / kSub) + kSubBits;
    std::uint64_t mantissa = (i - kSub) % kSub + kSub;
    std::uint64_t width = std::uint64_t{1} << (e - kSubBits);
    return (mantissa << (e - kSubBits)) + width / 2;
  }

 private:
  std::vector<std::uint64_t> counts_;
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t min_ = UINT64_MAX;
  std::uint64_t max_ = 0;
};

}  // namespace portico::load
