// LayerNorm over rows of C channels, bf16 in and out, fp32 statistics (math:
// kernels/layernorm_math.hpp).
// Forward (and the fused residual add + forward): one warp per row; each lane
// takes 8-channel chunks lane, lane+32, ... with 16-byte loads; the row's
// mean and then its variance are warp sums over re-reads of the (L1-cached)
// row, so any C that is a multiple of 8 works.
// Backward, deterministic: one warp per row adds the input gradient into
// dinp; the same pass accumulates dout·norm and dout per column into the
// warp's own slice of shared memory (a lane always owns the same columns).
// Each block covers a fixed range of rows and writes its column sums, added
// over its warps in order, to scratch; a second kernel adds those partials
// in a fixed order and adds the result to dw and db.
#include <algorithm>

#include "kernels/cuda/layernorm.cuh"
#include "kernels/layernorm_math.hpp"

namespace emix::cuda {

namespace {

using Pack = Packed<bf16>;
constexpr int kWarpSize = 32;
constexpr int kRowStride = kWarpSize * Pack::kSize;  // channels one warp covers per step
constexpr int kForwardWarps = 8;
constexpr int kBackwardWarps = 4;
// At most this many blocks (and so partial sums per column) in the backward,
// a constant so that the summation order depends on N alone, not on the GPU.
constexpr int kMaxBackwardBlocks = 512;
constexpr int kReduceColumns = 32;  // columns per block of the partial-sum kernel
constexpr int kReduceSlices = 8;    // threads summing one column's partials

void check_channels(int C, const char* who) {
  if (C <= 0 || C % Pack::kSize != 0) fail_cuda(cudaErrorInvalidValue, who, __FILE__, __LINE__);
}

int backward_rows_per_block(int N) { return std::max(kBackwardWarps, ceil_div(N, kMaxBackwardBlocks)); }
int backward_blocks(int N) { return ceil_div(N, backward_rows_per_block(N)); }

// Given Σ x over the row (every lane holds it), finishes the statistics and
// writes out = norm·w + b. `x` may have just been written by this lane.
__device__ void normalize_row(bf16* out, float* mean, float* rstd, const bf16* x, const bf16* w, const bf16* b,
                              float row_sum, int row, int C, int lane) {
  const float m = row_sum / static_cast<float>(C);
  float squares = 0.0f;
  for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
    const Pack v = Pack::load(x + c);
    for (int k = 0; k < Pack::kSize; ++k) {
      const float d = __bfloat162float(v[k]) - m;
      squares += d * d;
    }
  }
  const float s = layernorm_rstd(warp_sum(squares) / static_cast<float>(C));
  for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
    const Pack v = Pack::load(x + c);
    const Pack weight = Pack::load_readonly(w + c);
    const Pack bias = Pack::load_readonly(b + c);
    Pack y;
    for (int k = 0; k < Pack::kSize; ++k) {
      const float norm = (__bfloat162float(v[k]) - m) * s;
      y[k] = __float2bfloat16(norm * __bfloat162float(weight[k]) + __bfloat162float(bias[k]));
    }
    y.store(out + c);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

__global__ void layernorm_forward_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                                         const bf16* b, int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kForwardWarps + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const size_t offset = static_cast<size_t>(row) * C;
  float sum = 0.0f;
  for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
    const Pack v = Pack::load_readonly(inp + offset + c);
    for (int k = 0; k < Pack::kSize; ++k) sum += __bfloat162float(v[k]);
  }
  normalize_row(out + offset, mean, rstd, inp + offset, w, b, warp_sum(sum), row, C, lane);
}

__global__ void residual_layernorm_forward_kernel(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a,
                                                  const bf16* b, const bf16* w, const bf16* bias, int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kForwardWarps + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const size_t offset = static_cast<size_t>(row) * C;
  float sum = 0.0f;
  for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
    const Pack x = Pack::load_readonly(a + offset + c);
    const Pack y = Pack::load_readonly(b + offset + c);
    Pack r;
    for (int k = 0; k < Pack::kSize; ++k) {
      r[k] = __float2bfloat16(__bfloat162float(x[k]) + __bfloat162float(y[k]));
      sum += __bfloat162float(r[k]);  // the statistics are those of the stored (rounded) residual
    }
    r.store(residual + offset + c);
  }
  normalize_row(out + offset, mean, rstd, residual + offset, w, bias, warp_sum(sum), row, C, lane);
}

