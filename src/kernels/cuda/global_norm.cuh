#pragma once
// Σ x² over a bf16 buffer, in fp32, deterministic: a fixed grid of blocks
// writes one partial sum each, and one block adds them in order.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

// Floats of scratch global_norm_squared needs.
size_t global_norm_scratch_floats();

// *out (device float) = Σ_i x[i]² (+ *out when accumulate is true, to add
// several buffers in a fixed order).
void global_norm_squared(float* out, const bf16* x, size_t n, float* scratch, bool accumulate, cudaStream_t stream);

}  // namespace emix::cuda
