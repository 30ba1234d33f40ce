#pragma once
// Scratch memory that grows on demand and is kept between calls: the
// kernels' temporaries (attention's heads and scores, the bias-gradient
// partial sums, cuDNN's workspace, the encoder's index table) are sized by
// the call's shape, which changes rarely, so after the first call of a shape
// get() only returns the pointer. Device memory, or pinned host memory for
// tables that are copied to the device asynchronously. Included by .cu files
// and host .cpp files alike.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

enum class Memory { device, pinned_host };

template <typename T, Memory kind = Memory::device>
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() { release(); }

  // Room for at least n elements. Growing drops the contents and reallocates;
  // work already queued on `stream` may still use the old memory, so growing
  // waits for the stream first. Every use of one buffer must be ordered on
  // that one stream.
  T* get(size_t n, cudaStream_t stream) {
    if (n > capacity_) {
      EMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
      EMIX_CUDA_CHECK(release());
      void* memory = nullptr;
      EMIX_CUDA_CHECK(kind == Memory::device ? cudaMalloc(&memory, n * sizeof(T))
                                             : cudaMallocHost(&memory, n * sizeof(T)));
      data_ = static_cast<T*>(memory);
      capacity_ = n;
    }
    return data_;
  }

 private:
  cudaError_t release() {
    const cudaError_t status = kind == Memory::device ? cudaFree(data_) : cudaFreeHost(data_);
    data_ = nullptr;
    capacity_ = 0;
    return status;
  }

  T* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace emix::cuda
