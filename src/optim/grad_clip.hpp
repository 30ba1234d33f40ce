#pragma once
// Gradient clipping by global L2 norm. The sum of squares is accumulated in
// double in an order fixed by the length alone (fixed blocks, their partial
// sums added in block order), so it is the same for every number of OpenMP
// threads. A ZeRO-sharded run gathers the block sums of every rank's shard
// and adds them in the same order (train/data_parallel.cpp).
#include <cstddef>
#include <span>
#include <vector>

namespace emix {

// Σ xᵢ² is summed over blocks of this many elements (the block of element
// i is i / kSumOfSquaresBlock), each block in double, and the block sums are
// added in block order. A ZeRO shard that starts at a multiple of it
// (ShardPlan) has the same blocks as the whole buffer, so the ranks' block
// sums, gathered and added in order, give the single-process norm exactly.
inline constexpr size_t kSumOfSquaresBlock = 2048;

// The sum of squares of each block of `values` (the last block may be short).
std::vector<double> block_sums_of_squares(std::span<const float> values);

// Σ xᵢ², in double: the block sums added in order.
double sum_of_squares(std::span<const float> values);

// √(sum_of_squares(grads)).
double global_norm(std::span<const float> grads);

// Scales every gradient by max_norm/norm when norm > max_norm > 0; `norm` is
// the global L2 norm of the whole gradient. A non-finite norm leaves the
// gradients untouched: whether to skip the step is the caller's decision.
// Returns the factor applied (1 when none).
float clip_to_norm(std::span<float> grads, double norm, double max_norm);

// The factor clip_to_norm applies: max_norm/norm when norm > max_norm > 0
// and norm is finite, else 1. Backends that scale inside the update (CUDA)
// use it directly.
float clip_scale(double norm, double max_norm);

// x *= scale, elementwise, in parallel.
void scale_in_place(std::span<float> x, float scale);

// global_norm, then clip_to_norm; returns the norm before clipping.
double clip_grad_norm(std::span<float> grads, double max_norm);

}  // namespace emix
