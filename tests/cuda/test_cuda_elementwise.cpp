// The CUDA encoder, LayerNorm, GELU and global-norm kernels against the CPU
// backend (fp32, on the same bf16-rounded inputs), on awkward sizes: B·T odd,
// C a multiple of 8 but not of 32 or 128, n not a multiple of 8, a vocabulary
// of 1001 with repeated tokens. Outputs are poisoned first, so an element a
// kernel did not write shows up as NaN.
//
// Error bounds. A bf16 output rounded once from an fp32 value x is within
// half an ulp, 2^-8·|x|, of it; x differs from the CPU's fp32 result only by
// summation order and libm, a small absolute amount `slack` stated per test.
// So each element must satisfy |gpu − cpu| ≤ 2^-8·|cpu| + slack. Where GPU
// and CPU do the very same fp32 operation (a + b) the bf16 results must match
// bit for bit. fp32 statistics (mean, rstd, Σx²) are bounded by relative
// error 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "cuda/cuda_test_support.hpp"
#include "kernels/cpu/encoder.hpp"
#include "kernels/cpu/gelu.hpp"
#include "kernels/cpu/layernorm.hpp"
#include "kernels/cpu/residual.hpp"
#include "kernels/cuda/encoder.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/global_norm.cuh"
#include "kernels/cuda/layernorm.cuh"

namespace emix::test {
namespace {

constexpr float kBf16HalfUlp = 1.0f / 256.0f;  // 2^-8: half an ulp of bf16, relative

std::vector<float> download_floats(const DeviceBuffer<cuda::bf16>& buffer) { return to_float(buffer.download()); }

// Every element within 2^-8·|ref| + slack (and finite), reporting the first
// few that are not.
void expect_bf16_close(const std::vector<float>& got, const std::vector<float>& ref, float slack, const char* what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float bound = kBf16HalfUlp * std::fabs(ref[i]) + slack;
    if (std::isfinite(got[i]) && std::fabs(got[i] - ref[i]) <= bound) continue;
    if (++bad <= 5) ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", expected " << ref[i] << " ± " << bound;
  }
  EXPECT_EQ(bad, 0u) << what << ": elements out of bounds";
}

bool same_bits(const std::vector<cuda::bf16>& a, const std::vector<cuda::bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(cuda::bf16)) == 0;
}

// Random tokens in [0, vocab) where every third position draws from only
// five tokens, so that many positions share a token; the last position
// holds the last token id.
std::vector<int32_t> repeating_tokens(size_t n, int vocab, uint64_t seed) {
  std::vector<int32_t> tokens = random_tokens(n, vocab, seed);
  for (size_t i = 0; i < n; i += 3) tokens[i] = static_cast<int32_t>((i / 3) % 5);
  tokens.back() = vocab - 1;
  return tokens;
}

// ---------------------------------------------------------------- encoder

void check_encoder_forward(int B, int T, int C, int vocab) {
  const std::vector<float> wte = bf16_rounded(random_floats(size_t(vocab) * C, 1));
  const std::vector<float> wpe = bf16_rounded(random_floats(size_t(T) * C, 2));
  const std::vector<int32_t> tokens = repeating_tokens(size_t(B) * T, vocab, 3);
  std::vector<float> ref(size_t(B) * T * C);
  cpu::encoder_forward(ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);

  DeviceBuffer<cuda::bf16> d_wte(to_bf16(wte)), d_wpe(to_bf16(wpe)), d_out(ref.size());
  DeviceBuffer<int32_t> d_tokens(tokens);
  d_out.poison();
  cuda::encoder_forward(d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C, nullptr);
  // The same fp32 addition on both sides: bit-identical once rounded.
  EXPECT_TRUE(same_bits(d_out.download(), to_bf16(ref))) << "C=" << C;
}

TEST(CudaEncoder, ForwardMatchesCpuBitForBit) {
  EMIX_REQUIRE_GPU();
  check_encoder_forward(3, 37, 72, 1001);
  check_encoder_forward(3, 37, 200, 1001);
}

TEST(CudaEncoder, RejectsChannelsNotMultipleOf8) {
  EMIX_REQUIRE_GPU();
  DeviceBuffer<cuda::bf16> buffer(64);
  DeviceBuffer<int32_t> tokens(std::vector<int32_t>{0});
  EXPECT_THROW(cuda::encoder_forward(buffer.get(), tokens.get(), buffer.get(), buffer.get(), 1, 1, 12, nullptr),
               emix::Error);
}

struct EncoderGrads {
  std::vector<cuda::bf16> dwte, dwpe;
};

