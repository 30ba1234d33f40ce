// Lion's fused CUDA update: lion_update (optim/math/lion_math.hpp, the CPU's
// own per-element math) inside the shared one-pass kernel of fused_update.cuh
// (4 elements per thread in a grid-stride loop, 16-byte accesses, bf16
// gradients in, bf16 weights out by stochastic rounding).
// State order (as lion.cpp passes it): m.
#include "optim/cuda/fused_update.cuh"
#include "optim/math/lion_math.hpp"

namespace emix::cuda {
namespace {

struct LionElement {
  static constexpr int kStateBuffers = 1;
  __device__ void operator()(float& param, float grad, float* const* state, const LionCoefficients& c) const {
    lion_update(param, grad, *state[0], c);
  }
};

void lion_device_update(const LionCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
                        uint64_t rounding_key, size_t offset, size_t count) {
  launch_fused_update(LionElement{}, c, state, step, rounding_key, offset, count);
}

EMIX_REGISTER_DEVICE_FUNCTION("lion", &lion_device_update);

}  // namespace
}  // namespace emix::cuda
