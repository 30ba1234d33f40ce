// Simplified-AdEMAMix's fused CUDA update: simplified_ademamix_update
// (optim/math/simplified_ademamix_math.hpp, the CPU's own per-element math)
// inside the shared one-pass kernel of fused_update.cuh
// (4 elements per thread in a grid-stride loop, 16-byte accesses, bf16
// gradients in, bf16 weights out by stochastic rounding).
// State order (as simplified_ademamix.cpp passes it): m, nu.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/simplified_ademamix_math.hpp"

namespace emix::cuda {
namespace {

struct SimplifiedAdemamixElement {
  static constexpr int kStateBuffers = 2;
  __device__ void operator()(float& param, float grad, float* const* state,
                             const SimplifiedAdemamixCoefficients& c) const {
    simplified_ademamix_update(param, grad, *state[0], *state[1], c);
  }
};

void simplified_ademamix_device_update(const SimplifiedAdemamixCoefficients& c, const device::StateBuffers& state,
                                       const DeviceStep& step, uint64_t rounding_key, size_t offset, size_t count) {
  launch_fused_update(SimplifiedAdemamixElement{}, c, state, step, rounding_key, offset, count);
}

EMIX_REGISTER_DEVICE_FUNCTION("simplified_ademamix", &simplified_ademamix_device_update);

}  // namespace
}  // namespace emix::cuda
