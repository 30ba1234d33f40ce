#pragma once
// How ZeRO stages 1 and m2 split the flat parameter buffer over the ranks
// (every buffer at stage 1, AdEMAMix's m2 at stage m2): rank r
// owns the contiguous range [r·chunk, (r+1)·chunk) clipped to the buffer,
// with chunk = ceil(total / world) rounded up to a multiple of `alignment`.
// The buffer is handled as world × chunk elements, zero-padded at the end,
// so any parameter count works with any number of ranks (a rank may own
// less than a chunk, or nothing, when the buffer is small). Aligning the
// chunks to the gradient norm's summation blocks lets the ranks compute the
// single-process norm exactly (optim/grad_clip.hpp).
#include <algorithm>
#include <cstddef>
#include <string_view>

namespace emix {

// training.zero_stage: which state the ranks split with a ShardPlan.
enum class ZeroStage {
  replicate,  // 0: every rank holds all the optimizer state
  shard_all,  // 1: ZeRO stage 1, every optimizer buffer and the master weights
  shard_m2,   // "m2": AdEMAMix's m2 alone, everything else replicated
};

// As the config spells it: "0", "1" or "m2".
constexpr std::string_view zero_stage_name(ZeroStage stage) {
  switch (stage) {
    case ZeroStage::replicate: return "0";
    case ZeroStage::shard_all: return "1";
    case ZeroStage::shard_m2: return "m2";
  }
  return "?";
}

struct ShardPlan {
  size_t total = 0;  // elements of the whole buffer
  int world = 1;
  int rank = 0;
  size_t chunk = 0;  // elements per rank, padding included

  static ShardPlan make(size_t total, int world, int rank, size_t alignment) {
    size_t chunk = (total + static_cast<size_t>(world) - 1) / static_cast<size_t>(world);
    chunk = std::max<size_t>(1, (chunk + alignment - 1) / alignment) * alignment;
    return ShardPlan{total, world, rank, chunk};
  }

  size_t begin_of(int r) const { return std::min(total, static_cast<size_t>(r) * chunk); }
  size_t end_of(int r) const { return std::min(total, static_cast<size_t>(r + 1) * chunk); }
  size_t begin() const { return begin_of(rank); }
  size_t end() const { return end_of(rank); }
  size_t size() const { return end() - begin(); }  // this rank's elements, padding excluded
  size_t padded_total() const { return chunk * static_cast<size_t>(world); }
};

}  // namespace emix