// dwte and dwpe start from the given (non-zero) values.
EncoderGrads run_encoder_backward(cuda::EncoderBackward& backward, const std::vector<float>& dwte_init,
                                  const std::vector<float>& dwpe_init, const std::vector<float>& dout,
                                  const std::vector<int32_t>& tokens, int B, int T, int C) {
  DeviceBuffer<cuda::bf16> d_dwte(to_bf16(dwte_init)), d_dwpe(to_bf16(dwpe_init)), d_dout(to_bf16(dout));
  backward.run(d_dwte.get(), d_dwpe.get(), d_dout.get(), tokens.data(), B, T, C, nullptr);
  return {d_dwte.download(), d_dwpe.download()};
}

void check_encoder_backward(int B, int T, int C, int vocab) {
  const std::vector<float> dout = bf16_rounded(random_floats(size_t(B) * T * C, 11));
  const std::vector<float> dwte_init = bf16_rounded(random_floats(size_t(vocab) * C, 12));
  const std::vector<float> dwpe_init = bf16_rounded(random_floats(size_t(T) * C, 13));
  const std::vector<int32_t> tokens = repeating_tokens(size_t(B) * T, vocab, 14);
  std::vector<float> dwte_ref = dwte_init, dwpe_ref = dwpe_init;
  cpu::encoder_backward(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), B, T, C);

  cuda::EncoderBackward backward;
  const EncoderGrads got = run_encoder_backward(backward, dwte_init, dwpe_init, dout, tokens, B, T, C);
  // Sums of at most B·T terms of magnitude ≤ 1 in a different fp32 order.
  expect_bf16_close(to_float(got.dwte), dwte_ref, 1e-4f, "dwte");
  expect_bf16_close(to_float(got.dwpe), dwpe_ref, 1e-4f, "dwpe");
  // Rows of tokens that do not occur keep their bits.
  std::vector<bool> seen(vocab, false);
  for (int32_t t : tokens) seen[t] = true;
  const std::vector<cuda::bf16> init_bits = to_bf16(dwte_init);
  size_t changed = 0;
  for (int v = 0; v < vocab; ++v) {
    if (seen[v]) continue;
    changed += std::memcmp(&got.dwte[size_t(v) * C], &init_bits[size_t(v) * C], C * sizeof(cuda::bf16)) != 0;
  }
  EXPECT_EQ(changed, 0u) << "rows of absent tokens were modified";
}

TEST(CudaEncoder, BackwardMatchesCpu) {
  EMIX_REQUIRE_GPU();
  check_encoder_backward(3, 37, 72, 1001);
  check_encoder_backward(3, 37, 200, 1001);
}

TEST(CudaEncoder, BackwardIsDeterministicAndReusesScratch) {
  EMIX_REQUIRE_GPU();
  const int B = 3, T = 37, C = 72, vocab = 1001;
  const std::vector<float> dout = bf16_rounded(random_floats(size_t(B) * T * C, 21));
  const std::vector<float> dwte_init = bf16_rounded(random_floats(size_t(vocab) * C, 22));
  const std::vector<float> dwpe_init = bf16_rounded(random_floats(size_t(T) * C, 23));
  const std::vector<int32_t> tokens = repeating_tokens(size_t(B) * T, vocab, 24);

  cuda::EncoderBackward backward;
  const EncoderGrads first = run_encoder_backward(backward, dwte_init, dwpe_init, dout, tokens, B, T, C);
  // A larger batch through the same object grows its scratch...
  const int B2 = 7;
  const std::vector<float> dout2 = bf16_rounded(random_floats(size_t(B2) * T * C, 25));
  run_encoder_backward(backward, dwte_init, dwpe_init, dout2, repeating_tokens(size_t(B2) * T, vocab, 26), B2, T, C);
  // ...and the first call again, and on a fresh object, gives the same bits.
  const EncoderGrads again = run_encoder_backward(backward, dwte_init, dwpe_init, dout, tokens, B, T, C);
  cuda::EncoderBackward fresh;
  const EncoderGrads fresh_run = run_encoder_backward(fresh, dwte_init, dwpe_init, dout, tokens, B, T, C);
  EXPECT_TRUE(same_bits(first.dwte, again.dwte));
  EXPECT_TRUE(same_bits(first.dwpe, again.dwpe));
  EXPECT_TRUE(same_bits(first.dwte, fresh_run.dwte));
  EXPECT_TRUE(same_bits(first.dwpe, fresh_run.dwpe));
}

