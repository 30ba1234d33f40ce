#pragma once
// Linear layers on the GPU through cuBLASLt: y = x·Wᵀ + b with W stored
// [OC, IC] (PyTorch's and the CPU backend's layout), bf16 operands, fp32
// accumulation. Bias and GELU are fused into the product's epilogue where
// cuBLASLt offers it; descriptors and algorithm choices are cached per
// shape, so steady-state calls only launch. The same code, with a Matmul of
// its own, serves the strided-batched products of the reference attention
// (batched()).
#include <cstdint>
#include <memory>

#include "kernels/cuda/common.cuh"

namespace emix::cuda {

class Matmul {
 public:
  Matmul();  // creates the cuBLASLt handle and a workspace
  ~Matmul();
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  // out[N,OC] = inp[N,IC]·weight[OC,IC]ᵀ + bias (bias may be null).
  // With pre_gelu non-null: pre_gelu = inp·Wᵀ + bias and out = gelu(pre_gelu).
  void forward(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int N, int IC, int OC,
               bf16* pre_gelu, cudaStream_t stream);

  // dinp = dout·weight (overwritten; with pre_gelu non-null, then multiplied
  // elementwise by gelu'(pre_gelu), pre_gelu being [N,IC]);
  // dweight += doutᵀ·inp; dbias += Σ_rows dout when dbias is not null
  // (deterministic). Any accumulation is into the existing bf16 values.
  void backward(bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout, const bf16* inp, const bf16* weight, int N,
                int IC, int OC, const bf16* pre_gelu, cudaStream_t stream);

  // `batch` independent products c = op(a)·op(b), each m × n with k summed,
  // in cuBLAS's column-major convention (a row-major [R, C] array is the
  // column-major C × R matrix with leading dimension C). Member i of each
  // operand starts stride_* elements after member i − 1. bf16 a and b, fp32
  // c (overwritten), fp32 accumulation.
  struct Batched {
    bool transpose_a, transpose_b;
    int m, n, k;
    int64_t lda, ldb, ldc;
    int64_t stride_a, stride_b, stride_c;
    int batch;
  };
  void batched(const Batched& product, const bf16* a, const bf16* b, float* c, cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace emix::cuda
