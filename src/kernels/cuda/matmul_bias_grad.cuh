#pragma once
// The bias gradient of a linear layer, dbias += Σ_rows dout, summed in a fixed
// order (bit-identical from run to run): Matmul::backward's own kernel, kept
// out of cuBLASLt, whose bias-gradient epilogues overwrite instead of adding.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

// Floats of scratch that bias_grad_accumulate needs for these sizes.
size_t bias_grad_scratch_floats(int N, int OC);

// dbias[c] += Σ_n dout[n, c] for the row-major [N, OC] dout; scratch holds
// bias_grad_scratch_floats(N, OC) floats of per-chunk partial sums.
void bias_grad_accumulate(bf16* dbias, float* scratch, const bf16* dout, int N, int OC, cudaStream_t stream);

}  // namespace emix::cuda
