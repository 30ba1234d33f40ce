// The cuBLASLt linear layer (kernels/cuda/matmul.cuh) against the CPU backend
// (emix::cpu::matmul_*, gelu_*) run in fp32 on the same bf16-rounded inputs,
// on awkward sizes: N = 111 rows, IC = 200, OC = 72 and 216 (the fused GELU
// epilogues), and IC = 100, OC = 36 (not multiples of 8: the unfused GELU
// path and the scalar bias-gradient kernel).
//
// Error bound, for every output: relative error (‖got − ref‖ / ‖ref‖) below
// 1e-2. The products accumulate in fp32 like the reference, so what remains is
// the bf16 rounding of each output (relative 2⁻⁹ ≈ 2e-3 per element), twice
// where GELU is applied to a stored bf16 value or where dweight/dbias add onto
// a bf16 initial value. The batched products (the reference attention's)
// write fp32: bound 1e-5 there.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_test_support.hpp"
#include "kernels/cpu/gelu.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cuda/matmul.cuh"

namespace emix {
namespace {

using test::DeviceBuffer;
using test::bf16_rounded;
using test::random_floats;
using test::relative_error;
using test::to_bf16;
using test::to_float;

constexpr double kBound = 1e-2;

struct Shape {
  int N, IC, OC;
};

// Host inputs, rounded to bf16 (what the GPU sees) and kept in fp32.
struct LayerInputs {
  std::vector<float> inp, weight, bias;
  LayerInputs(const Shape& s, uint64_t seed)
      : inp(bf16_rounded(random_floats(size_t(s.N) * s.IC, seed, 1.0f))),
        weight(bf16_rounded(random_floats(size_t(s.OC) * s.IC, seed + 1, 0.1f))),
        bias(bf16_rounded(random_floats(s.OC, seed + 2, 0.5f))) {}
};

class MatmulTest : public ::testing::TestWithParam<Shape> {};

void check_forward(const Shape& s, bool with_bias, bool with_gelu) {
  SCOPED_TRACE(testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC << " bias=" << with_bias
                                  << " gelu=" << with_gelu);
  const LayerInputs in(s, 11);
  const size_t n_out = size_t(s.N) * s.OC;
  std::vector<float> pre_ref(n_out), out_ref(n_out);
  cpu::matmul_forward(pre_ref.data(), in.inp.data(), in.weight.data(), with_bias ? in.bias.data() : nullptr, s.N, s.IC,
                      s.OC);
  if (with_gelu) {
    cpu::gelu_forward(out_ref.data(), pre_ref.data(), int64_t(n_out));
  } else {
    out_ref = pre_ref;
  }

  DeviceBuffer<cuda::bf16> inp(to_bf16(in.inp)), weight(to_bf16(in.weight)), bias(to_bf16(in.bias));
  DeviceBuffer<cuda::bf16> out(n_out), pre_gelu(n_out);
  out.poison();
  pre_gelu.poison();
  cuda::Matmul matmul;
  matmul.forward(out.get(), inp.get(), weight.get(), with_bias ? bias.get() : nullptr, s.N, s.IC, s.OC,
                 with_gelu ? pre_gelu.get() : nullptr, nullptr);
  const std::vector<cuda::bf16> first = out.download();
  EXPECT_LT(relative_error(to_float(first), out_ref), kBound);
  if (with_gelu) {
    EXPECT_LT(relative_error(to_float(pre_gelu.download()), pre_ref), kBound);
  }

  // The second call runs the cached plan: the same bits.
  out.poison();
  matmul.forward(out.get(), inp.get(), weight.get(), with_bias ? bias.get() : nullptr, s.N, s.IC, s.OC,
                 with_gelu ? pre_gelu.get() : nullptr, nullptr);
  const std::vector<cuda::bf16> second = out.download();
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), n_out * sizeof(cuda::bf16)));
}

TEST_P(MatmulTest, Forward) {
  EMIX_REQUIRE_GPU();
  check_forward(GetParam(), false, false);
  check_forward(GetParam(), true, false);
}

