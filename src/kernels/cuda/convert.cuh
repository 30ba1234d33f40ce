#pragma once
// fp32 → bf16 copies: the model's bf16 weights from the fp32 master weights,
// when they are initialized (round to nearest even) or loaded from a
// checkpoint (the stochastic rounding the last update used).
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

void convert_to_bf16(bf16* out, const float* in, size_t n, cudaStream_t stream);

// Stochastic rounding with the bits of (seed, step, element_offset + i), as
// the optimizers' updates write their bf16 weights (kernels/bf16_rounding.hpp).
void convert_to_bf16_stochastic(bf16* out, const float* in, size_t n, uint64_t seed, uint64_t step, size_t element_offset,
                                cudaStream_t stream);

}  // namespace emix::cuda
