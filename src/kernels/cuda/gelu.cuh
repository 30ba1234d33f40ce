#pragma once
// GELU (tanh approximation, kernels/gelu_math.hpp) on bf16, elementwise,
// computed in fp32.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

void gelu_forward(bf16* out, const bf16* inp, size_t n, cudaStream_t stream);

// dinp = dout · gelu'(inp); dinp may be dout (in place).
void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n, cudaStream_t stream);

}  // namespace emix::cuda
