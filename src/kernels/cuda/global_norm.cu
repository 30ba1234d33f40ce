// Σ x² over a bf16 buffer in fp32, deterministic, in two phases. Phase one:
// a fixed grid of kBlocks blocks (a constant, not derived from the GPU, so
// every GPU adds in the same order) strides over the buffer in 16-byte
// chunks; each thread sums its chunks in order, and a block adds its threads'
// sums in a fixed tree into one partial per block. Phase two: one warp adds
// the kBlocks partials in a fixed tree and writes (or adds to) the result.
// Elements before the first 16-byte boundary and after the last whole chunk
// (at most 7 each) are taken one per thread by the first threads of block 0.
#include <cstdint>

#include "kernels/cuda/global_norm.cuh"

namespace emix::cuda {

namespace {

constexpr int kBlocks = 264;  // 2 per SM on an H100; fixed for every GPU
constexpr int kThreads = 512;
constexpr int kWarpSize = 32;
using Pack = Packed<bf16>;

__device__ float square(bf16 x) {
  const float f = __bfloat162float(x);
  return f * f;
}

// x[0, head) and x[head + packs·8, n) singly; x[head, head + packs·8) in
// 16-byte chunks (x + head is 16-byte aligned).
__global__ void sum_squares_partial_kernel(float* partials, const bf16* x, size_t head, size_t packs, size_t n) {
  const size_t thread = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const bf16* body = x + head;
  float sum = 0.0f;
  for (size_t p = thread; p < packs; p += stride) {
    const Pack v = Pack::load_readonly(body + p * Pack::kSize);
    for (int k = 0; k < Pack::kSize; ++k) sum += square(v[k]);
  }
  const size_t tail = head + packs * Pack::kSize;
  if (thread < head) sum += square(x[thread]);
  if (thread < n - tail) sum += square(x[tail + thread]);

  __shared__ float warp_sums[kThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  sum = warp_sum(sum);
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp != 0) return;
  sum = lane < kThreads / kWarpSize ? warp_sums[lane] : 0.0f;
  sum = warp_sum(sum);
  if (lane == 0) partials[blockIdx.x] = sum;
}

__global__ void sum_squares_final_kernel(float* out, const float* partials, bool accumulate) {
  float sum = 0.0f;
  for (int i = threadIdx.x; i < kBlocks; i += kWarpSize) sum += partials[i];
  sum = warp_sum(sum);
  if (threadIdx.x == 0) *out = accumulate ? *out + sum : sum;
}

}  // namespace

size_t global_norm_scratch_floats() { return kBlocks; }

void global_norm_squared(float* out, const bf16* x, size_t n, float* scratch, bool accumulate, cudaStream_t stream) {
  // bf16 elements are 2-byte aligned: the first 16-byte boundary is at most 7 elements in.
  const size_t misalignment = reinterpret_cast<uintptr_t>(x) % sizeof(Pack);
  size_t head = misalignment == 0 ? 0 : (sizeof(Pack) - misalignment) / sizeof(bf16);
  if (head > n) head = n;
  const size_t packs = (n - head) / Pack::kSize;
  sum_squares_partial_kernel<<<kBlocks, kThreads, 0, stream>>>(scratch, x, head, packs, n);
  EMIX_CUDA_CHECK_LAUNCH();
  sum_squares_final_kernel<<<1, kWarpSize, 0, stream>>>(out, scratch, accumulate);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
