// MARS-AdamW's CUDA passes, on the CPU's own per-element math
// (optim/math/mars_math.hpp):
//   - the norm of the corrected gradient over the whole range, for clipping:
//     each thread sums c² in double over a grid-stride loop, warps and then
//     blocks reduce with shuffles into one partial per block, and a second
//     single-block kernel adds the partials in a fixed order. The grid size
//     depends on the element count only, so the sum is the same on every
//     run and every GPU (no atomics).
//   - the fused update: mars_update inside the shared one-pass kernel of
//     fused_update.cuh (4 elements per thread, grid-stride, 16-byte accesses).
// State order (as mars.cpp passes it): m1, nu, g_prev.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/mars_math.hpp"

namespace emix::cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int kWarps = kNormThreads / 32;

__device__ __forceinline__ double warp_sum_double(double value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// The sum of `value` over the block, in thread 0.
__device__ double block_sum_double(double value) {
  __shared__ double warp_sums[kWarps];
  value = warp_sum_double(value);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  return total;
}

__global__ void corrected_sum_of_squares_kernel(const uint16_t* grads, const float* grad_prev, float grad_scale,
                                                float correction, size_t count, double* partials) {
  double sum = 0.0;
  const size_t threads = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += threads) {
    const double c = mars_corrected_gradient(__fmul_rn(bf16_bits_to_float(grads[i]), grad_scale), grad_prev[i],
                                             correction);
    sum += c * c;
  }
  const double block_total = block_sum_double(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

// partials[0] ← Σ partials[0, n), n ≤ kNormThreads·k: each thread adds a
// strided subset in order, then the block reduces.
__global__ void sum_partials_kernel(double* partials, int n) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += partials[i];
  const double total = block_sum_double(sum);
  if (threadIdx.x == 0) partials[0] = total;
}

double corrected_sum_of_squares(const float* grad_prev, const DeviceStep& step, float correction, size_t count,
                                double* scratch) {
  if (count == 0) return 0.0;
  const size_t blocks = std::min<size_t>(ceil_div<size_t>(count, kNormThreads), device::kSumOfSquaresScratch);
  auto stream = static_cast<cudaStream_t>(step.stream);
  corrected_sum_of_squares_kernel<<<static_cast<unsigned>(blocks), kNormThreads, 0, stream>>>(
      static_cast<const uint16_t*>(step.grads), grad_prev, step.grad_scale, correction, count, scratch);
  EMIX_CUDA_CHECK_LAUNCH();
  sum_partials_kernel<<<1, kNormThreads, 0, stream>>>(scratch, static_cast<int>(blocks));
  EMIX_CUDA_CHECK_LAUNCH();
  double total = 0.0;
  EMIX_CUDA_CHECK(cudaMemcpyAsync(&total, scratch, sizeof total, cudaMemcpyDeviceToHost, stream));
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  return total;
}

struct MarsElement {
  static constexpr int kStateBuffers = 3;
  __device__ void operator()(float& param, float grad, float* const* state, const MarsCoefficients& c) const {
    mars_update(param, grad, *state[2], *state[0], *state[1], c);
  }
};

void mars_device_update(const MarsCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
                        uint64_t rounding_key, size_t offset, size_t count) {
  launch_fused_update(MarsElement{}, c, state, step, rounding_key, offset, count);
}

EMIX_REGISTER_DEVICE_FUNCTION("mars", &mars_device_update);
EMIX_REGISTER_DEVICE_FUNCTION("mars.corrected_sum_of_squares", &corrected_sum_of_squares);

}  // namespace
}  // namespace emix::cuda
