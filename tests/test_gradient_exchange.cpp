// The plan that sends parts of the gradients to their owners during the
// backward (src/distributed/gradient_exchange.hpp) and the groups a
// backward finishes (gradient_groups_in_backward_order). Executed through a
// communicator in tests/test_distributed.cpp (Distributed.GradientExchange*),
// on GPUs by the CudaDistributed tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <stdexcept>
#include <vector>

#include "distributed/gradient_exchange.hpp"
#include "distributed/shard_plan.hpp"
#include "model/gpt2_config.hpp"

namespace emix {
namespace {

// The ranges sorted, each checked against the next: they must tile
// [0, total) exactly.
void expect_tiling(std::vector<ParamRange> ranges, size_t total) {
  std::sort(ranges.begin(), ranges.end(), [](const ParamRange& a, const ParamRange& b) { return a.begin < b.begin; });
  size_t next = 0;
  for (const ParamRange& range : ranges) {
    ASSERT_EQ(range.begin, next) << "a gap or an overlap";
    next += range.count;
  }
  EXPECT_EQ(next, total);
}

TEST(GradientExchange, BackwardGroupsCoverEveryParameterOnce) {
  for (const ModelConfig& config : {ModelConfig{64, 64, 1, 16, 2, 8}, ModelConfig{64, 128, 4, 32, 4, 4},
                                    ModelConfig{50257, 50304, 12, 768, 12, 1024}}) {
    const ParameterLayout layout(config);
    const auto groups = gradient_groups_in_backward_order(layout, config.n_layer);
    ASSERT_EQ(groups.size(), static_cast<size_t>(config.n_layer) + 2);
    std::vector<ParamRange> all;
    for (const auto& group : groups) {
      for (size_t i = 1; i < group.size(); ++i) EXPECT_LT(group[i - 1].begin, group[i].begin) << "ranges ascend";
      all.insert(all.end(), group.begin(), group.end());
    }
    expect_tiling(all, layout.num_parameters());
    // The final LayerNorm first, the embeddings last, and the last block
    // right after the final LayerNorm.
    EXPECT_EQ(groups.front().front().begin, layout.find("lnfw").offset);
    EXPECT_EQ(groups.back().front().begin, layout.find("wte").offset);
    const TensorInfo& qkvw = layout.find("qkvw");
    const size_t per_layer = qkvw.count / static_cast<size_t>(config.n_layer);
    const auto has = [](const std::vector<ParamRange>& group, size_t begin, size_t count) {
      return std::any_of(group.begin(), group.end(), [&](const ParamRange& r) { return r.begin == begin && r.count == count; });
    };
    EXPECT_TRUE(has(groups[1], qkvw.offset + static_cast<size_t>(config.n_layer - 1) * per_layer, per_layer));
    EXPECT_TRUE(has(groups[static_cast<size_t>(config.n_layer)], qkvw.offset, per_layer));
  }
}

// Every rank computes the same plan, so that what rank a sends to rank b
// (lengths[b]) is what b receives from a (its own lengths[b]), down to the
// empty blocks neither side sends.
void expect_same_plan_on_every_rank(const std::vector<ParamRange>& ranges, const ShardPlan& plan, size_t segment,
                                    const std::vector<ExchangeBatch>& batches) {
  for (int rank = 0; rank < plan.world; ++rank) {
    const ShardPlan ranks_plan{plan.total, plan.world, rank, plan.chunk};
    const std::vector<ExchangeBatch> ranks = plan_gradient_exchange(ranges, ranks_plan, segment);
    ASSERT_EQ(ranks.size(), batches.size()) << "rank " << rank;
    for (size_t i = 0; i < batches.size(); ++i) {
      EXPECT_EQ(ranks[i].lengths, batches[i].lengths) << "rank " << rank << ", batch " << i;
      EXPECT_EQ(ranks[i].block, batches[i].block) << "rank " << rank << ", batch " << i;
      for (size_t owner = 0; owner < batches[i].pieces.size(); ++owner) {
        ASSERT_EQ(ranks[i].pieces[owner].size(), batches[i].pieces[owner].size());
        for (size_t p = 0; p < batches[i].pieces[owner].size(); ++p) {
          EXPECT_EQ(ranks[i].pieces[owner][p].begin, batches[i].pieces[owner][p].begin);
          EXPECT_EQ(ranks[i].pieces[owner][p].offset, batches[i].pieces[owner][p].offset);
        }
      }
    }
  }
}

// Every element of the ranges lands in exactly one piece, held by the
// owner of its chunk; each owner's pieces fill its length from 0 without
// gaps, in flat order; no block is longer than the segment.
void expect_valid_plan(const std::vector<ParamRange>& ranges, const ShardPlan& plan, size_t segment) {
  const std::vector<ExchangeBatch> batches = plan_gradient_exchange(ranges, plan, segment);
  expect_same_plan_on_every_rank(ranges, plan, segment, batches);
  std::vector<ParamRange> covered;
  std::vector<size_t> last_end(static_cast<size_t>(plan.world), 0);
  for (const ExchangeBatch& batch : batches) {
    ASSERT_EQ(batch.pieces.size(), static_cast<size_t>(plan.world));
    ASSERT_EQ(batch.lengths.size(), static_cast<size_t>(plan.world));
    ASSERT_LE(batch.block, segment);
    size_t longest = 0;
    for (int owner = 0; owner < plan.world; ++owner) {
      size_t offset = 0;
      for (const ExchangePiece& piece : batch.pieces[static_cast<size_t>(owner)]) {
        ASSERT_GT(piece.length, 0u);
        EXPECT_EQ(piece.offset, offset);
        offset += piece.length;
        EXPECT_GE(piece.begin, static_cast<size_t>(owner) * plan.chunk);
        EXPECT_LE(piece.begin + piece.length, static_cast<size_t>(owner + 1) * plan.chunk);
        EXPECT_GE(piece.begin, last_end[static_cast<size_t>(owner)]) << "an owner's pieces come in flat order";
        last_end[static_cast<size_t>(owner)] = piece.begin + piece.length;
        covered.push_back(ParamRange{piece.begin, piece.length});
      }
      EXPECT_EQ(batch.lengths[static_cast<size_t>(owner)], offset) << "an owner receives its pieces, no more";
      longest = std::max(longest, offset);
    }
    EXPECT_EQ(batch.block, longest);
  }
  // The pieces tile the ranges: merged, both are the same set.
  std::vector<ParamRange> expected = ranges;
  size_t elements = 0;
  for (const ParamRange& r : expected) elements += r.count;
  size_t pieces = 0;
  for (const ParamRange& r : covered) pieces += r.count;
  EXPECT_EQ(pieces, elements);
  const std::vector<ParamRange> outside_ranges = ranges_not_in(ranges, plan.padded_total());
  std::vector<ParamRange> all = covered;
  all.insert(all.end(), outside_ranges.begin(), outside_ranges.end());
  expect_tiling(all, plan.padded_total());
}

TEST(GradientExchange, PlansCoverTheRangesOnceByOwner) {
  std::mt19937 rng(7);
  for (int world : {1, 2, 3, 5}) {
    for (size_t total : {size_t{1}, size_t{100}, size_t{4099}}) {
      const ShardPlan plan = ShardPlan::make(total, world, 0, 16);
      for (size_t segment : {size_t{1}, size_t{7}, size_t{64}, size_t{100000}}) {
        SCOPED_TRACE("world " + std::to_string(world) + " total " + std::to_string(total) + " segment " +
                     std::to_string(segment));
        // Random disjoint ranges, some empty, in shuffled order.
        std::vector<ParamRange> ranges;
        for (size_t begin = 0; begin < total;) {
          const size_t count = std::min<size_t>(total - begin, rng() % 300);
          if (rng() % 3 != 0) ranges.push_back(ParamRange{begin, count});
          begin += count + rng() % 5;
        }
        std::shuffle(ranges.begin(), ranges.end(), rng);
        expect_valid_plan(ranges, plan, segment);
        expect_valid_plan({ParamRange{0, total}}, plan, segment);
      }
    }
  }
}

// The whole buffer is the plain reduce-scatter: batch i gives owner r the
// i-th segment of its chunk.
TEST(GradientExchange, TheWholeBufferGoesAsChunksInSegments) {
  const ShardPlan plan = ShardPlan::make(10000, 3, 0, 16);
  const size_t segment = 1000;
  const ParamRange whole{0, plan.total};
  const auto batches = plan_gradient_exchange(std::span<const ParamRange>(&whole, 1), plan, segment);
  ASSERT_EQ(batches.size(), (plan.chunk + segment - 1) / segment);
  for (size_t i = 0; i < batches.size(); ++i) {
    for (int r = 0; r < plan.world; ++r) {
      const auto& pieces = batches[i].pieces[static_cast<size_t>(r)];
      const size_t begin = plan.begin_of(r) + i * segment;
      if (begin >= plan.end_of(r)) {
        EXPECT_TRUE(pieces.empty());
        continue;
      }
      ASSERT_EQ(pieces.size(), 1u);
      EXPECT_EQ(pieces[0].begin, begin);
      EXPECT_EQ(pieces[0].length, std::min(segment, plan.end_of(r) - begin));
    }
  }
}

TEST(GradientExchange, RangesNotInAreTheComplement) {
  const std::vector<ParamRange> taken = {{50, 10}, {0, 5}, {60, 0}, {90, 10}};
  const std::vector<ParamRange> left = ranges_not_in(taken, 100);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].begin, 5u);
  EXPECT_EQ(left[0].count, 45u);
  EXPECT_EQ(left[1].begin, 60u);
  EXPECT_EQ(left[1].count, 30u);
  EXPECT_TRUE(ranges_not_in(std::vector<ParamRange>{{0, 100}}, 100).empty());
  EXPECT_EQ(ranges_not_in({}, 7).size(), 1u);
}

TEST(GradientExchange, OverlappingOrOutOfBoundsRangesAreRefused) {
  const ShardPlan plan = ShardPlan::make(100, 2, 0, 16);
  EXPECT_THROW(plan_gradient_exchange(std::vector<ParamRange>{{0, 10}, {5, 10}}, plan, 8), std::logic_error);
  EXPECT_THROW(plan_gradient_exchange(std::vector<ParamRange>{{0, plan.padded_total() + 1}}, plan, 8), std::logic_error);
}

}  // namespace
}  // namespace emix
