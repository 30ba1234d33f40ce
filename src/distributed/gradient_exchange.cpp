#include "distributed/gradient_exchange.hpp"

#include <algorithm>
#include <iterator>
#include <stdexcept>

#include "distributed/communicator.hpp"

namespace emix {
namespace {

// Non-empty ranges by ascending begin; overlaps are a caller's bug.
std::vector<ParamRange> sorted(std::span<const ParamRange> ranges) {
  std::vector<ParamRange> result;
  std::copy_if(ranges.begin(), ranges.end(), std::back_inserter(result), [](const ParamRange& r) { return r.count > 0; });
  std::sort(result.begin(), result.end(), [](const ParamRange& a, const ParamRange& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < result.size(); ++i) {
    if (result[i - 1].begin + result[i - 1].count > result[i].begin) throw std::logic_error("overlapping gradient ranges");
  }
  return result;
}

// Owner `owner`'s parts of the ranges, in flat order.
std::vector<ParamRange> parts_owned_by(std::span<const ParamRange> ranges, const ShardPlan& plan, int owner) {
  const size_t first = static_cast<size_t>(owner) * plan.chunk;
  const size_t last = first + plan.chunk;
  std::vector<ParamRange> parts;
  for (const ParamRange& range : ranges) {
    const size_t begin = std::max(range.begin, first);
    const size_t end = std::min(range.begin + range.count, last);
    if (begin < end) parts.push_back(ParamRange{begin, end - begin});
  }
  return parts;
}

}  // namespace

std::vector<ExchangeBatch> plan_gradient_exchange(std::span<const ParamRange> ranges, const ShardPlan& plan,
                                                  size_t segment) {
  if (segment == 0) throw std::logic_error("plan_gradient_exchange: segment 0");
  const std::vector<ParamRange> ordered = sorted(ranges);
  if (!ordered.empty() && ordered.back().begin + ordered.back().count > plan.padded_total()) {
    throw std::logic_error("gradient range past the padded buffer");
  }
  std::vector<ExchangeBatch> batches;
  for (int owner = 0; owner < plan.world; ++owner) {
    // Walk this owner's stream of elements, cutting it every `segment`.
    size_t position = 0;  // in the owner's stream
    for (const ParamRange& part : parts_owned_by(ordered, plan, owner)) {
      size_t done = 0;
      while (done < part.count) {
        const size_t batch = position / segment;
        const size_t offset = position % segment;
        const size_t length = std::min(part.count - done, segment - offset);
        if (batches.size() <= batch) batches.resize(batch + 1);
        ExchangeBatch& b = batches[batch];
        b.pieces.resize(static_cast<size_t>(plan.world));
        b.lengths.resize(static_cast<size_t>(plan.world));
        b.pieces[static_cast<size_t>(owner)].push_back(ExchangePiece{part.begin + done, length, offset});
        b.lengths[static_cast<size_t>(owner)] = offset + length;
        b.block = std::max(b.block, offset + length);
        done += length;
        position += length;
      }
    }
  }
  return batches;
}

void exchange_batch_through_host(Communicator& comm, const ExchangeBatch& batch, const PieceRead& read,
                                 const PieceWrite& write, std::vector<uint16_t>& scratch) {
  const size_t world = static_cast<size_t>(comm.world_size());
  const size_t block = batch.block;
  // world blocks to send, then this rank's block of sums; what no piece
  // fills is zero (its sums are never read).
  scratch.assign((world + 1) * block, 0);
  for (size_t owner = 0; owner < world; ++owner) {
    for (const ExchangePiece& piece : batch.pieces[owner]) read(piece, scratch.data() + owner * block + piece.offset);
  }
  uint16_t* sums = scratch.data() + world * block;
  comm.reduce_scatter_sum_bf16(std::span<const uint16_t>(scratch.data(), world * block), std::span<uint16_t>(sums, block));
  for (const ExchangePiece& piece : batch.pieces[static_cast<size_t>(comm.rank())]) write(piece, sums + piece.offset);
}

std::vector<ParamRange> ranges_not_in(std::span<const ParamRange> taken, size_t total) {
  std::vector<ParamRange> left;
  size_t next = 0;
  for (const ParamRange& range : sorted(taken)) {
    if (range.begin > next) left.push_back(ParamRange{next, range.begin - next});
    next = std::max(next, range.begin + range.count);
  }
  if (next < total) left.push_back(ParamRange{next, total - next});
  return left;
}

}  // namespace emix
