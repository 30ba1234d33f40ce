#pragma once
// Gradient clipping by global L2 norm. The sum of squares is accumulated in
// double in an order fixed by the length alone (fixed blocks, their partial
// sums added in block order), so it is the same for every number of OpenMP
// threads. A distributed run adds up each rank's sum_of_squares and clips
// every rank with the total's square root.
#include <span>

namespace emix {

// Σ xᵢ², in double.
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
