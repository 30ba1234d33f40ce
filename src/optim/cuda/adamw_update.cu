// AdamW's fused CUDA update: adamw_update (optim/math/adamw_math.hpp, the CPU's
// own per-element math) inside the shared one-pass kernel of fused_update.cuh
// (4 elements per thread in a grid-stride loop, 16-byte accesses, bf16
// gradients in, bf16 weights out by stochastic rounding).
// State order (as adamw.cpp passes it): m1, nu.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/adamw_math.hpp"

namespace emix::cuda {
namespace {

struct AdamwElement {
  static constexpr int kStateBuffers = 2;
  __device__ void operator()(float& param, float grad, float* const* state, const AdamwCoefficients& c) const {
    adamw_update(param, grad, *state[0], *state[1], c);
  }
};

void adamw_device_update(const AdamwCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
                         uint64_t rounding_key, size_t offset, size_t count) {
  launch_fused_update(AdamwElement{}, c, state, step, rounding_key, offset, count);
}

EMIX_REGISTER_DEVICE_FUNCTION("adamw", &adamw_device_update);

}  // namespace
}  // namespace emix::cuda
