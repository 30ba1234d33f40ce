// The fused softmax cross-entropy (kernels/cuda/classifier.cuh) against the
// CPU backend (emix::cpu::softmax_cross_entropy_*) run in fp32 on the same
// bf16 logits, on N = 111 rows of V = 1001 real columns padded to Vp = 1008
// (a multiple of 8, not of 128: the last 16-byte group is part real, part
// padding), and on a row narrower than a block (V = 13, Vp = 16). The padded
// columns hold large values that would dominate the softmax if not masked.
//
// Error bounds:
// - losses (fp32): 1e-5 relative (+1e-6 absolute) per row. Both sides sum exp in fp32 over
//   the same bf16 inputs in different orders (~1e-7 relative), and log-sum-
//   exp is ~7 here, so the difference is a few ulps.
// - gradient (bf16): relative error below 1e-2 over all columns, and each
//   element within 1e-2·|ref| + 1e-9 (bf16 rounding: 2⁻⁹ relative); exactly
//   0 in the padded columns.
// - sum_losses: within 1e-12 relative of a double sum on the host (it sums in
//   double too, in another order); two runs, and the losses of two runs, are
//   bit-identical.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "cuda/cuda_test_support.hpp"
#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cuda/classifier.cuh"

namespace emix {
namespace {

using test::DeviceBuffer;
using test::bf16_rounded;
using test::random_floats;
using test::relative_error;
using test::to_bf16;
using test::to_float;

struct Shape {
  int N, V, Vp;
};

// Logits in [-4, 4) in the real columns, 50 in the padded ones.
std::vector<float> make_logits(const Shape& s, uint64_t seed) {
  std::vector<float> logits = bf16_rounded(random_floats(size_t(s.N) * s.Vp, seed, 4.0f));
  for (int n = 0; n < s.N; ++n) {
    for (int v = s.V; v < s.Vp; ++v) logits[size_t(n) * s.Vp + v] = 50.0f;
  }
  return logits;
}

class ClassifierTest : public ::testing::TestWithParam<Shape> {};

TEST_P(ClassifierTest, LossesAndGradient) {
  EMIX_REQUIRE_GPU();
  const Shape s = GetParam();
  const std::vector<float> logits = make_logits(s, 7);
  const std::vector<int32_t> targets = test::random_tokens(s.N, s.V, 9);
  const float scale = 1.0f / float(s.N);

  std::vector<float> lse(s.N), losses_ref(s.N), grad_ref = logits;
  cpu::softmax_cross_entropy_forward(lse.data(), losses_ref.data(), logits.data(), targets.data(), s.N, s.V, s.Vp);
  cpu::softmax_cross_entropy_backward(grad_ref.data(), lse.data(), targets.data(), s.N, s.V, s.Vp, scale);

  DeviceBuffer<cuda::bf16> logits_d(to_bf16(logits));
  DeviceBuffer<int32_t> targets_d(targets);
  DeviceBuffer<float> losses(s.N);
  losses.poison();
  cuda::softmax_cross_entropy(logits_d.get(), losses.get(), targets_d.get(), s.N, s.V, s.Vp, scale, true, nullptr);

  const std::vector<float> got_losses = losses.download();
  for (int n = 0; n < s.N; ++n) {
    ASSERT_NEAR(got_losses[n], losses_ref[n], 1e-5 * std::fabs(losses_ref[n]) + 1e-6) << "row " << n;
  }
  const std::vector<float> grad = to_float(logits_d.download());
  EXPECT_LT(relative_error(grad, grad_ref), 1e-2);
  for (int n = 0; n < s.N; ++n) {
    for (int v = 0; v < s.Vp; ++v) {
      const size_t i = size_t(n) * s.Vp + v;
      if (v >= s.V) {
        ASSERT_EQ(grad[i], 0.0f) << "padded column " << v << " of row " << n;
      } else {
        ASSERT_NEAR(grad[i], grad_ref[i], 1e-2 * std::fabs(grad_ref[i]) + 1e-9) << "row " << n << " column " << v;
      }
    }
  }
}

// Without the gradient, the logits stay as they were, bit for bit.
TEST_P(ClassifierTest, LossesOnlyLeavesLogits) {
  EMIX_REQUIRE_GPU();
  const Shape s = GetParam();
  const std::vector<float> logits = make_logits(s, 13);
  const std::vector<int32_t> targets = test::random_tokens(s.N, s.V, 15);
  std::vector<float> lse(s.N), losses_ref(s.N);
  cpu::softmax_cross_entropy_forward(lse.data(), losses_ref.data(), logits.data(), targets.data(), s.N, s.V, s.Vp);

  const std::vector<cuda::bf16> logits_bf16 = to_bf16(logits);
  DeviceBuffer<cuda::bf16> logits_d(logits_bf16);
  DeviceBuffer<int32_t> targets_d(targets);
  DeviceBuffer<float> losses(s.N);
  losses.poison();
  cuda::softmax_cross_entropy(logits_d.get(), losses.get(), targets_d.get(), s.N, s.V, s.Vp, 1.0f, false, nullptr);
  const std::vector<float> got_losses = losses.download();
  for (int n = 0; n < s.N; ++n) {
    ASSERT_NEAR(got_losses[n], losses_ref[n], 1e-5 * std::fabs(losses_ref[n]) + 1e-6) << "row " << n;
  }
  const std::vector<cuda::bf16> after = logits_d.download();
  EXPECT_EQ(0, std::memcmp(after.data(), logits_bf16.data(), after.size() * sizeof(cuda::bf16)));
}

// Two runs on the same logits: the same loss bits, and the same sum.
TEST_P(ClassifierTest, Deterministic) {
  EMIX_REQUIRE_GPU();
  const Shape s = GetParam();
  const std::vector<cuda::bf16> logits = to_bf16(make_logits(s, 17));
  const std::vector<int32_t> targets = test::random_tokens(s.N, s.V, 19);
  DeviceBuffer<cuda::bf16> logits_d(logits.size());
  DeviceBuffer<int32_t> targets_d(targets);
  DeviceBuffer<float> losses(s.N);
  DeviceBuffer<double> total(1);
  std::vector<std::vector<float>> run_losses;
  std::vector<double> run_totals;
  for (int run = 0; run < 2; ++run) {
    logits_d.upload(logits);
    losses.poison();
    total.poison();
    cuda::softmax_cross_entropy(logits_d.get(), losses.get(), targets_d.get(), s.N, s.V, s.Vp, 0.5f, true, nullptr);
    cuda::sum_losses(total.get(), losses.get(), s.N, nullptr);
    run_losses.push_back(losses.download());
    run_totals.push_back(total.download()[0]);
  }
  EXPECT_EQ(0, std::memcmp(run_losses[0].data(), run_losses[1].data(), s.N * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(&run_totals[0], &run_totals[1], sizeof(double)));
  double host_total = 0.0;
  for (float loss : run_losses[0]) host_total += loss;
  EXPECT_NEAR(run_totals[0], host_total, 1e-12 * std::fabs(host_total));
}

INSTANTIATE_TEST_SUITE_P(AwkwardShapes, ClassifierTest, ::testing::Values(Shape{111, 1001, 1008}, Shape{3, 13, 16}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           std::ostringstream name;
                           name << "N" << info.param.N << "_V" << info.param.V << "_Vp" << info.param.Vp;
                           return name.str();
                         });

// sum_losses alone, over more elements than its threads, against a host sum
// in double; twice, bit-identical.
TEST(SumLosses, MatchesHostAndDeterministic) {
  EMIX_REQUIRE_GPU();
  for (const int N : {1, 111, 100003}) {
    SCOPED_TRACE(testing::Message() << "N=" << N);
    std::vector<float> values = random_floats(N, 23, 5.0f);
    for (float& v : values) v = std::fabs(v) + 1.0f;  // loss-like: positive
    double host_total = 0.0;
    for (float v : values) host_total += v;
    DeviceBuffer<float> losses(values);
    DeviceBuffer<double> total(1);
    total.poison();
    cuda::sum_losses(total.get(), losses.get(), N, nullptr);
    const double first = total.download()[0];
    total.poison();
    cuda::sum_losses(total.get(), losses.get(), N, nullptr);
    const double second = total.download()[0];
    EXPECT_NEAR(first, host_total, 1e-12 * host_total);
    EXPECT_EQ(0, std::memcmp(&first, &second, sizeof(double)));
  }
}

}  // namespace
}  // namespace emix