// Block g covers rows [g·rows_per_block, (g+1)·rows_per_block); its warps
// take every kBackwardWarps-th row. partials[g] gets the block's column sums
// [Σ dout·norm (C) | Σ dout (C)].
__global__ void layernorm_backward_rows_kernel(bf16* dinp, float* partials, const bf16* dout, const bf16* inp,
                                               const bf16* w, const float* mean, const float* rstd, int N, int C,
                                               int rows_per_block) {
  extern __shared__ float column_sums[];  // [kBackwardWarps][2C]
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  float* dw_sums = column_sums + static_cast<size_t>(warp) * 2 * C;
  float* db_sums = dw_sums + C;
  for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
    for (int k = 0; k < Pack::kSize; ++k) {
      dw_sums[c + k] = 0.0f;
      db_sums[c + k] = 0.0f;
    }
  }

  const int row_begin = blockIdx.x * rows_per_block;
  const int row_end = min(N, row_begin + rows_per_block);
  for (int row = row_begin + warp; row < row_end; row += kBackwardWarps) {
    const size_t offset = static_cast<size_t>(row) * C;
    const float m = mean[row];
    const float s = rstd[row];
    float sum_dnorm = 0.0f;
    float sum_dnorm_norm = 0.0f;
    for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
      const Pack dy = Pack::load_readonly(dout + offset + c);
      const Pack x = Pack::load_readonly(inp + offset + c);
      const Pack weight = Pack::load_readonly(w + c);
      for (int k = 0; k < Pack::kSize; ++k) {
        const float d = __bfloat162float(dy[k]);
        const float norm = (__bfloat162float(x[k]) - m) * s;
        const float dnorm = d * __bfloat162float(weight[k]);
        sum_dnorm += dnorm;
        sum_dnorm_norm += dnorm * norm;
        dw_sums[c + k] += d * norm;
        db_sums[c + k] += d;
      }
    }
    const float mean_dnorm = warp_sum(sum_dnorm) / static_cast<float>(C);
    const float mean_dnorm_norm = warp_sum(sum_dnorm_norm) / static_cast<float>(C);
    for (int c = lane * Pack::kSize; c < C; c += kRowStride) {
      const Pack dy = Pack::load_readonly(dout + offset + c);
      const Pack x = Pack::load_readonly(inp + offset + c);
      const Pack weight = Pack::load_readonly(w + c);
      Pack dx = Pack::load(dinp + offset + c);
      for (int k = 0; k < Pack::kSize; ++k) {
        const float norm = (__bfloat162float(x[k]) - m) * s;
        const float dnorm = __bfloat162float(dy[k]) * __bfloat162float(weight[k]);
        const float grad = layernorm_input_grad(dnorm, norm, s, mean_dnorm, mean_dnorm_norm);
        dx[k] = __float2bfloat16(__bfloat162float(dx[k]) + grad);
      }
      dx.store(dinp + offset + c);
    }
  }

  __syncthreads();
  float* block_partials = partials + static_cast<size_t>(blockIdx.x) * 2 * C;
  for (int j = threadIdx.x; j < 2 * C; j += blockDim.x) {
    float total = 0.0f;
    for (int v = 0; v < kBackwardWarps; ++v) total += column_sums[static_cast<size_t>(v) * 2 * C + j];
    block_partials[j] = total;
  }
}

// Column j of [dw | db] (2C columns): kReduceSlices threads each add every
// kReduceSlices-th block's partial, then one adds the slices in order.
__global__ void layernorm_backward_params_kernel(bf16* dw, bf16* db, const float* partials, int blocks, int C) {
  __shared__ float slice_sums[kReduceSlices][kReduceColumns];
  const int j = blockIdx.x * kReduceColumns + threadIdx.x;
  float sum = 0.0f;
  if (j < 2 * C) {
    for (int g = threadIdx.y; g < blocks; g += kReduceSlices) sum += partials[static_cast<size_t>(g) * 2 * C + j];
  }
  slice_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || j >= 2 * C) return;
  float total = 0.0f;
  for (int slice = 0; slice < kReduceSlices; ++slice) total += slice_sums[slice][threadIdx.x];
  bf16* target = j < C ? dw + j : db + (j - C);
  *target = __float2bfloat16(__bfloat162float(*target) + total);
}

}  // namespace

void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w, const bf16* b, int N, int C,
                       cudaStream_t stream) {
  check_channels(C, "layernorm_forward: C must be a positive multiple of 8");
  if (N == 0) return;
  layernorm_forward_kernel<<<ceil_div(N, kForwardWarps), kForwardWarps * kWarpSize, 0, stream>>>(out, mean, rstd, inp,
                                                                                                  w, b, N, C);
  EMIX_CUDA_CHECK_LAUNCH();
}

void residual_layernorm_forward(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a, const bf16* b,
                                const bf16* w, const bf16* bias, int N, int C, cudaStream_t stream) {
  check_channels(C, "residual_layernorm_forward: C must be a positive multiple of 8");
  if (N == 0) return;
  residual_layernorm_forward_kernel<<<ceil_div(N, kForwardWarps), kForwardWarps * kWarpSize, 0, stream>>>(
      residual, out, mean, rstd, a, b, w, bias, N, C);
  EMIX_CUDA_CHECK_LAUNCH();
}

size_t layernorm_backward_scratch_floats(int N, int C) {
  if (N == 0) return 0;
  return static_cast<size_t>(backward_blocks(N)) * 2 * static_cast<size_t>(C);
}

void layernorm_backward(bf16* dinp, bf16* dw, bf16* db, float* scratch, const bf16* dout, const bf16* inp,
                        const bf16* w, const float* mean, const float* rstd, int N, int C, cudaStream_t stream) {
  check_channels(C, "layernorm_backward: C must be a positive multiple of 8");
  if (N == 0) return;
  const size_t shared_bytes = static_cast<size_t>(kBackwardWarps) * 2 * C * sizeof(float);
  constexpr size_t kDefaultSharedBytes = 48 * 1024;
  if (shared_bytes > kDefaultSharedBytes) {
    int device = 0;
    int max_shared = 0;
    EMIX_CUDA_CHECK(cudaGetDevice(&device));
    EMIX_CUDA_CHECK(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (shared_bytes > static_cast<size_t>(max_shared))
      fail_cuda(cudaErrorInvalidValue, "layernorm_backward: C too large for the column sums in shared memory",
                __FILE__, __LINE__);
    EMIX_CUDA_CHECK(cudaFuncSetAttribute(layernorm_backward_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shared_bytes)));
  }
  const int blocks = backward_blocks(N);
  layernorm_backward_rows_kernel<<<blocks, kBackwardWarps * kWarpSize, shared_bytes, stream>>>(
      dinp, scratch, dout, inp, w, mean, rstd, N, C, backward_rows_per_block(N));
  EMIX_CUDA_CHECK_LAUNCH();
  layernorm_backward_params_kernel<<<ceil_div(2 * C, kReduceColumns), dim3(kReduceColumns, kReduceSlices), 0,
                                     stream>>>(dw, db, scratch, blocks, C);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
