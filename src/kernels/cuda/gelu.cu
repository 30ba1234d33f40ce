// GELU forward and backward on bf16, elementwise in fp32 (math:
// kernels/gelu_math.hpp). One thread per 8 elements (16-byte loads and
// stores); the last n mod 8 elements get one thread each.
#include <cstdint>

#include "kernels/cuda/gelu.cuh"
#include "kernels/gelu_math.hpp"

namespace emix::cuda {

namespace {

constexpr int kThreads = 256;
using Pack = Packed<bf16>;

void check_aligned(const void* pointer, const char* who) {
  if (reinterpret_cast<uintptr_t>(pointer) % sizeof(Pack) != 0)
    fail_cuda(cudaErrorMisalignedAddress, who, __FILE__, __LINE__);
}

// Threads [0, packs) take 8 elements each, the rest the tail one by one.
unsigned blocks_for(size_t n) {
  const size_t packs = n / Pack::kSize;
  return static_cast<unsigned>(ceil_div(packs + n % Pack::kSize, static_cast<size_t>(kThreads)));
}

__global__ void gelu_forward_kernel(bf16* out, const bf16* inp, size_t n) {
  const size_t packs = n / Pack::kSize;
  const size_t index = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index < packs) {
    const size_t offset = index * Pack::kSize;
    const Pack x = Pack::load_readonly(inp + offset);
    Pack y;
    for (int k = 0; k < Pack::kSize; ++k) y[k] = __float2bfloat16(gelu(__bfloat162float(x[k])));
    y.store(out + offset);
    return;
  }
  const size_t element = packs * Pack::kSize + (index - packs);
  if (element < n) out[element] = __float2bfloat16(gelu(__bfloat162float(inp[element])));
}

// dout is read with plain loads: it may be dinp.
__global__ void gelu_backward_kernel(bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
  const size_t packs = n / Pack::kSize;
  const size_t index = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index < packs) {
    const size_t offset = index * Pack::kSize;
    const Pack x = Pack::load_readonly(inp + offset);
    const Pack dy = Pack::load(dout + offset);
    Pack dx;
    for (int k = 0; k < Pack::kSize; ++k)
      dx[k] = __float2bfloat16(__bfloat162float(dy[k]) * gelu_derivative(__bfloat162float(x[k])));
    dx.store(dinp + offset);
    return;
  }
  const size_t element = packs * Pack::kSize + (index - packs);
  if (element < n)
    dinp[element] = __float2bfloat16(__bfloat162float(dout[element]) * gelu_derivative(__bfloat162float(inp[element])));
}

}  // namespace

void gelu_forward(bf16* out, const bf16* inp, size_t n, cudaStream_t stream) {
  check_aligned(out, "gelu_forward: out must be 16-byte aligned");
  check_aligned(inp, "gelu_forward: inp must be 16-byte aligned");
  if (n == 0) return;
  gelu_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, inp, n);
  EMIX_CUDA_CHECK_LAUNCH();
}

void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n, cudaStream_t stream) {
  check_aligned(dinp, "gelu_backward: dinp must be 16-byte aligned");
  check_aligned(inp, "gelu_backward: inp must be 16-byte aligned");
  check_aligned(dout, "gelu_backward: dout must be 16-byte aligned");
  if (n == 0) return;
  gelu_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(dinp, inp, dout, n);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