// -------------------------------------------------------------- layernorm

struct LayerNormInputs {
  std::vector<float> inp, w, b;
};

LayerNormInputs layernorm_inputs(int N, int C, uint64_t seed) {
  // Weights around 1 and biases around 0, as after GPT-2's initialization
  // and some training.
  std::vector<float> w = random_floats(C, seed + 1, 0.5f);
  for (float& v : w) v += 1.0f;
  return {bf16_rounded(random_floats(size_t(N) * C, seed)), bf16_rounded(w),
          bf16_rounded(random_floats(C, seed + 2, 0.2f))};
}

void check_layernorm_forward(int N, int C) {
  const LayerNormInputs in = layernorm_inputs(N, C, 31);
  std::vector<float> out_ref(size_t(N) * C), mean_ref(N), rstd_ref(N);
  cpu::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), in.inp.data(), in.w.data(), in.b.data(), N,
                         C);

  DeviceBuffer<cuda::bf16> d_inp(to_bf16(in.inp)), d_w(to_bf16(in.w)), d_b(to_bf16(in.b)), d_out(out_ref.size());
  DeviceBuffer<float> d_mean(N), d_rstd(N);
  d_out.poison();
  d_mean.poison();
  d_rstd.poison();
  cuda::layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_inp.get(), d_w.get(), d_b.get(), N, C, nullptr);
  // |norm·w + b| ≲ 3 and rstd agrees to ~1e-6 relative: fp32 differences well under 5e-5.
  expect_bf16_close(download_floats(d_out), out_ref, 5e-5f, "layernorm out");
  EXPECT_LE(relative_error(d_mean.download(), mean_ref), 1e-5);
  EXPECT_LE(relative_error(d_rstd.download(), rstd_ref), 1e-5);
}

TEST(CudaLayerNorm, ForwardMatchesCpu) {
  EMIX_REQUIRE_GPU();
  check_layernorm_forward(3 * 37, 72);
  check_layernorm_forward(3 * 37, 200);
}

TEST(CudaLayerNorm, ResidualForwardMatchesCpu) {
  EMIX_REQUIRE_GPU();
  const int N = 3 * 37, C = 200;
  const LayerNormInputs in = layernorm_inputs(N, C, 41);
  const std::vector<float> a = in.inp;
  const std::vector<float> b = bf16_rounded(random_floats(size_t(N) * C, 44));
  std::vector<float> residual_ref(a.size());
  cpu::residual_forward(residual_ref.data(), a.data(), b.data(), int64_t(a.size()));
  // The GPU normalizes the stored, bf16-rounded residual.
  const std::vector<cuda::bf16> residual_bits = to_bf16(residual_ref);
  const std::vector<float> residual_rounded = to_float(residual_bits);
  std::vector<float> out_ref(a.size()), mean_ref(N), rstd_ref(N);
  cpu::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), residual_rounded.data(), in.w.data(),
                         in.b.data(), N, C);

  DeviceBuffer<cuda::bf16> d_a(to_bf16(a)), d_b(to_bf16(b)), d_w(to_bf16(in.w)), d_bias(to_bf16(in.b));
  DeviceBuffer<cuda::bf16> d_residual(a.size()), d_out(a.size());
  DeviceBuffer<float> d_mean(N), d_rstd(N);
  d_residual.poison();
  d_out.poison();
  d_mean.poison();
  d_rstd.poison();
  cuda::residual_layernorm_forward(d_residual.get(), d_out.get(), d_mean.get(), d_rstd.get(), d_a.get(), d_b.get(),
                                   d_w.get(), d_bias.get(), N, C, nullptr);
  EXPECT_TRUE(same_bits(d_residual.download(), residual_bits)) << "residual = a + b, rounded once";
  expect_bf16_close(download_floats(d_out), out_ref, 5e-5f, "residual layernorm out");
  EXPECT_LE(relative_error(d_mean.download(), mean_ref), 1e-5);
  EXPECT_LE(relative_error(d_rstd.download(), rstd_ref), 1e-5);
}

TEST(CudaLayerNorm, RejectsChannelsNotMultipleOf8) {
  EMIX_REQUIRE_GPU();
  DeviceBuffer<cuda::bf16> buffer(64);
  DeviceBuffer<float> stats(4);
  EXPECT_THROW(cuda::layernorm_forward(buffer.get(), stats.get(), stats.get(), buffer.get(), buffer.get(), buffer.get(),
                                       1, 12, nullptr),
               emix::Error);
  EXPECT_THROW(cuda::layernorm_backward(buffer.get(), buffer.get(), buffer.get(), stats.get(), buffer.get(),
                                        buffer.get(), buffer.get(), stats.get(), stats.get(), 1, 12, nullptr),
               emix::Error);
}

