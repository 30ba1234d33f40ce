#pragma once
// How the gradients of some ranges of the flat buffer travel to the ranks
// that own them (ZeRO shards, shard_plan.hpp), so that data parallelism can
// send each part of the gradients as soon as the backward has finished it
// (model/gpt2_config.hpp, gradient_groups_in_backward_order) instead of all
// at once at the end.
//
// The ranges are cut at the shard boundaries into pieces; each owner's
// pieces are laid end to end into a block, and the blocks are cut into
// batches of at most `segment` elements per owner. A batch then moves like a
// reduce-scatter whose chunks may differ in length: rank r packs its pieces
// for owner o into block o, sends it to o, each owner adds the ranks'
// blocks in rank order (the rule of DeviceCollectives) and unpacks the sums
// into its pieces. Elements are summed one by one, so cutting the
// buffer into ranges, pieces and batches leaves every sum's bits as they
// are. The plan depends on the ranges, the chunk and the world size only:
// every rank computes the same one, so their sends and receives match.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "distributed/shard_plan.hpp"
#include "model/gpt2_config.hpp"

namespace emix {

class Communicator;

struct ExchangePiece {
  size_t begin = 0;   // flat index of its first element
  size_t length = 0;
  size_t offset = 0;  // where it sits in its owner's block
};

struct ExchangeBatch {
  // [owner]: the elements each rank sends to that owner in this batch (its
  // pieces end to end). A rank sends no more than that: a group of the
  // backward often lies in a few owners' chunks.
  std::vector<size_t> lengths;
  size_t block = 0;  // the largest of lengths: the stride of a buffer of one block per owner
  std::vector<std::vector<ExchangePiece>> pieces;  // [owner], by ascending offset
};

// `ranges` must be disjoint and inside [0, plan.padded_total()), in any
// order; segment > 0.
std::vector<ExchangeBatch> plan_gradient_exchange(std::span<const ParamRange> ranges, const ShardPlan& plan,
                                                  size_t segment);

// One batch through a communicator that moves host memory, summed by
// Communicator::reduce_scatter_sum_bf16: `read` copies this rank's
// gradients (bf16 bit patterns) of a piece to `to`, `write` stores the sums
// of the pieces this rank owns from `from`. The host-staged collectives
// (GPU buffers over MPI) use it with device copies, the tests with host
// buffers. `scratch` is reused between calls.
using PieceRead = std::function<void(const ExchangePiece& piece, uint16_t* to)>;
using PieceWrite = std::function<void(const ExchangePiece& piece, const uint16_t* from)>;
void exchange_batch_through_host(Communicator& comm, const ExchangeBatch& batch, const PieceRead& read,
                                 const PieceWrite& write, std::vector<uint16_t>& scratch);

// What is left of [0, total) once `taken` (disjoint ranges) is removed, ascending.
std::vector<ParamRange> ranges_not_in(std::span<const ParamRange> taken, size_t total);

}  // namespace emix
