#include "core/error.hpp"
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

void fail_cuda(cudaError_t status, const char* what, const char* file, int line) {
  fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(status), cudaGetErrorString(status), what, file, line);
}

}  // namespace emix::cuda