struct LayerNormBackwardCase {
  int N, C;
  LayerNormInputs in;
  std::vector<float> mean, rstd, dout, dinp_init, dw_init, db_init;

  LayerNormBackwardCase(int rows, int channels) : N(rows), C(channels), in(layernorm_inputs(rows, channels, 51)) {
    std::vector<float> out(size_t(N) * C);
    mean.resize(N);
    rstd.resize(N);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), in.inp.data(), in.w.data(), in.b.data(), N, C);
    dout = bf16_rounded(random_floats(size_t(N) * C, 55));
    // The gradients accumulate: start them away from zero.
    dinp_init = bf16_rounded(random_floats(size_t(N) * C, 56));
    dw_init = bf16_rounded(random_floats(C, 57));
    db_init = bf16_rounded(random_floats(C, 58));
  }

  struct Result {
    std::vector<cuda::bf16> dinp, dw, db;
  };

  // Both the GPU and the CPU use the CPU forward's mean and rstd.
  Result run_gpu() const {
    DeviceBuffer<cuda::bf16> d_dinp(to_bf16(dinp_init)), d_dw(to_bf16(dw_init)), d_db(to_bf16(db_init));
    DeviceBuffer<cuda::bf16> d_dout(to_bf16(dout)), d_inp(to_bf16(in.inp)), d_w(to_bf16(in.w));
    DeviceBuffer<float> d_mean(mean), d_rstd(rstd), d_scratch(cuda::layernorm_backward_scratch_floats(N, C));
    d_scratch.poison();  // partial sums read before being written would turn dw and db into NaN
    cuda::layernorm_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_scratch.get(), d_dout.get(), d_inp.get(),
                             d_w.get(), d_mean.get(), d_rstd.get(), N, C, nullptr);
    return {d_dinp.download(), d_dw.download(), d_db.download()};
  }
};

void check_layernorm_backward(int N, int C) {
  SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C));
  const LayerNormBackwardCase tc(N, C);
  std::vector<float> dinp_ref = tc.dinp_init, dw_ref = tc.dw_init, db_ref = tc.db_init;
  cpu::layernorm_backward(dinp_ref.data(), dw_ref.data(), db_ref.data(), tc.dout.data(), tc.in.inp.data(),
                          tc.in.w.data(), tc.mean.data(), tc.rstd.data(), N, C);
  const LayerNormBackwardCase::Result got = tc.run_gpu();
  // dinp: rstd·(C-term row sums), |values| ≲ 10: fp32 differences < 1e-4.
  expect_bf16_close(to_float(got.dinp), dinp_ref, 1e-4f, "dinp");
  // dw, db: sums over N rows of terms ≲ 2 in a different fp32 order (the
  // CPU's sequential sum dominates): 1e-6 per row.
  const float column_slack = 1e-6f * float(N) + 1e-5f;
  expect_bf16_close(to_float(got.dw), dw_ref, column_slack, "dw");
  expect_bf16_close(to_float(got.db), db_ref, column_slack, "db");
}

TEST(CudaLayerNorm, BackwardAccumulatesLikeCpu) {
  EMIX_REQUIRE_GPU();
  check_layernorm_backward(3 * 37, 72);
  check_layernorm_backward(3 * 37, 200);
  check_layernorm_backward(4099, 200);  // more rows than 4 per block: several rows per warp
  check_layernorm_backward(1, 8);
}

TEST(CudaLayerNorm, BackwardIsDeterministic) {
  EMIX_REQUIRE_GPU();
  const LayerNormBackwardCase tc(4099, 72);
  const LayerNormBackwardCase::Result first = tc.run_gpu();
  const LayerNormBackwardCase::Result second = tc.run_gpu();
  EXPECT_TRUE(same_bits(first.dinp, second.dinp));
  EXPECT_TRUE(same_bits(first.dw, second.dw));
  EXPECT_TRUE(same_bits(first.db, second.db));
}

// ------------------------------------------------------------------- gelu

