#pragma once
// LayerNorm over the last dimension (C) of N rows on the GPU, bf16 in and
// out, fp32 statistics (math: kernels/layernorm_math.hpp). The residual add
// that precedes every LayerNorm but the first is fused into it.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

// out = LN(inp)·w + b; mean and rstd ([N] floats) are kept for the backward.
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w, const bf16* b, int N, int C,
                       cudaStream_t stream);

// residual = a + b (elementwise, rounded to bf16), then
// out = LN(residual)·w + bias, keeping mean and rstd.
void residual_layernorm_forward(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a, const bf16* b,
                                const bf16* w, const bf16* bias, int N, int C, cudaStream_t stream);

// Scratch floats layernorm_backward needs for rows N, channels C.
size_t layernorm_backward_scratch_floats(int N, int C);

// dinp += d(loss)/d(inp); dw += Σ_rows dout·norm; db += Σ_rows dout. The
// column sums go through `scratch` in a fixed order (deterministic).
void layernorm_backward(bf16* dinp, bf16* dw, bf16* db, float* scratch, const bf16* dout, const bf16* inp,
                        const bf16* w, const float* mean, const float* rstd, int N, int C, cudaStream_t stream);

}  // namespace emix::cuda