TEST_P(MatmulTest, ForwardGelu) {
  EMIX_REQUIRE_GPU();
  check_forward(GetParam(), true, true);
  check_forward(GetParam(), false, true);
}

void check_backward(const Shape& s, bool with_bias, bool with_gelu) {
  SCOPED_TRACE(testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC << " bias=" << with_bias
                                  << " gelu=" << with_gelu);
  const LayerInputs in(s, 23);
  const size_t n_inp = size_t(s.N) * s.IC;
  const std::vector<float> dout = bf16_rounded(random_floats(size_t(s.N) * s.OC, 31, 1.0f));
  // Non-zero starting gradients: the kernels must add to them.
  const std::vector<float> dweight_init = bf16_rounded(random_floats(size_t(s.OC) * s.IC, 37, 1.0f));
  const std::vector<float> dbias_init = bf16_rounded(random_floats(s.OC, 41, 4.0f));
  // The layer's input as the GELU of pre_gelu (the MLP's projection).
  const std::vector<float> pre_gelu = bf16_rounded(random_floats(n_inp, 43, 3.0f));

  std::vector<float> dinp_ref(n_inp), dweight_ref = dweight_init, dbias_ref = dbias_init;
  cpu::matmul_backward(dinp_ref.data(), dweight_ref.data(), with_bias ? dbias_ref.data() : nullptr, dout.data(),
                       in.inp.data(), in.weight.data(), s.N, s.IC, s.OC);
  if (with_gelu) cpu::gelu_backward(dinp_ref.data(), pre_gelu.data(), dinp_ref.data(), int64_t(n_inp));

  DeviceBuffer<cuda::bf16> inp(to_bf16(in.inp)), weight(to_bf16(in.weight)), dout_d(to_bf16(dout));
  DeviceBuffer<cuda::bf16> pre_gelu_d(to_bf16(pre_gelu)), dinp(n_inp);
  DeviceBuffer<cuda::bf16> dweight(to_bf16(dweight_init)), dbias(to_bf16(dbias_init));
  dinp.poison();
  cuda::Matmul matmul;
  matmul.backward(dinp.get(), dweight.get(), with_bias ? dbias.get() : nullptr, dout_d.get(), inp.get(), weight.get(),
                  s.N, s.IC, s.OC, with_gelu ? pre_gelu_d.get() : nullptr, nullptr);
  EXPECT_LT(relative_error(to_float(dinp.download()), dinp_ref), kBound);
  EXPECT_LT(relative_error(to_float(dweight.download()), dweight_ref), kBound);
  const std::vector<cuda::bf16> dbias_first = dbias.download();
  if (with_bias) {
    EXPECT_LT(relative_error(to_float(dbias_first), dbias_ref), kBound);
  } else {
    EXPECT_EQ(to_float(dbias_first), dbias_init) << "dbias changed without being asked for";
  }

  // Again from the same starting values: bit-identical gradients (the bias
  // gradient promises determinism; the cached plan is reused).
  const std::vector<cuda::bf16> dinp_first = dinp.download(), dweight_first = dweight.download();
  dinp.poison();
  dweight.upload(to_bf16(dweight_init));
  dbias.upload(to_bf16(dbias_init));
  matmul.backward(dinp.get(), dweight.get(), with_bias ? dbias.get() : nullptr, dout_d.get(), inp.get(), weight.get(),
                  s.N, s.IC, s.OC, with_gelu ? pre_gelu_d.get() : nullptr, nullptr);
  const auto same_bits = [](const std::vector<cuda::bf16>& a, const std::vector<cuda::bf16>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(cuda::bf16)) == 0;
  };
  EXPECT_TRUE(same_bits(dinp.download(), dinp_first));
  EXPECT_TRUE(same_bits(dweight.download(), dweight_first));
  EXPECT_TRUE(same_bits(dbias.download(), dbias_first));
}

TEST_P(MatmulTest, Backward) {
  EMIX_REQUIRE_GPU();
  check_backward(GetParam(), true, false);
  check_backward(GetParam(), false, false);
}

TEST_P(MatmulTest, BackwardGelu) {
  EMIX_REQUIRE_GPU();
  check_backward(GetParam(), true, true);
}

