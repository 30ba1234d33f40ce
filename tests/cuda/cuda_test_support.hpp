#pragma once
// Helpers for the CUDA tests: skipping (visibly) where no GPU is present,
// device buffers, bf16 conversions on the host, random inputs, and the
// relative error the tests bound. Tests are host C++ calling the kernels'
// launch functions, checked against the CPU backend (emix::cpu) in fp32 on
// bf16-rounded inputs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.hpp"

namespace emix::test {

// Skips the test with the runtime's reason when there is no usable GPU.
#define EMIX_REQUIRE_GPU()                                                       \
  do {                                                                           \
    std::string emix_why_no_gpu;                                                 \
    if (::emix::cuda::list_devices(&emix_why_no_gpu).empty())                    \
      GTEST_SKIP() << "no CUDA device (" << emix_why_no_gpu << "): GPU test not run"; \
  } while (0)

// The current device's compute capability major number (9: Hopper).
inline int compute_capability_major() {
  int device = 0, major = 0;
  EMIX_CUDA_CHECK(cudaGetDevice(&device));
  EMIX_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major;
}

// An owning device allocation of n elements of T.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : size_(n) { EMIX_CUDA_CHECK(cudaMalloc(&data_, std::max<size_t>(n, 1) * sizeof(T))); }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), size_(other.size_) { other.data_ = nullptr; }

  T* get() { return data_; }
  const T* get() const { return data_; }
  size_t size() const { return size_; }
  void upload(const std::vector<T>& host) {
    EMIX_CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(size_);
    EMIX_CUDA_CHECK(cudaDeviceSynchronize());
    EMIX_CUDA_CHECK(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // All bits set: NaN as bf16 and as float, so an element a kernel should
  // have written but did not shows up as non-finite.
  void poison() { EMIX_CUDA_CHECK(cudaMemset(data_, 0xFF, size_ * sizeof(T))); }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

inline float to_float(cuda::bf16 x) { return __bfloat162float(x); }
inline cuda::bf16 to_bf16(float x) { return __float2bfloat16(x); }  // round to nearest even

inline std::vector<cuda::bf16> to_bf16(const std::vector<float>& x) {
  std::vector<cuda::bf16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_bf16(x[i]);
  return out;
}
inline std::vector<float> to_float(const std::vector<cuda::bf16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_float(x[i]);
  return out;
}
// x rounded to bf16 and back: the CPU reference's inputs, so that the
// comparison measures the kernel's arithmetic, not the input rounding.
inline std::vector<float> bf16_rounded(const std::vector<float>& x) { return to_float(to_bf16(x)); }

// n values uniform in [-scale, scale), from seed.
inline std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

inline std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> x(n);
  for (int32_t& v : x) v = dist(rng);
  return x;
}

// ‖got − ref‖ / ‖ref‖, or infinity when got has a non-finite element (an
// unwritten, poisoned output) or the sizes differ.
inline double relative_error(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    diff += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

inline size_t count_nonfinite(const std::vector<float>& x) {
  size_t n = 0;
  for (float v : x) n += !std::isfinite(v);
  return n;
}

}  // namespace emix::test
