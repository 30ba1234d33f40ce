#pragma once
// The fused optimizer update every src/optim/cuda/<name>_update.cu
// instantiates: one pass over a segment that reads the fp32 master weight,
// the bf16 gradient (times grad_scale) and the fp32 state, runs the
// optimizer's per-element math (src/optim/math/, the CPU's own header) and
// writes back the master weight, the state, and the bf16 weight rounded
// stochastically (kernels/bf16_rounding.hpp, bits from the element's global
// index). A state buffer stored in bf16 (device_backend.hpp's StateBuffers)
// is widened on load and rounded stochastically on store, with the state
// stream's bits of the same index: the optimizer's math sees floats either
// way.
//
// Parallelization: a grid-stride loop where each thread takes 4 consecutive
// elements per iteration, with 16-byte loads and stores of the fp32 arrays
// and 8-byte ones of the bf16 arrays (weights, gradients, bf16 state). A segment may start at any element, so
// the launch peels a head of up to 3 elements (to the master's next 16-byte
// boundary) and a tail of up to 3, done one element per thread by the first
// threads; when the arrays are not mutually aligned (a shard starting at an
// odd element against freshly allocated state) the whole segment takes the
// one-element path. Either path runs the same per-element math, so the
// results are bit-identical whichever is taken.
#include <stdint.h>

#include <algorithm>

#include "kernels/bf16_rounding.hpp"
#include "kernels/cuda/common.cuh"
#include "optim/device_backend.hpp"

namespace emix::cuda {

// Everything one launch reads besides the coefficients; bf16 arrays are
// handled as their bit patterns.
struct FusedUpdateArrays {
  float* master;
  const uint16_t* grads;
  uint16_t* params;
  device::StateBuffers state;
  float grad_scale;
  uint64_t rounding_key;
  uint64_t element_offset;  // global index of element 0 of the range
};

inline FusedUpdateArrays fused_update_arrays(const device::StateBuffers& state, const DeviceStep& step,
                                             uint64_t rounding_key) {
  return FusedUpdateArrays{step.master,
                           static_cast<const uint16_t*>(step.grads),
                           static_cast<uint16_t*>(step.params_bf16),
                           state,
                           step.grad_scale,
                           rounding_key,
                           static_cast<uint64_t>(step.element_offset)};
}

template <int kWidth>
__device__ __forceinline__ void load_floats(const float* address, float (&values)[kWidth]) {
  if constexpr (kWidth == 4) {
    const float4 v = *reinterpret_cast<const float4*>(address);
    values[0] = v.x, values[1] = v.y, values[2] = v.z, values[3] = v.w;
  } else {
    for (int j = 0; j < kWidth; ++j) values[j] = address[j];
  }
}

template <int kWidth>
__device__ __forceinline__ void store_floats(float* address, const float (&values)[kWidth]) {
  if constexpr (kWidth == 4) {
    *reinterpret_cast<float4*>(address) = make_float4(values[0], values[1], values[2], values[3]);
  } else {
    for (int j = 0; j < kWidth; ++j) address[j] = values[j];
  }
}

template <int kWidth>
__device__ __forceinline__ void load_bf16_readonly(const uint16_t* address, float (&values)[kWidth]) {
  if constexpr (kWidth == 4) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(address));
    values[0] = bf16_bits_to_float(static_cast<uint16_t>(v.x & 0xFFFFu));
    values[1] = bf16_bits_to_float(static_cast<uint16_t>(v.x >> 16));
    values[2] = bf16_bits_to_float(static_cast<uint16_t>(v.y & 0xFFFFu));
    values[3] = bf16_bits_to_float(static_cast<uint16_t>(v.y >> 16));
  } else {
    for (int j = 0; j < kWidth; ++j) values[j] = bf16_bits_to_float(__ldg(address + j));
  }
}

// The same for a bf16 array the kernel also writes (bf16 state): plain loads.
template <int kWidth>
__device__ __forceinline__ void load_bf16(const uint16_t* address, float (&values)[kWidth]) {
  if constexpr (kWidth == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(address);
    values[0] = bf16_bits_to_float(static_cast<uint16_t>(v.x & 0xFFFFu));
    values[1] = bf16_bits_to_float(static_cast<uint16_t>(v.x >> 16));
    values[2] = bf16_bits_to_float(static_cast<uint16_t>(v.y & 0xFFFFu));
    values[3] = bf16_bits_to_float(static_cast<uint16_t>(v.y >> 16));
  } else {
    for (int j = 0; j < kWidth; ++j) values[j] = bf16_bits_to_float(address[j]);
  }
}

template <int kWidth>
__device__ __forceinline__ void store_bf16(uint16_t* address, const uint16_t (&bits)[kWidth]) {
  if constexpr (kWidth == 4) {
    *reinterpret_cast<uint2*>(address) = make_uint2(bits[0] | (static_cast<uint32_t>(bits[1]) << 16),
                                                    bits[2] | (static_cast<uint32_t>(bits[3]) << 16));
  } else {
    for (int j = 0; j < kWidth; ++j) address[j] = bits[j];
  }
}

