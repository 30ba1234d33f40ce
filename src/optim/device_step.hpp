#pragma once
// Where an optimizer lives, and what one update on the CUDA device is given.
// Part of the optimizer interface (optimizer.hpp includes it), kept apart in
// plain C++17 without CUDA types so that the CUDA kernels include it too.
#include <stddef.h>
#include <stdint.h>

namespace emix {

enum class Placement { host, device };

// One update on the device. Every pointer is device memory covering the
// optimizer's range (size() elements). The update is queued on `stream`
// and returns without synchronizing.
struct DeviceStep {
  float* master = nullptr;       // fp32 master weights, updated in place
  const void* grads = nullptr;   // bf16 gradients
  void* params_bf16 = nullptr;   // bf16 weights the model computes with, written from the new master
  float grad_scale = 1.0f;       // multiplies every gradient first (global-norm clipping, 1/accumulation)
  // params_bf16 is master rounded stochastically with bits from
  // hash(rounding_seed, step, element_offset + i) (kernels/bf16_rounding.hpp).
  uint64_t rounding_seed = 0;
  size_t element_offset = 0;     // global index of element 0 (a ZeRO shard's start): same bits on any world size
  void* stream = nullptr;        // cudaStream_t
};

}  // namespace emix
