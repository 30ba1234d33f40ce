// One element per thread, grid-stride: memory-bound, and it runs once per
// step on a chunk of the gradients.
#include "kernels/cuda/sum_chunks.cuh"

#include <algorithm>
#include <cstdint>

#include "kernels/bf16_rounding.hpp"

namespace emix::cuda {
namespace {

// On the bf16 bit patterns, with the host's conversions (bf16_rounding.hpp):
// Communicator::reduce_scatter_sum_bf16, the host-memory path of the same
// sum, rounds with the same function.
__global__ void sum_bf16_chunks_kernel(uint16_t* out, const uint16_t* chunks, int world, size_t length) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < length; i += size_t{gridDim.x} * blockDim.x) {
    float sum = bf16_bits_to_float(chunks[i]);
    for (int r = 1; r < world; ++r) sum += bf16_bits_to_float(chunks[r * length + i]);
    out[i] = bf16_bits_nearest_even(sum);
  }
}

}  // namespace

void sum_bf16_chunks(bf16* out, const bf16* chunks, int world, size_t length, cudaStream_t stream) {
  if (length == 0) return;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<size_t>(ceil_div<size_t>(length, kThreads), 4096));
  sum_bf16_chunks_kernel<<<blocks, kThreads, 0, stream>>>(reinterpret_cast<uint16_t*>(out),
                                                          reinterpret_cast<const uint16_t*>(chunks), world, length);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
