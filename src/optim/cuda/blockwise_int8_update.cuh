#pragma once
// The update of the elements whose state includes a buffer stored in int8
// blocks (optim/math/blockwise_int8.hpp; AdEMAMix's m2_dtype "int8"). One
// CUDA block per block of kInt8Block elements, one thread per element:
//   1. each thread of an int8 element loads its master weight, gradient and
//      state, the int8 buffer dequantized with the block's old scale;
//   2. runs the optimizer's per-element math (the CPU's own header) and
//      stores the master weight, the bf16 weight (rounded stochastically,
//      as fused_update.cuh does) and the float state;
//   3. the block reduces the new int8-buffer values to their largest
//      magnitude, the new scale, and every thread stores its code, rounded
//      stochastically with the state stream's bits of its global index.
// The host does the same in two passes (update, then
// ElementwiseOptimizer::requantize_int8), with the same bits: the results
// are the same. Elements outside the int8 ranges (threads of a block that
// straddles a range's end) only take part in the reduction, with 0.
#include <stdint.h>

#include "kernels/bf16_rounding.hpp"
#include "kernels/cuda/common.cuh"
#include "optim/cuda/fused_update.cuh"
#include "optim/device_backend.hpp"
#include "optim/math/blockwise_int8.hpp"

namespace emix::cuda {

__device__ __forceinline__ bool in_ranges(const device::Int8Ranges& ranges, uint64_t i) {
  for (uint32_t r = 0; r < ranges.count; ++r) {
    if (i >= ranges.begin[r] && i < ranges.end[r]) return true;
  }
  return false;
}

// The largest magnitude over the block (int8_scale_max: NaN-propagating),
// returned to every thread. `partials` holds one value per warp.
__device__ __forceinline__ float block_scale(float magnitude, float* partials) {
  for (int offset = 16; offset > 0; offset /= 2) {
    magnitude = int8_scale_max(magnitude, __shfl_xor_sync(0xffffffffu, magnitude, offset));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partials[warp] = magnitude;
  __syncthreads();
  float scale = 0.0f;
  for (int w = 0; w < kInt8Block / 32; ++w) scale = int8_scale_max(scale, partials[w]);
  __syncthreads();  // partials may be reused by the next call
  return scale;
}

template <typename Element, typename Coefficients>
__global__ void __launch_bounds__(kInt8Block)
    blockwise_int8_update_kernel(Element element, Coefficients c, FusedUpdateArrays a, device::Int8Ranges ranges,
                                 size_t count) {
  constexpr int kBuffers = Element::kStateBuffers;
  __shared__ float magnitudes[kInt8Magnitudes];
  __shared__ float partials[kInt8Block / 32];
  if (threadIdx.x < kInt8Magnitudes) magnitudes[threadIdx.x] = int8_dynamic_magnitude(threadIdx.x);
  __syncthreads();

  const size_t block = blockIdx.x;
  const size_t i = block * kInt8Block + threadIdx.x;
  const bool member = i < count && in_ranges(ranges, i);
  // The narrow state's rounding bits: one draw per element serves every
  // bf16 or int8 buffer, as in fused_update.cuh.
  const uint32_t state_random = rounding_bits(a.state.narrow_rounding_key, a.element_offset + i);
  float state[kBuffers];
  if (member) {
    float param = a.master[i];
    const float grad = __fmul_rn(bf16_bits_to_float(a.grads[i]), a.grad_scale);
    float* element_state[kBuffers];
#pragma unroll
    for (int b = 0; b < kBuffers; ++b) {
      if (a.state.int8[b] != nullptr) {
        state[b] = int8_dequantize(a.state.int8[b][i], a.state.int8_scales[b][block], magnitudes);
      } else if (a.state.bf16[b] != nullptr) {
        state[b] = bf16_bits_to_float(a.state.bf16[b][i]);
      } else if (a.state.data[b] != nullptr) {
        state[b] = a.state.data[b][i];
      }
      element_state[b] = &state[b];
    }
    element(param, grad, element_state, c);
    a.master[i] = param;
    a.params[i] = bf16_bits_stochastic(param, rounding_bits(a.rounding_key, a.element_offset + i));
#pragma unroll
    for (int b = 0; b < kBuffers; ++b) {
      if (a.state.int8[b] != nullptr) continue;
      if (a.state.bf16[b] != nullptr) a.state.bf16[b][i] = bf16_bits_stochastic(state[b], state_random);
      if (a.state.data[b] != nullptr) a.state.data[b][i] = state[b];
    }
  }
#pragma unroll
  for (int b = 0; b < kBuffers; ++b) {
    if (a.state.int8[b] == nullptr) continue;
    // Every thread reaches the reduction: its barriers need the whole block.
    const float scale = block_scale(member ? fabsf(state[b]) : 0.0f, partials);
    if (member) a.state.int8[b][i] = int8_code_stochastic(state[b], scale, state_random, magnitudes);
    if (threadIdx.x == 0) a.state.int8_scales[b][block] = scale;
  }
}

// Launches the update of every int8 element of a range of `count` elements
// on step.stream: the body of each optimizer's registered "<name>.int8"
// device::Int8UpdateFunction.
template <typename Element, typename Coefficients>
void launch_blockwise_int8_update(const Element& element, const Coefficients& c, const device::StateBuffers& state,
                                  const device::Int8Ranges& ranges, const DeviceStep& step, uint64_t rounding_key,
                                  size_t count) {
  if (count == 0 || ranges.count == 0) return;
  const FusedUpdateArrays arrays = fused_update_arrays(state, step, rounding_key);
  const uint64_t blocks = int8_block_count(count);
  blockwise_int8_update_kernel<<<static_cast<unsigned>(blocks), kInt8Block, 0, static_cast<cudaStream_t>(step.stream)>>>(
      element, c, arrays, ranges, count);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
