// Schedule-Free AdamW's CUDA passes, on the CPU's own per-element math
// (optim/math/schedule_free_math.hpp):
//   - the fused update: schedule_free_update inside the shared one-pass
//     kernel of fused_update.cuh (4 elements per thread, grid-stride,
//     16-byte accesses, bf16 weights by stochastic rounding);
//   - the y ↔ x conversion of the master weights through z, with the bf16
//     weights rewritten by round-to-nearest-even: one element per thread in
//     a grid-stride loop (it runs only around evaluations).
// State order (as schedule_free_adamw.cpp passes it): z, nu.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/schedule_free_math.hpp"

namespace emix::cuda {
namespace {

struct ScheduleFreeElement {
  static constexpr int kStateBuffers = 2;
  __device__ void operator()(float& param, float grad, float* const* state,
                             const ScheduleFreeCoefficients& c) const {
    schedule_free_update(param, grad, *state[0], *state[1], c);
  }
};

void schedule_free_device_update(const ScheduleFreeCoefficients& c, const device::StateBuffers& state,
                                 const DeviceStep& step, uint64_t rounding_key, size_t offset, size_t count) {
  launch_fused_update(ScheduleFreeElement{}, c, state, step, rounding_key, offset, count);
}

__global__ void convert_kernel(float* master, const float* z, bf16* params, float weight, size_t count) {
  const size_t threads = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += threads) {
    const float converted = schedule_free_convert(master[i], z[i], weight);
    master[i] = converted;
    params[i] = __float2bfloat16_rn(converted);
  }
}

void convert(const float* z, const DeviceStep& step, float weight, size_t count) {
  if (count == 0) return;
  constexpr int kThreads = 256;
  const size_t blocks = std::min<size_t>(ceil_div<size_t>(count, kThreads), 4096);
  convert_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(step.stream)>>>(
      step.master, z, static_cast<bf16*>(step.params_bf16), weight, count);
  EMIX_CUDA_CHECK_LAUNCH();
}

EMIX_REGISTER_DEVICE_FUNCTION("schedule_free_adamw", &schedule_free_device_update);
EMIX_REGISTER_DEVICE_FUNCTION("schedule_free_adamw.convert", &convert);

}  // namespace
}  // namespace emix::cuda