// Elements [i, i + kWidth) of the range. Element is the optimizer's
// per-element functor: element(param, grad, state, c), state[b] pointing at
// the element's value of state buffer b, a register (an absent buffer's is
// never loaded or stored, and its functor must not touch it). The pointers
// always point at registers, never null, so the compiler keeps everything in
// registers: a functor with an absent buffer is a separate instantiation.
// The gradient is scaled with __fmul_rn: rounded on its own, as the CPU's
// g·grad_scale, never contracted into an FMA with what follows.
template <int kWidth, typename Element, typename Coefficients>
__device__ __forceinline__ void fused_update_elements(const Element& element, const Coefficients& c,
                                                      const FusedUpdateArrays& a, size_t i) {
  constexpr int kBuffers = Element::kStateBuffers;
  float param[kWidth];
  float grad[kWidth];
  float state[kBuffers > 0 ? kBuffers : 1][kWidth];
  load_floats<kWidth>(a.master + i, param);
  load_bf16_readonly<kWidth>(a.grads + i, grad);
#pragma unroll
  for (int b = 0; b < kBuffers; ++b) {
    if (a.state.data[b] != nullptr) load_floats<kWidth>(a.state.data[b] + i, state[b]);
    if (a.state.bf16[b] != nullptr) load_bf16<kWidth>(a.state.bf16[b] + i, state[b]);
  }
  uint16_t rounded[kWidth];
#pragma unroll
  for (int j = 0; j < kWidth; ++j) {
    float* element_state[kBuffers > 0 ? kBuffers : 1];
#pragma unroll
    for (int b = 0; b < kBuffers; ++b) element_state[b] = &state[b][j];
    element(param[j], __fmul_rn(grad[j], a.grad_scale), element_state, c);
    rounded[j] = bf16_bits_stochastic(param[j], rounding_bits(a.rounding_key, a.element_offset + i + j));
  }
  store_floats<kWidth>(a.master + i, param);
#pragma unroll
  for (int b = 0; b < kBuffers; ++b) {
    if (a.state.data[b] != nullptr) store_floats<kWidth>(a.state.data[b] + i, state[b]);
    if (a.state.bf16[b] != nullptr) {
      uint16_t state_bits[kWidth];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        state_bits[j] = bf16_bits_stochastic(state[b][j],
                                             rounding_bits(a.state.narrow_rounding_key, a.element_offset + i + j));
      }
      store_bf16<kWidth>(a.state.bf16[b] + i, state_bits);
    }
  }
  store_bf16<kWidth>(a.params + i, rounded);
}

// [begin, head_end) and [body_end, end) one element per thread (at most 3
// each), [head_end, body_end) kWidth elements per thread and iteration.
template <int kWidth, typename Element, typename Coefficients>
__global__ void fused_update_kernel(Element element, Coefficients c, FusedUpdateArrays a, size_t begin,
                                    size_t head_end, size_t body_end, size_t end) {
  const size_t thread = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t threads = static_cast<size_t>(gridDim.x) * blockDim.x;
  if (thread < head_end - begin) fused_update_elements<1>(element, c, a, begin + thread);
  if (thread < end - body_end) fused_update_elements<1>(element, c, a, body_end + thread);
  for (size_t i = head_end + thread * kWidth; i < body_end; i += threads * kWidth) {
    fused_update_elements<kWidth>(element, c, a, i);
  }
}

inline bool aligned_to(const void* address, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(address) % bytes == 0;
}

// Launches the fused update of [offset, offset + count) on step.stream: the
// body of every <name>_update.cu's registered device::UpdateFunction.
template <typename Element, typename Coefficients>
void launch_fused_update(const Element& element, const Coefficients& c, const device::StateBuffers& state,
                         const DeviceStep& step, uint64_t rounding_key, size_t offset, size_t count) {
  constexpr int kWidth = 4;
  constexpr int kThreads = 256;
  // Enough blocks to fill an H100 several times over; the loop strides past that.
  constexpr size_t kMaxBlocks = 4096;

  const FusedUpdateArrays arrays = fused_update_arrays(state, step, rounding_key);
  const size_t end = offset + count;
  const size_t misalignment = reinterpret_cast<uintptr_t>(step.master + offset) / sizeof(float) % kWidth;
  const size_t head_end = std::min(end, offset + (kWidth - misalignment) % kWidth);
  const size_t body_end = head_end + (end - head_end) / kWidth * kWidth;
  bool vectorizable = aligned_to(arrays.master + head_end, 16) && aligned_to(arrays.grads + head_end, 8) &&
                      aligned_to(arrays.params + head_end, 8);
  for (int b = 0; b < Element::kStateBuffers; ++b) {
    if (state.data[b] != nullptr) vectorizable = vectorizable && aligned_to(state.data[b] + head_end, 16);
    if (state.bf16[b] != nullptr) vectorizable = vectorizable && aligned_to(state.bf16[b] + head_end, 8);
  }
  auto stream = static_cast<cudaStream_t>(step.stream);
  if (vectorizable) {
    const size_t blocks = std::clamp<size_t>(ceil_div<size_t>((body_end - head_end) / kWidth, kThreads), 1, kMaxBlocks);
    fused_update_kernel<kWidth><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(element, c, arrays, offset,
                                                                                         head_end, body_end, end);
  } else {
    const size_t blocks = std::clamp<size_t>(ceil_div<size_t>(count, kThreads), 1, kMaxBlocks);
    fused_update_kernel<1><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(element, c, arrays, offset, offset,
                                                                                    end, end);
  }
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
