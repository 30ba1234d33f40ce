// The device memory operations the optimizers' state lives in
// (device::MemoryOps, optim/device_backend.hpp), registered at program
// start: with these present, emix_core can place an optimizer on the GPU.
// No kernels: cudaMalloc/cudaMemset/cudaMemcpy on the current device.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "optim/device_backend.hpp"

namespace emix::cuda {
namespace {

void* allocate_zeroed(size_t bytes) {
  void* pointer = nullptr;
  EMIX_CUDA_CHECK(cudaMalloc(&pointer, std::max<size_t>(bytes, 1)));
  EMIX_CUDA_CHECK(cudaMemset(pointer, 0, bytes));
  // cudaMemset may still be running: work queued on a non-blocking stream
  // next would not wait for it.
  EMIX_CUDA_CHECK(cudaDeviceSynchronize());
  return pointer;
}

// Called from destructors: nothing to do about a failure there.
void release(void* pointer) { (void)cudaFree(pointer); }

void copy_to_host(void* host, const void* device, size_t bytes) {
  EMIX_CUDA_CHECK(cudaDeviceSynchronize());
  EMIX_CUDA_CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
}

void copy_to_device(void* device, const void* host, size_t bytes) {
  EMIX_CUDA_CHECK(cudaDeviceSynchronize());
  EMIX_CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
  EMIX_CUDA_CHECK(cudaDeviceSynchronize());
}

void copy_on_stream(void* destination, const void* source, size_t bytes, void* stream) {
  EMIX_CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice,
                                  static_cast<cudaStream_t>(stream)));
}

const bool registered = device::register_memory_ops(
    device::MemoryOps{allocate_zeroed, release, copy_to_host, copy_to_device, copy_on_stream});

}  // namespace
}  // namespace emix::cuda
