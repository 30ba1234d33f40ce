// Our own causal self-attention (the reference and the fallback for cuDNN's):
// the math of kernels/cpu/attention.cpp, the products through cuBLASLt
// (Matmul::batched, which caches their descriptors and algorithms).
// Forward: q, k, v are split out of qkv [B,T,3C] into head-major
// [B,NH,T,hs] copies (one thread per 8 channels, 16-byte loads and stores);
// scores = q·kᵀ is one strided-batched bf16 product over the B·NH heads with
// fp32 output; a causal softmax (one warp per row (b,h,t), fp32) writes the
// bf16 probabilities att [B,NH,T,T] (0 above the diagonal) into `saved`;
// y = att·v is a second batched product (fp32 output), and merging the heads
// back into out [B,T,C] rounds it to bf16 once.
// Backward: datt = dy·vᵀ and dv = attᵀ·dy (batched products); the softmax
// backward (one warp per row) gives dscore = att ⊙ (datt − Σ att⊙datt)·scale,
// 0 above the diagonal; dq = dscore·k and dk = dscoreᵀ·q; dq, dk, dv (fp32)
// are merged back into dqkv [B,T,3C]. Every step is deterministic: no
// atomics, and each batched product runs the one algorithm cached for its
// shape, which sums in a fixed order.
#include <cmath>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/growing_buffer.cuh"
#include "kernels/cuda/matmul.cuh"

namespace emix::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
using Pack = Packed<bf16>;

// dst [B,NH,T,hs] from the (b,t,h·hs + d) elements of src, whose rows (b,t)
// are src_row_stride apart: one thread per 8 consecutive channels.
__global__ void split_heads_kernel(bf16* dst, const bf16* src, int64_t src_row_stride, int B, int T, int NH, int hs) {
  const int packs_per_head = hs / Pack::kSize;
  const int64_t total = static_cast<int64_t>(B) * NH * T * packs_per_head;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int d = static_cast<int>(i % packs_per_head) * Pack::kSize;
  const int64_t row = i / packs_per_head;  // (b, h, t)
  const int t = static_cast<int>(row % T);
  const int64_t bh = row / T;
  const int h = static_cast<int>(bh % NH);
  const int64_t b = bh / NH;
  Pack::load_readonly(src + (b * T + t) * src_row_stride + h * hs + d).store(dst + row * hs + d);
}

// The inverse, from fp32 heads [B,NH,T,hs] into bf16 rows of dst, rounding.
__global__ void merge_heads_kernel(bf16* dst, int64_t dst_row_stride, const float* src, int B, int T, int NH, int hs) {
  const int packs_per_head = hs / Pack::kSize;
  const int64_t total = static_cast<int64_t>(B) * NH * T * packs_per_head;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int d = static_cast<int>(i % packs_per_head) * Pack::kSize;
  const int64_t row = i / packs_per_head;
  const int t = static_cast<int>(row % T);
  const int64_t bh = row / T;
  const int h = static_cast<int>(bh % NH);
  const int64_t b = bh / NH;
  const float* from = src + row * hs + d;
  const Packed<float> low = Packed<float>::load_readonly(from);
  const Packed<float> high = Packed<float>::load_readonly(from + Packed<float>::kSize);
  Pack out;
  for (int j = 0; j < Packed<float>::kSize; ++j) {
    out[j] = __float2bfloat16(low[j]);
    out[j + Packed<float>::kSize] = __float2bfloat16(high[j]);
  }
  out.store(dst + (b * T + t) * dst_row_stride + h * hs + d);
}

// att[row, t2] = exp(s[t2]·scale − max) / Σ for t2 ≤ t, 0 beyond; rows are
// (b,h,t) of T scores, one warp each, lanes striding over t2.
__global__ void causal_softmax_forward_kernel(bf16* att, const float* scores, int rows, int T, float scale) {
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int t = row % T;
  const float* s = scores + static_cast<int64_t>(row) * T;
  bf16* p = att + static_cast<int64_t>(row) * T;

  float max_score = -INFINITY;
  for (int t2 = lane; t2 <= t; t2 += 32) max_score = fmaxf(max_score, s[t2] * scale);
  max_score = warp_max(max_score);
  float sum = 0.0f;
  for (int t2 = lane; t2 <= t; t2 += 32) sum += expf(s[t2] * scale - max_score);
  const float inv_sum = 1.0f / warp_sum(sum);
  for (int t2 = lane; t2 < T; t2 += 32) {
    p[t2] = __float2bfloat16(t2 <= t ? expf(s[t2] * scale - max_score) * inv_sum : 0.0f);
  }
}

