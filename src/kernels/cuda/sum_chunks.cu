// One element per thread, grid-stride: memory-bound, and it runs once per
// step on a chunk of the gradients.
#include "kernels/cuda/sum_chunks.cuh"

#include <algorithm>

namespace emix::cuda {
namespace {

__global__ void sum_bf16_chunks_kernel(bf16* out, const bf16* chunks, int world, size_t length) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < length; i += size_t{gridDim.x} * blockDim.x) {
    float sum = __bfloat162float(chunks[i]);
    for (int r = 1; r < world; ++r) sum += __bfloat162float(chunks[r * length + i]);
    out[i] = __float2bfloat16_rn(sum);
  }
}

}  // namespace

void sum_bf16_chunks(bf16* out, const bf16* chunks, int world, size_t length, cudaStream_t stream) {
  if (length == 0) return;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<size_t>(ceil_div<size_t>(length, kThreads), 4096));
  sum_bf16_chunks_kernel<<<blocks, kThreads, 0, stream>>>(out, chunks, world, length);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