INSTANTIATE_TEST_SUITE_P(AwkwardShapes, MatmulTest,
                         ::testing::Values(Shape{37 * 3, 200, 72}, Shape{37 * 3, 200, 3 * 72}, Shape{37 * 3, 100, 36}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           std::ostringstream name;
                           name << "N" << info.param.N << "_IC" << info.param.IC << "_OC" << info.param.OC;
                           return name.str();
                         });

// Operands that start 16 bytes past an allocation, as slices of a larger
// activation buffer do, after a call with 256-byte aligned ones: the cached
// plans are keyed by alignment, so both must run and agree with the reference.
TEST(MatmulAlignment, OffsetOperands) {
  EMIX_REQUIRE_GPU();
  const Shape s{37 * 3, 200, 72};
  const LayerInputs in(s, 61);
  const size_t n_out = size_t(s.N) * s.OC;
  std::vector<float> out_ref(n_out);
  cpu::matmul_forward(out_ref.data(), in.inp.data(), in.weight.data(), in.bias.data(), s.N, s.IC, s.OC);

  constexpr size_t kOffset = 8;  // bf16 elements: 16 bytes
  const auto shifted = [](const std::vector<float>& x) {
    std::vector<cuda::bf16> padded(kOffset, to_bf16(0.0f));
    const std::vector<cuda::bf16> values = to_bf16(x);
    padded.insert(padded.end(), values.begin(), values.end());
    return padded;
  };
  DeviceBuffer<cuda::bf16> inp(to_bf16(in.inp)), weight(to_bf16(in.weight)), bias(to_bf16(in.bias)), out(n_out);
  DeviceBuffer<cuda::bf16> inp_shifted(shifted(in.inp)), weight_shifted(shifted(in.weight));
  DeviceBuffer<cuda::bf16> bias_shifted(shifted(in.bias)), out_shifted(kOffset + n_out);
  out.poison();
  out_shifted.poison();
  cuda::Matmul matmul;
  matmul.forward(out.get(), inp.get(), weight.get(), bias.get(), s.N, s.IC, s.OC, nullptr, nullptr);
  matmul.forward(out_shifted.get() + kOffset, inp_shifted.get() + kOffset, weight_shifted.get() + kOffset,
                 bias_shifted.get() + kOffset, s.N, s.IC, s.OC, nullptr, nullptr);
  EXPECT_LT(relative_error(to_float(out.download()), out_ref), kBound);
  const std::vector<float> got_shifted = to_float(out_shifted.download());
  EXPECT_LT(relative_error(std::vector<float>(got_shifted.begin() + kOffset, got_shifted.end()), out_ref), kBound);
}