void check_gelu(size_t n) {
  SCOPED_TRACE("n=" + std::to_string(n));
  // Scale 4 reaches both flat tails and the curved middle.
  const std::vector<float> inp = bf16_rounded(random_floats(n, 61, 4.0f));
  const std::vector<float> dout = bf16_rounded(random_floats(n, 62));
  std::vector<float> out_ref(n), dinp_ref(n);
  cpu::gelu_forward(out_ref.data(), inp.data(), int64_t(n));
  cpu::gelu_backward(dinp_ref.data(), inp.data(), dout.data(), int64_t(n));

  DeviceBuffer<cuda::bf16> d_inp(to_bf16(inp)), d_dout(to_bf16(dout)), d_out(n), d_dinp(n);
  d_out.poison();
  d_dinp.poison();
  cuda::gelu_forward(d_out.get(), d_inp.get(), n, nullptr);
  cuda::gelu_backward(d_dinp.get(), d_inp.get(), d_dout.get(), n, nullptr);
  // tanhf on host and device agree to a few ulp; times |x|/2 ≤ 2: |differences| < 5e-6.
  expect_bf16_close(download_floats(d_out), out_ref, 5e-6f, "gelu out");
  const std::vector<cuda::bf16> dinp = d_dinp.download();
  expect_bf16_close(to_float(dinp), dinp_ref, 5e-6f, "gelu dinp");

  // In place (dinp = dout): the same bits.
  cuda::gelu_backward(d_dout.get(), d_inp.get(), d_dout.get(), n, nullptr);
  EXPECT_TRUE(same_bits(d_dout.download(), dinp)) << "in-place backward";
}

TEST(CudaGelu, MatchesCpuIncludingTail) {
  EMIX_REQUIRE_GPU();
  check_gelu(7);                 // tail only
  check_gelu(1001);              // 125 chunks and a tail of 1
  check_gelu(3 * 37 * 288 + 5);  // B·T·4C plus a tail of 5
}

// ------------------------------------------------------------ global norm

double host_sum_squares(const std::vector<float>& x, size_t begin, size_t n) {
  double sum = 0.0;
  for (size_t i = begin; i < begin + n; ++i) sum += double(x[i]) * x[i];
  return sum;
}

float gpu_sum_squares(const DeviceBuffer<cuda::bf16>& x, size_t begin, size_t n, float initial, bool accumulate) {
  DeviceBuffer<float> out(std::vector<float>{initial}), scratch(cuda::global_norm_scratch_floats());
  scratch.poison();
  cuda::global_norm_squared(out.get(), x.get() + begin, n, scratch.get(), accumulate, nullptr);
  return out.download()[0];
}

TEST(CudaGlobalNorm, MatchesDoubleSumAtAnyAlignment) {
  EMIX_REQUIRE_GPU();
  const size_t n = 3'000'017;
  const std::vector<float> x = bf16_rounded(random_floats(n + 16, 71));
  DeviceBuffer<cuda::bf16> d_x(to_bf16(x));
  // Offsets 1 and 3 start off a 16-byte boundary (head elements), and the
  // lengths leave a tail; small n lie entirely in the head or tail.
  for (size_t begin : {size_t(0), size_t(1), size_t(3)}) {
    for (size_t count : {n, size_t(1), size_t(5), size_t(13), size_t(20), size_t(1001)}) {
      const double ref = host_sum_squares(x, begin, count);
      const float got = gpu_sum_squares(d_x, begin, count, NAN, false);  // NaN: the result must overwrite
      EXPECT_LE(std::fabs(got - ref) / ref, 1e-5) << "begin " << begin << " n " << count;
    }
  }
  EXPECT_EQ(gpu_sum_squares(d_x, 1, 0, NAN, false), 0.0f) << "empty buffer";
  EXPECT_EQ(gpu_sum_squares(d_x, 1, 0, 2.5f, true), 2.5f) << "empty buffer, accumulating";
}

TEST(CudaGlobalNorm, AccumulatesAndIsDeterministic) {
  EMIX_REQUIRE_GPU();
  const size_t n = 1'234'567;
  const std::vector<float> x = bf16_rounded(random_floats(n, 81, 0.01f));
  DeviceBuffer<cuda::bf16> d_x(to_bf16(x));
  const double ref = host_sum_squares(x, 0, n);
  const float first = gpu_sum_squares(d_x, 0, n, 0.0f, false);
  const float second = gpu_sum_squares(d_x, 0, n, 0.0f, false);
  EXPECT_EQ(std::memcmp(&first, &second, sizeof(float)), 0) << "two runs differ";
  const float accumulated = gpu_sum_squares(d_x, 0, n, 7.0f, true);
  EXPECT_LE(std::fabs(accumulated - (ref + 7.0)) / (ref + 7.0), 1e-5);
  EXPECT_LE(std::fabs(first - ref) / ref, 1e-5);
}

}  // namespace
}  // namespace emix::test
