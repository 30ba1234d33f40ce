#pragma once
// The output head's softmax fused with the cross-entropy loss, in place over
// the bf16 logits, so no probability matrix is ever stored (math:
// kernels/cross_entropy_math.hpp). Rows are Vp wide, of which the first V
// are real: padded columns are masked out of the softmax and get gradient 0.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

// For each of N rows: losses[row] = logsumexp(logits[row, :V]) − logits[row, target]
// (fp32), and, when write_grad is true, logits[row, :] is overwritten with
// grad_scale · d(loss_row)/d(logits) (0 in the padded columns).
void softmax_cross_entropy(bf16* logits, float* losses, const int32_t* targets, int N, int V, int Vp, float grad_scale,
                           bool write_grad, cudaStream_t stream);

// *out (device double) = Σ losses[0..N) summed in a fixed order.
void sum_losses(double* out, const float* losses, int N, cudaStream_t stream);

}  // namespace emix::cuda
