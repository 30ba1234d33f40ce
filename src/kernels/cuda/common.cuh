#pragma once
// What every CUDA kernel file shares: the bf16 type, error checks that throw
// emix::Error (never abort), launch-size arithmetic, and a 16-byte packed
// vector for wide, coalesced loads and stores. Included by .cu files (C++17)
// and by host .cpp files alike.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace emix::cuda {

using bf16 = __nv_bfloat16;

// Throws emix::Error naming the failed call, the CUDA error and the source
// location (implemented in check.cpp, outside nvcc's C++17).
[[noreturn]] void fail_cuda(cudaError_t status, const char* what, const char* file, int line);

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) fail_cuda(status, what, file, line);
}

#define EMIX_CUDA_CHECK(call) ::emix::cuda::check_cuda((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at once (the
// kernel's own faults surface at the next synchronizing call).
#define EMIX_CUDA_CHECK_LAUNCH() ::emix::cuda::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

template <typename T>
constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// 16 bytes of T (8 bf16 or 4 floats): one 128-bit load or store per thread.
// The pointer must be 16-byte aligned.
template <typename T>
struct alignas(16) Packed {
  static constexpr int kSize = 16 / sizeof(T);
  T values[kSize];

#if defined(__CUDACC__)
  __device__ __forceinline__ static Packed load(const T* address) {
    Packed p;
    *reinterpret_cast<int4*>(p.values) = *reinterpret_cast<const int4*>(address);
    return p;
  }
  // Through the read-only cache, for data the kernel never writes.
  __device__ __forceinline__ static Packed load_readonly(const T* address) {
    Packed p;
    *reinterpret_cast<int4*>(p.values) = __ldg(reinterpret_cast<const int4*>(address));
    return p;
  }
  __device__ __forceinline__ void store(T* address) const {
    *reinterpret_cast<int4*>(address) = *reinterpret_cast<const int4*>(values);
  }
  __device__ __forceinline__ T& operator[](int i) { return values[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return values[i]; }
#endif
};

#if defined(__CUDACC__)
// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}
#endif

}  // namespace emix::cuda
