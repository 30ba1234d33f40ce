// AdEMAMix's fused CUDA update: ademamix_update (optim/math/ademamix_math.hpp, the CPU's
// own per-element math) inside the shared one-pass kernel of fused_update.cuh
// (4 elements per thread in a grid-stride loop, 16-byte accesses, bf16
// gradients in, bf16 weights out by stochastic rounding).
// State order (as ademamix.cpp passes it): m1 (nullptr when β1 = 0), m2, nu;
// without m1 the kernel is a separate instantiation that passes ademamix_update
// a literal nullptr. m2 stored in bf16 (m2_dtype "bfloat16": state.bf16[1]
// set, data[1] null) is another: ademamix_update<true> computes m2's average
// as the host does for bf16, and fused_update.cuh rounds it stochastically
// when storing it. m2 in int8 blocks (m2_dtype "int8") takes the
// blockwise kernel of blockwise_int8_update.cuh for the weight-decayed
// segments ("ademamix.int8", ademamix_update<true> too) and this fused
// update, on the packed fp32 m2, for the others.
#include "optim/cuda/blockwise_int8_update.cuh"
#include "optim/cuda/fused_update.cuh"
#include "optim/math/ademamix_math.hpp"

namespace emix::cuda {
namespace {

template <bool kHasM1, bool kM2Narrow>
struct AdemamixElement {
  static constexpr int kStateBuffers = 3;
  __device__ void operator()(float& param, float grad, float* const* state, const AdemamixCoefficients& c) const {
    ademamix_update<kM2Narrow>(param, grad, kHasM1 ? state[0] : nullptr, *state[1], *state[2], c);
  }
};

template <bool kHasM1>
void launch(const AdemamixCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
            uint64_t rounding_key, size_t offset, size_t count) {
  if (state.bf16[1] != nullptr) {
    launch_fused_update(AdemamixElement<kHasM1, true>{}, c, state, step, rounding_key, offset, count);
  } else {
    launch_fused_update(AdemamixElement<kHasM1, false>{}, c, state, step, rounding_key, offset, count);
  }
}

void ademamix_device_update(const AdemamixCoefficients& c, const device::StateBuffers& state, const DeviceStep& step,
                            uint64_t rounding_key, size_t offset, size_t count) {
  if (state.data[0] != nullptr) {
    launch<true>(c, state, step, rounding_key, offset, count);
  } else {
    launch<false>(c, state, step, rounding_key, offset, count);
  }
}

void ademamix_int8_update(const AdemamixCoefficients& c, const device::StateBuffers& state,
                          const device::Int8Ranges& ranges, const DeviceStep& step, uint64_t rounding_key,
                          size_t count) {
  if (state.data[0] != nullptr) {
    launch_blockwise_int8_update(AdemamixElement<true, true>{}, c, state, ranges, step, rounding_key, count);
  } else {
    launch_blockwise_int8_update(AdemamixElement<false, true>{}, c, state, ranges, step, rounding_key, count);
  }
}

EMIX_REGISTER_DEVICE_FUNCTION("ademamix", &ademamix_device_update);
EMIX_REGISTER_DEVICE_FUNCTION("ademamix.int8", &ademamix_int8_update);

}  // namespace
}  // namespace emix::cuda
