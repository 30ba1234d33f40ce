// Softmax cross-entropy over the vocabulary, fused and in place (interface:
// classifier.cuh; math: kernels/cross_entropy_math.hpp and exp_math.hpp).
// - softmax_cross_entropy: one block per row. Each thread takes every
//   blockDim-th group of 8 logits (one 16-byte load; Vp is a multiple of 8)
//   and keeps a running fp32 (max, Σ exp(x − max)) over the real columns
//   (< V), rescaling the sum when the max grows; the pairs are merged across
//   the warp by shuffles and across warps through shared memory, in a fixed
//   order. Then each thread re-reads its own groups and overwrites them with
//   the gradient (0 in the padded columns), so no thread reads what another
//   writes.
// - sum_losses: one block; each thread sums a strided share of the losses in
//   double, then a fixed tree over the threads.
#include <cfloat>

#include "kernels/cross_entropy_math.hpp"
#include "kernels/cuda/classifier.cuh"
#include "kernels/exp_math.hpp"

namespace emix::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// A partial log-sum-exp: sum = Σ exp(x − max) over the values seen. max
// starts at −FLT_MAX rather than −∞ so that merging two empty partials takes
// exp(0)·0, never exp(−∞ + ∞).
struct SoftmaxPartial {
  float max = -FLT_MAX;
  float sum = 0.0f;
};

__device__ __forceinline__ SoftmaxPartial merge(SoftmaxPartial a, SoftmaxPartial b) {
  SoftmaxPartial merged;
  merged.max = fmaxf(a.max, b.max);
  merged.sum = a.sum * exp_vectorizable(a.max - merged.max) + b.sum * exp_vectorizable(b.max - merged.max);
  return merged;
}

// The whole block's partial, in every thread.
__device__ SoftmaxPartial block_merge(SoftmaxPartial partial) {
  __shared__ SoftmaxPartial warp_partials[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) {
    SoftmaxPartial other;
    other.max = __shfl_xor_sync(0xffffffffu, partial.max, offset);
    other.sum = __shfl_xor_sync(0xffffffffu, partial.sum, offset);
    partial = merge(partial, other);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_partials[warp] = partial;
  __syncthreads();
  SoftmaxPartial total;
  for (int w = 0; w < kWarps; ++w) total = merge(total, warp_partials[w]);
  return total;
}

__global__ void __launch_bounds__(kThreads)
    softmax_cross_entropy_kernel(bf16* logits, float* losses, const int32_t* targets, int V, int Vp,
                                 float grad_scale, bool write_grad) {
  constexpr int kGroup = Packed<bf16>::kSize;
  const int row = blockIdx.x;
  bf16* row_logits = logits + static_cast<size_t>(row) * Vp;
  const int target = targets[row];
  // Read before any thread of the block can overwrite it with its gradient.
  const float target_logit = __bfloat162float(row_logits[target]);
  const int groups = Vp / kGroup;

  SoftmaxPartial partial;
  for (int group = threadIdx.x; group * kGroup < V; group += kThreads) {
    const Packed<bf16> packed = Packed<bf16>::load(row_logits + group * kGroup);
    float values[kGroup];
    float group_max = -FLT_MAX;
    for (int i = 0; i < kGroup; ++i) {
      values[i] = __bfloat162float(packed[i]);
      if (group * kGroup + i < V) group_max = fmaxf(group_max, values[i]);
    }
    const float new_max = fmaxf(partial.max, group_max);
    float group_sum = 0.0f;
    for (int i = 0; i < kGroup; ++i) {
      if (group * kGroup + i < V) group_sum += exp_vectorizable(values[i] - new_max);
    }
    partial.sum = partial.sum * exp_vectorizable(partial.max - new_max) + group_sum;
    partial.max = new_max;
  }
  const SoftmaxPartial total = block_merge(partial);
  const float lse = total.max + logf(total.sum);
  if (threadIdx.x == 0) losses[row] = lse - target_logit;
  if (!write_grad) return;

  for (int group = threadIdx.x; group < groups; group += kThreads) {
    bf16* address = row_logits + group * kGroup;
    Packed<bf16> packed = Packed<bf16>::load(address);
    for (int i = 0; i < kGroup; ++i) {
      const int column = group * kGroup + i;
      const float grad =
          column < V ? cross_entropy_logit_grad(__bfloat162float(packed[i]), lse, column == target, grad_scale) : 0.0f;
      packed[i] = __float2bfloat16(grad);
    }
    packed.store(address);
  }
}

constexpr int kSumThreads = 1024;

__global__ void __launch_bounds__(kSumThreads) sum_losses_kernel(double* out, const float* losses, int N) {
  __shared__ double partials[kSumThreads];
  double sum = 0.0;
  for (int i = threadIdx.x; i < N; i += kSumThreads) sum += losses[i];
  partials[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kSumThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partials[threadIdx.x] += partials[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = partials[0];
}

}  // namespace

void softmax_cross_entropy(bf16* logits, float* losses, const int32_t* targets, int N, int V, int Vp, float grad_scale,
                           bool write_grad, cudaStream_t stream) {
  if (Vp % Packed<bf16>::kSize != 0 || reinterpret_cast<uintptr_t>(logits) % 16 != 0 || V > Vp) {
    fail_cuda(cudaErrorInvalidValue,
              "softmax_cross_entropy (needs Vp a multiple of 8, V <= Vp, 16-byte aligned logits)", __FILE__,
              __LINE__);
  }
  if (N == 0) return;
  softmax_cross_entropy_kernel<<<N, kThreads, 0, stream>>>(logits, losses, targets, V, Vp, grad_scale, write_grad);
  EMIX_CUDA_CHECK_LAUNCH();
}

void sum_losses(double* out, const float* losses, int N, cudaStream_t stream) {
  sum_losses_kernel<<<1, kSumThreads, 0, stream>>>(out, losses, N);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