// dscore[row, t2] = att·(datt − Σ_t2' att·datt)·scale for t2 ≤ t, 0 beyond;
// one warp per row (b,h,t).
__global__ void causal_softmax_backward_kernel(bf16* dscore, const bf16* att, const float* datt, int rows, int T,
                                               float scale) {
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int t = row % T;
  const int64_t first = static_cast<int64_t>(row) * T;
  float datt_dot_att = 0.0f;
  for (int t2 = lane; t2 <= t; t2 += 32) datt_dot_att += __bfloat162float(att[first + t2]) * datt[first + t2];
  datt_dot_att = warp_sum(datt_dot_att);
  for (int t2 = lane; t2 < T; t2 += 32) {
    const float d = t2 <= t ? __bfloat162float(att[first + t2]) * (datt[first + t2] - datt_dot_att) * scale : 0.0f;
    dscore[first + t2] = __float2bfloat16(d);
  }
}

class ReferenceAttention final : public Attention {
 public:
  ReferenceAttention() = default;
  ReferenceAttention(const ReferenceAttention&) = delete;
  ReferenceAttention& operator=(const ReferenceAttention&) = delete;

  size_t saved_bytes(int B, int T, int C, int NH) const override {
    (void)C;
    return static_cast<size_t>(B) * NH * T * T * sizeof(bf16);
  }
  // q, k, v, dy (bf16), scores or their gradient (fp32), the softmax
  // backward's output (bf16) and the three head outputs (fp32), as the
  // calls below take them.
  size_t scratch_bytes(int B, int T, int C, int NH) const override {
    const size_t head_elements = static_cast<size_t>(B) * T * C;
    const size_t score_elements = static_cast<size_t>(B) * NH * T * T;
    return 4 * head_elements * sizeof(bf16) + score_elements * (sizeof(float) + sizeof(bf16)) +
           3 * head_elements * sizeof(float);
  }

  void forward(bf16* out, void* saved, const bf16* qkv, int B, int T, int C, int NH, cudaStream_t stream) override {
    const Shape s = shape(B, T, C, NH);
    bf16* q = heads_.get(4 * s.head_elements, stream);
    bf16* k = q + s.head_elements;
    bf16* v = k + s.head_elements;
    float* scores = scores_.get(s.score_elements, stream);
    float* y = head_outputs_.get(3 * s.head_elements, stream);
    bf16* att = static_cast<bf16*>(saved);

    split_qkv(q, k, v, qkv, s, stream);
    // scores (row-major [T,T] per head) = q·kᵀ; column-major: kᵀ·q.
    batched_product(true, false, T, T, s.hs, k, s.hs, s.head_stride, q, s.hs, s.head_stride, scores, T,
                    s.score_stride, s.batch, stream);
    const int rows = s.batch * T;
    causal_softmax_forward_kernel<<<ceil_div(rows, kWarpsPerBlock), kThreads, 0, stream>>>(att, scores, rows, T,
                                                                                           s.scale);
    EMIX_CUDA_CHECK_LAUNCH();
    // y (row-major [T,hs]) = att·v; column-major: v·att.
    batched_product(false, false, s.hs, T, T, v, s.hs, s.head_stride, att, T, s.score_stride, y, s.hs,
                    s.head_stride, s.batch, stream);
    merge_heads(out, C, y, s, stream);
  }

