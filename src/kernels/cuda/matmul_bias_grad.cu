// Bias gradient dbias[c] += Σ_n dout[n, c] over a row-major [N, OC] bf16
// matrix, deterministic (no atomics, every sum in an order fixed by N and OC):
// - stage one: the rows are dealt to a number of chunks that depends only on
//   N; a block of 32 × 8 threads covers one chunk and 32·kWidth channels.
//   Each lane owns kWidth adjacent channels (kWidth = 8: one 16-byte load per
//   row, a warp reading 512 contiguous bytes), each of the 8 warps every 8th
//   row of the chunk; the warps' fp32 sums are then added in warp order
//   through shared memory into the chunk's partial sums (scratch).
// - stage two: one thread per channel adds the chunks' partial sums in chunk
//   order and adds the total into the bf16 dbias.
#include "kernels/cuda/matmul_bias_grad.cuh"

#include <algorithm>

namespace emix::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerChunk = 32;  // at least, so that a chunk's loads are worth a block
constexpr int kMaxChunks = 256;    // bounds the scratch and stage two's sums

int chunk_count(int N) { return std::clamp(ceil_div(N, kRowsPerChunk), 1, kMaxChunks); }

template <int kWidth>
__device__ __forceinline__ void load_as_floats(float (&out)[kWidth], const bf16* address) {
  if constexpr (kWidth == Packed<bf16>::kSize) {
    const Packed<bf16> packed = Packed<bf16>::load_readonly(address);
    for (int i = 0; i < kWidth; ++i) out[i] = __bfloat162float(packed[i]);
  } else {
    for (int i = 0; i < kWidth; ++i) out[i] = __bfloat162float(address[i]);
  }
}

// partial[chunk, c] = Σ over the chunk's rows n of dout[n, c]; chunk = blockIdx.y.
template <int kWidth>
__global__ void __launch_bounds__(32 * kWarps)
    bias_grad_partial_kernel(float* partial, const bf16* dout, int N, int OC) {
  constexpr int kTileChannels = 32 * kWidth;
  __shared__ float warp_sums[kWarps][kTileChannels];
  const int lane = threadIdx.x;
  const int warp = threadIdx.y;
  const int tile_begin = blockIdx.x * kTileChannels;
  const int channel = tile_begin + lane * kWidth;  // OC is a multiple of kWidth

  float sums[kWidth] = {};
  if (channel < OC) {
    for (int n = blockIdx.y * kWarps + warp; n < N; n += gridDim.y * kWarps) {
      float values[kWidth];
      load_as_floats<kWidth>(values, dout + static_cast<size_t>(n) * OC + channel);
      for (int i = 0; i < kWidth; ++i) sums[i] += values[i];
    }
  }
  for (int i = 0; i < kWidth; ++i) warp_sums[warp][lane * kWidth + i] = sums[i];
  __syncthreads();

  for (int i = warp * 32 + lane; i < kTileChannels; i += 32 * kWarps) {
    if (tile_begin + i >= OC) break;
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][i];
    partial[static_cast<size_t>(blockIdx.y) * OC + tile_begin + i] = total;
  }
}

__global__ void bias_grad_finish_kernel(bf16* dbias, const float* partial, int chunks, int OC) {
  const int channel = blockIdx.x * blockDim.x + threadIdx.x;
  if (channel >= OC) return;
  float total = 0.0f;
  for (int chunk = 0; chunk < chunks; ++chunk) total += partial[static_cast<size_t>(chunk) * OC + channel];
  dbias[channel] = __float2bfloat16(__bfloat162float(dbias[channel]) + total);
}

}  // namespace

size_t bias_grad_scratch_floats(int N, int OC) { return static_cast<size_t>(chunk_count(N)) * OC; }

void bias_grad_accumulate(bf16* dbias, float* scratch, const bf16* dout, int N, int OC, cudaStream_t stream) {
  if (OC <= 0) return;
  const int chunks = chunk_count(N);
  const dim3 block(32, kWarps);
  constexpr int kVector = Packed<bf16>::kSize;
  const bool vectorizable = OC % kVector == 0 && reinterpret_cast<uintptr_t>(dout) % 16 == 0;
  if (vectorizable) {
    const dim3 grid(ceil_div(OC, 32 * kVector), chunks);
    bias_grad_partial_kernel<kVector><<<grid, block, 0, stream>>>(scratch, dout, N, OC);
  } else {
    const dim3 grid(ceil_div(OC, 32), chunks);
    bias_grad_partial_kernel<1><<<grid, block, 0, stream>>>(scratch, dout, N, OC);
  }
  EMIX_CUDA_CHECK_LAUNCH();
  constexpr int kThreads = 256;
  bias_grad_finish_kernel<<<ceil_div(OC, kThreads), kThreads, 0, stream>>>(dbias, scratch, chunks, OC);
  EMIX_CUDA_CHECK_LAUNCH();
}

}  // namespace emix::cuda
