// AdEMAMix's fused CUDA update: ademamix_update (optim/math/ademamix_math.hpp, the CPU's
// own per-element math) inside the shared one-pass kernel of fused_update.cuh
// (4 elements per thread in a grid-stride loop, 16-byte accesses, bf16
// gradients in, bf16 weights out by stochastic rounding).
// State order (as ademamix.cpp passes it): m1 (nullptr when β1 = 0), m2, nu;
// without m1 the kernel is a separate instantiation that passes ademamix_update
// a literal nullptr.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/ademamix_math.hpp"

namespace emix::cuda {
namespace {

template <bool kHasM1>
struct AdemamixElement {
  static constexpr int kStateBuffers = 3;
  __device__ void operator()(float& param, float grad, float* const* state, const AdemamixCoefficients& c) const {
    ademamix_update(param, grad, kHasM1 ? state[0] : nullptr, *state[1], *state[2], c);
  }
};

void ademamix_device_update(const AdemamixCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
                            uint64_t rounding_key, size_t offset, size_t count) {
  if (state.data[0] != nullptr) {
    launch_fused_update(AdemamixElement<true>{}, c, state, step, rounding_key, offset, count);
  } else {
    launch_fused_update(AdemamixElement<false>{}, c, state, step, rounding_key, offset, count);
  }
}

EMIX_REGISTER_DEVICE_FUNCTION("ademamix", &ademamix_device_update);

}  // namespace
}  // namespace emix::cuda
