// LaProp's fused CUDA update: laprop_update (optim/math/laprop_math.hpp, the CPU's
// own per-element math) inside the shared one-pass kernel of fused_update.cuh
// (4 elements per thread in a grid-stride loop, 16-byte accesses, bf16
// gradients in, bf16 weights out by stochastic rounding).
// State order (as laprop.cpp passes it): m, nu.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/laprop_math.hpp"

namespace emix::cuda {
namespace {

struct LapropElement {
  static constexpr int kStateBuffers = 2;
  __device__ void operator()(float& param, float grad, float* const* state, const LapropCoefficients& c) const {
    laprop_update(param, grad, *state[0], *state[1], c);
  }
};

void laprop_device_update(const LapropCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
                          uint64_t rounding_key, size_t offset, size_t count) {
  launch_fused_update(LapropElement{}, c, state, step, rounding_key, offset, count);
}

EMIX_REGISTER_DEVICE_FUNCTION("laprop", &laprop_device_update);

}  // namespace
}  // namespace emix::cuda
