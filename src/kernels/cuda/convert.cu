// fp32 → bf16, to nearest or stochastically: one element per thread,
// grid-stride, so any n and any alignment work (it runs once per load, not
// per step).
#include "kernels/cuda/convert.cuh"

#include <algorithm>

#include "kernels/bf16_rounding.hpp"

namespace emix::cuda {
namespace {

__global__ void convert_to_bf16_kernel(bf16* out, const float* in, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

__global__ void convert_to_bf16_stochastic_kernel(bf16* out, const float* in, size_t n, uint64_t key, size_t element_offset) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const uint16_t bits = bf16_bits_stochastic(in[i], rounding_bits(key, element_offset + i));
    out[i] = __nv_bfloat16_raw{bits};
  }
}

int grid_for(size_t n, int threads) { return static_cast<int>(std::min<size_t>(ceil_div<size_t>(n, threads), 4096)); }

}  // namespace

void convert_to_bf16_stochastic(bf16* out, const float* in, size_t n, uint64_t seed, uint64_t step, size_t element_offset,
                                cudaStream_t stream) {
  if (n == 0) return;
  convert_to_bf16_stochastic_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, in, n, rounding_key(seed, step), element_offset);
  EMIX_CUDA_CHECK_LAUNCH();
}

void convert_to_bf16(bf16* out, const float* in, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  convert_to_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, in, n);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