// Matmul::batched, the reference attention's products, for each
// transposition: a batch of 5 column-major products of awkward sizes whose
// members lie apart with a gap (stride larger than a member; C's gaps stay
// poisoned), against a host loop in double. The output is fp32 from bf16
// inputs with fp32 accumulation, so only the order of the sums differs:
// bound 1e-5. A second call gives the same bits.
TEST(MatmulBatched, MatchesAHostLoopForEachTransposition) {
  EMIX_REQUIRE_GPU();
  const int m = 37, n = 29, k = 24, batch = 5;
  const int64_t gap = 8;
  for (const bool transpose_a : {false, true}) {
    for (const bool transpose_b : {false, true}) {
      SCOPED_TRACE(testing::Message() << "transpose_a=" << transpose_a << " transpose_b=" << transpose_b);
      const int64_t lda = transpose_a ? k : m, ldb = transpose_b ? n : k, ldc = m;
      const int64_t stride_a = lda * (transpose_a ? m : k) + gap;
      const int64_t stride_b = ldb * (transpose_b ? k : n) + gap;
      const int64_t stride_c = ldc * n + gap;
      const std::vector<float> a = bf16_rounded(random_floats(size_t(stride_a) * batch, 71));
      const std::vector<float> b = bf16_rounded(random_floats(size_t(stride_b) * batch, 72));
      std::vector<float> expected(size_t(stride_c) * batch);
      std::vector<bool> written(expected.size(), false);
      for (int member = 0; member < batch; ++member) {
        for (int j = 0; j < n; ++j) {
          for (int i = 0; i < m; ++i) {
            double sum = 0.0;
            for (int p = 0; p < k; ++p) {
              const float x = a[member * stride_a + (transpose_a ? p + i * lda : i + p * lda)];
              const float y = b[member * stride_b + (transpose_b ? j + p * ldb : p + j * ldb)];
              sum += double(x) * y;
            }
            expected[member * stride_c + i + j * ldc] = static_cast<float>(sum);
            written[member * stride_c + i + j * ldc] = true;
          }
        }
      }
      DeviceBuffer<cuda::bf16> a_device(to_bf16(a)), b_device(to_bf16(b));
      DeviceBuffer<float> c_device(expected.size());
      c_device.poison();
      const cuda::Matmul::Batched product{transpose_a, transpose_b, m, n, k, lda, ldb, ldc,
                                          stride_a, stride_b, stride_c, batch};
      cuda::Matmul matmul;
      matmul.batched(product, a_device.get(), b_device.get(), c_device.get(), nullptr);
      const std::vector<float> got = c_device.download();
      std::vector<float> got_written, expected_written;
      size_t gaps_touched = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        if (written[i]) {
          got_written.push_back(got[i]);
          expected_written.push_back(expected[i]);
        } else {
          gaps_touched += !std::isnan(got[i]);
        }
      }
      EXPECT_LT(relative_error(got_written, expected_written), 1e-5);
      EXPECT_EQ(gaps_touched, 0u);
      matmul.batched(product, a_device.get(), b_device.get(), c_device.get(), nullptr);
      const std::vector<float> again = c_device.download();
      EXPECT_EQ(std::memcmp(again.data(), got.data(), got.size() * sizeof(float)), 0);
    }
  }
}

// Many rows, so the bias gradient's rows are split over many chunks (and up
// to the chunk limit): the sum must stay within the bound and bit-identical.
TEST(MatmulBiasGrad, ManyRowsDeterministic) {
  EMIX_REQUIRE_GPU();
  for (const Shape s : {Shape{4099, 24, 216}, Shape{20011, 8, 100}}) {
    SCOPED_TRACE(testing::Message() << "N=" << s.N << " OC=" << s.OC);
    const LayerInputs in(s, 51);
    const std::vector<float> dout = bf16_rounded(random_floats(size_t(s.N) * s.OC, 53, 1.0f));
    const std::vector<float> dbias_init = bf16_rounded(random_floats(s.OC, 57, 8.0f));
    std::vector<float> dinp_ref(size_t(s.N) * s.IC), dweight_ref(size_t(s.OC) * s.IC, 0.0f), dbias_ref = dbias_init;
    cpu::matmul_backward(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(), dout.data(), in.inp.data(),
                         in.weight.data(), s.N, s.IC, s.OC);

    DeviceBuffer<cuda::bf16> inp(to_bf16(in.inp)), weight(to_bf16(in.weight)), dout_d(to_bf16(dout));
    DeviceBuffer<cuda::bf16> dinp(dinp_ref.size()), dweight(dweight_ref.size()), dbias(to_bf16(dbias_init));
    cuda::Matmul matmul;
    std::vector<std::vector<cuda::bf16>> runs;
    for (int run = 0; run < 2; ++run) {
      dweight.upload(std::vector<cuda::bf16>(dweight_ref.size(), test::to_bf16(0.0f)));
      dbias.upload(to_bf16(dbias_init));
      matmul.backward(dinp.get(), dweight.get(), dbias.get(), dout_d.get(), inp.get(), weight.get(), s.N, s.IC, s.OC,
                      nullptr, nullptr);
      runs.push_back(dbias.download());
    }
    EXPECT_LT(relative_error(to_float(runs[0]), dbias_ref), kBound);
    EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(cuda::bf16)));
    EXPECT_LT(relative_error(to_float(dweight.download()), dweight_ref), kBound);
  }
}

}  // namespace
}  // namespace emix