  void backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const void* saved, int B, int T, int C,
                int NH, cudaStream_t stream) override {
    (void)out;
    const Shape s = shape(B, T, C, NH);
    bf16* q = heads_.get(4 * s.head_elements, stream);
    bf16* k = q + s.head_elements;
    bf16* v = k + s.head_elements;
    bf16* dy = v + s.head_elements;
    float* datt = scores_.get(s.score_elements, stream);
    bf16* dscore = dscores_.get(s.score_elements, stream);
    float* dq = head_outputs_.get(3 * s.head_elements, stream);
    float* dk = dq + s.head_elements;
    float* dv = dk + s.head_elements;
    const bf16* att = static_cast<const bf16*>(saved);

    split_qkv(q, k, v, qkv, s, stream);
    split_heads(dy, dout, C, s, stream);
    // datt (row-major [T,T]) = dy·vᵀ; column-major: vᵀ·dy.
    batched_product(true, false, T, T, s.hs, v, s.hs, s.head_stride, dy, s.hs, s.head_stride, datt, T,
                    s.score_stride, s.batch, stream);
    // dv (row-major [T,hs]) = attᵀ·dy; column-major: dy·attᵀ.
    batched_product(false, true, s.hs, T, T, dy, s.hs, s.head_stride, att, T, s.score_stride, dv, s.hs,
                    s.head_stride, s.batch, stream);
    const int rows = s.batch * T;
    causal_softmax_backward_kernel<<<ceil_div(rows, kWarpsPerBlock), kThreads, 0, stream>>>(dscore, att, datt, rows, T,
                                                                                            s.scale);
    EMIX_CUDA_CHECK_LAUNCH();
    // dq (row-major [T,hs]) = dscore·k; column-major: k·dscore.
    batched_product(false, false, s.hs, T, T, k, s.hs, s.head_stride, dscore, T, s.score_stride, dq, s.hs,
                    s.head_stride, s.batch, stream);
    // dk (row-major [T,hs]) = dscoreᵀ·q; column-major: q·dscoreᵀ.
    batched_product(false, true, s.hs, T, T, q, s.hs, s.head_stride, dscore, T, s.score_stride, dk, s.hs,
                    s.head_stride, s.batch, stream);
    const int64_t row_stride = 3 * static_cast<int64_t>(C);
    merge_heads(dqkv, row_stride, dq, s, stream);
    merge_heads(dqkv + C, row_stride, dk, s, stream);
    merge_heads(dqkv + 2 * C, row_stride, dv, s, stream);
  }

 private:
  struct Shape {
    int B, T, C, NH, hs, batch;
    int64_t head_stride, score_stride;  // elements between heads
    size_t head_elements, score_elements;
    float scale;
  };

  static Shape shape(int B, int T, int C, int NH) {
    if (B <= 0 || T <= 0 || NH <= 0 || C % NH != 0 || (C / NH) % Pack::kSize != 0) {
      fail_cuda(cudaErrorInvalidValue, "attention: needs C divisible by NH and a head size C/NH divisible by 8",
                __FILE__, __LINE__);
    }
    Shape s{};
    s.B = B;
    s.T = T;
    s.C = C;
    s.NH = NH;
    s.hs = C / NH;
    s.batch = B * NH;
    s.head_stride = static_cast<int64_t>(T) * s.hs;
    s.score_stride = static_cast<int64_t>(T) * T;
    s.head_elements = static_cast<size_t>(B) * T * C;
    s.score_elements = static_cast<size_t>(s.batch) * T * T;
    s.scale = 1.0f / std::sqrt(static_cast<float>(s.hs));
    return s;
  }

  static void split_heads(bf16* dst, const bf16* src, int64_t src_row_stride, const Shape& s, cudaStream_t stream) {
    const int64_t threads = static_cast<int64_t>(s.head_elements / Pack::kSize);
    split_heads_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(threads, kThreads)), kThreads, 0, stream>>>(
        dst, src, src_row_stride, s.B, s.T, s.NH, s.hs);
    EMIX_CUDA_CHECK_LAUNCH();
  }

  static void split_qkv(bf16* q, bf16* k, bf16* v, const bf16* qkv, const Shape& s, cudaStream_t stream) {
    const int64_t row_stride = 3 * static_cast<int64_t>(s.C);
    split_heads(q, qkv, row_stride, s, stream);
    split_heads(k, qkv + s.C, row_stride, s, stream);
    split_heads(v, qkv + 2 * s.C, row_stride, s, stream);
  }

  static void merge_heads(bf16* dst, int64_t dst_row_stride, const float* src, const Shape& s, cudaStream_t stream) {
    const int64_t threads = static_cast<int64_t>(s.head_elements / Pack::kSize);
    merge_heads_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(threads, kThreads)), kThreads, 0, stream>>>(
        dst, dst_row_stride, src, s.B, s.T, s.NH, s.hs);
    EMIX_CUDA_CHECK_LAUNCH();
  }

  // C = op(A)·op(B) per head, column-major (cuBLASLt's view of our row-major
  // matrices is their transpose): bf16 operands, fp32 accumulation and output.
  void batched_product(bool transpose_a, bool transpose_b, int m, int n, int k, const bf16* a, int64_t lda,
                       int64_t stride_a, const bf16* b, int64_t ldb, int64_t stride_b, float* c, int64_t ldc,
                       int64_t stride_c, int batch, cudaStream_t stream) {
    const Matmul::Batched product{transpose_a, transpose_b, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c,
                                  batch};
    matmul_.batched(product, a, b, c, stream);
  }

  Matmul matmul_;
  GrowingBuffer<bf16> heads_;          // q, k, v and dy, head-major
  GrowingBuffer<float> scores_;        // scores (forward) or datt (backward)
  GrowingBuffer<bf16> dscores_;        // the softmax backward's output
  GrowingBuffer<float> head_outputs_;  // y (forward) or dq, dk, dv (backward)
};

}  // namespace

std::unique_ptr<Attention> make_reference_attention() { return std::make_unique<ReferenceAttention>(); }

}  // namespace emix::cuda
