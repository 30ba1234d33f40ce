#pragma once
// How the optimizers (emix_core, compiled without CUDA) reach the CUDA
// backend (emix_cuda): emix_cuda registers, from static initializers,
//   - the device memory operations, and
//   - named device functions: each optimizer's fused update
//     (src/optim/cuda/<name>_update.cu, registered under the optimizer's
//     name) and the extra passes some optimizers need (MARS's norm,
//     schedule-free's x ↔ y conversion), each under "<name>.<pass>".
// A build without CUDA registers nothing: creating a device optimizer there
// throws "this build has no CUDA backend".
// Plain C++17 without CUDA types: the .cu files that register include it.
#include <stddef.h>
#include <stdint.h>

#include <string_view>
#include <typeinfo>

#include "optim/device_step.hpp"

namespace emix::device {

struct MemoryOps {
  void* (*allocate_zeroed)(size_t bytes);  // on the current device; waits until zeroed
  void (*release)(void* pointer);
  void (*copy_to_host)(void* host, const void* device, size_t bytes);    // waits for all device work first
  void (*copy_to_device)(void* device, const void* host, size_t bytes);  // returns when done
  void (*copy_on_stream)(void* destination, const void* source, size_t bytes, void* stream);  // device → device, queued
};

bool register_memory_ops(const MemoryOps& ops);
// Throws emix::Error "this build has no CUDA backend" when none is registered.
const MemoryOps& memory_ops();

// An owning, zero-initialized device allocation.
class Allocation {
 public:
  Allocation() = default;
  explicit Allocation(size_t bytes);
  ~Allocation();
  Allocation(Allocation&& other) noexcept : data_(other.data_) { other.data_ = nullptr; }
  Allocation& operator=(Allocation&& other) noexcept;
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
};

// Function pointers are stored type-erased with their type, and handed back
// only as that same type (a mismatch is a programming error: std::logic_error).
using ErasedFunction = void (*)();
bool register_function(std::string_view key, const std::type_info& type, ErasedFunction function);
// nullptr when nothing is registered under `key`.
ErasedFunction find_function(std::string_view key, const std::type_info& type);

template <typename Function>
bool register_function(std::string_view key, Function* function) {
  return register_function(key, typeid(Function), reinterpret_cast<ErasedFunction>(function));
}

template <typename Function>
Function* find_function(std::string_view key) {
  return reinterpret_cast<Function*>(find_function(key, typeid(Function)));
}

// An optimizer's state pointers for its fused update, in the order its
// update file documents; nullptr for an absent buffer (AdEMAMix's m1 at β1 = 0).
// A buffer stored in bf16 (AdEMAMix's m2 with m2_dtype "bfloat16") has its
// bit patterns' pointer in bf16[b] and a null data[b]: the update widens it
// to float, runs the optimizer's math, and writes back the result rounded
// stochastically with rounding_bits(narrow_rounding_key, global index), where
// narrow_rounding_key = state_rounding_key(rounding_seed, step)
// (kernels/bf16_rounding.hpp; ElementwiseOptimizer sets it). A buffer stored
// in int8 blocks (m2_dtype "int8", optim/math/blockwise_int8.hpp) has its
// codes in int8[b] and its blocks' scales in int8_scales[b], for the int8
// pass below; the fused update sees only its packed floats, in data[b].
inline constexpr int kMaxStateBuffers = 4;
struct StateBuffers {
  float* data[kMaxStateBuffers] = {};
  uint16_t* bf16[kMaxStateBuffers] = {};
  uint8_t* int8[kMaxStateBuffers] = {};
  float* int8_scales[kMaxStateBuffers] = {};
  uint64_t narrow_rounding_key = 0;
};

// The int8 segments of an optimizer's range, [begin, end) relative to its
// start, in order; passed by value to the kernel.
inline constexpr int kMaxInt8Ranges = 16;
struct Int8Ranges {
  uint32_t count = 0;
  uint64_t begin[kMaxInt8Ranges] = {};
  uint64_t end[kMaxInt8Ranges] = {};
};

// The fused update of one segment [offset, offset + count) of the range:
// `coefficients` is the host's, lr_weight_decay already set for the segment;
// rounding_key = rounding_key(step.rounding_seed, StepInfo::step).
template <typename Coefficients>
using UpdateFunction = void(const Coefficients& coefficients, const StateBuffers& state, const DeviceStep& step,
                            uint64_t rounding_key, size_t offset, size_t count);

// "<name>.int8": the update of every element of `ranges` (whose int8
// buffers' blocks these are) over a range of `count` elements, each block
// dequantized, updated with the optimizer's math and requantized
// stochastically (narrow_rounding_key) with its new scale; queued on
// step.stream.
template <typename Coefficients>
using Int8UpdateFunction = void(const Coefficients& coefficients, const StateBuffers& state, const Int8Ranges& ranges,
                                const DeviceStep& step, uint64_t rounding_key, size_t count);

// The extra passes, each over [0, count) of the optimizer's range:
//
// "mars.corrected_sum_of_squares": Σ c² for c = mars_corrected_gradient(
// grad·grad_scale, grad_prev, correction), summed in double in an order that
// depends on count only (deterministic); queued on step.stream, then waits
// for the result. scratch: kSumOfSquaresScratch doubles of device memory.
inline constexpr size_t kSumOfSquaresScratch = 1024;
using SumOfSquaresFunction = double(const float* grad_prev, const DeviceStep& step, float correction, size_t count,
                                    double* scratch);
// "schedule_free_adamw.convert": master ← schedule_free_convert(master, z,
// weight), then params_bf16 ← master rounded to nearest even; queued on
// step.stream.
using ConvertFunction = void(const float* z, const DeviceStep& step, float weight, size_t count);

}  // namespace emix::device

#define EMIX_DEVICE_CONCAT_(a, b) a##b
#define EMIX_DEVICE_CONCAT(a, b) EMIX_DEVICE_CONCAT_(a, b)
// Registers a device function at program start (in emix_cuda's .cu files).
#define EMIX_REGISTER_DEVICE_FUNCTION(key, function)                                            \
  static const bool EMIX_DEVICE_CONCAT(emix_device_function_registered_, __LINE__) = \
      ::emix::device::register_function((key), (function))
