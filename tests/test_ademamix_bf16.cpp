// AdEMAMix with m2_dtype "bfloat16" on the host: m2 is kept bf16-valued in
// its float buffer, rounded stochastically with the state stream's bits of
// (StepInfo::rounding_seed, step, element_offset + i), exactly as the device
// stores it (tests/cuda/test_cuda_optimizers.cpp checks the two agree bit
// for bit). These tests pin the host side: every stored m2 is a bf16, the
// rounding is unbiased (the bf16 trajectory's mean tracks the fp32 one), the
// bits depend on the seed and the global index only, and the option is
// validated. The default ("float32") is covered by test_optim_golden.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "kernels/bf16_rounding.hpp"
#include "optim/math/ademamix_math.hpp"
#include "optim/optimizer.hpp"
#include "test_support.hpp"

namespace emix {
namespace {

std::unique_ptr<Optimizer> make_ademamix(const Json& hyperparameters, size_t size,
                                         std::vector<ParamSegment> segments = {}) {
  const OptimizerSpec& spec = find_optimizer("ademamix");
  if (segments.empty()) segments = {{0, size, true}};
  return spec.create(spec.normalize(hyperparameters), size, std::move(segments));
}


// Random gradients with every 13th element exactly zero (the
// zero_grad_m2_beta path).
std::vector<float> gradients(size_t size, int64_t step) {
  std::vector<float> grads = test::random_normal_vector(size, 500 + static_cast<uint64_t>(step));
  for (size_t i = 0; i < size; i += 13) grads[i] = 0.0f;
  return grads;
}


bool is_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & 0xFFFFu) == 0;
}

std::string error_message(const Json& hyperparameters) {
  try {
    find_optimizer("ademamix").normalize(hyperparameters);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an emix::Error";
  return "";
}

// Why m2 needs stochastic rounding in bf16: with β3 = 0.9999 each step moves
// m2 by 1e-4·(g − m2), which is below half a bf16 ulp as soon as m2 exceeds
// 2⁻⁵ ≈ 0.031 (g = 1): round-to-nearest then returns the old value every step and
// m2 freezes far from its average, while stochastic rounding is unbiased and
// its mean follows the fp32 average.
TEST(AdemamixBf16M2, RoundToNearestFreezesM2AndStochasticRoundingDoesNot) {
  constexpr double kBeta3 = 0.9999;
  constexpr int kSteps = 20000;
  constexpr int kElements = 2048;
  auto round_to_nearest = [](float x) {  // bf16 round-to-nearest-even of a finite float
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return bf16_bits_to_float(static_cast<uint16_t>(bits >> 16));
  };
  float nearest = 0.0f;
  std::vector<float> stochastic(kElements, 0.0f);
  const auto beta = static_cast<float>(kBeta3), weight = static_cast<float>(1.0 - kBeta3);
  for (int t = 1; t <= kSteps; ++t) {
    nearest = round_to_nearest(beta * nearest + weight * 1.0f);
    const uint64_t key = rounding_key(7, static_cast<uint64_t>(t));
    for (int i = 0; i < kElements; ++i) {
      const float average = beta * stochastic[i] + weight * 1.0f;
      stochastic[i] = bf16_bits_to_float(bf16_bits_stochastic(average, rounding_bits(key, static_cast<uint64_t>(i))));
    }
  }
  const double exact = 1.0 - std::pow(kBeta3, kSteps);  // 0.8647
  double mean = 0.0;
  for (float v : stochastic) mean += v;
  mean /= kElements;
  std::printf("[  MEASURE ] m2 after %d steps of g = 1, beta3 %.4f: exact %.4f, bf16 nearest %.4f, bf16 stochastic mean %.4f\n",
              kSteps, kBeta3, exact, nearest, mean);
  EXPECT_LT(nearest, 0.05);                          // frozen near its start
  EXPECT_NEAR(mean, exact, 0.01 * exact);            // unbiased
}

TEST(AdemamixBf16M2, OptionIsValidatedAndDefaultsToFloat32) {
  const OptimizerSpec& spec = find_optimizer("ademamix");
  EXPECT_EQ(spec.normalize(Json::object()).at("m2_dtype"), "float32");
  EXPECT_EQ(spec.normalize(Json{{"m2_dtype", "bfloat16"}}).at("m2_dtype"), "bfloat16");
  for (const Json& bad : {Json("bf16"), Json("float16"), Json(16)}) {
    const std::string message = error_message(Json{{"m2_dtype", bad}});
    EXPECT_NE(message.find("optimizer.m2_dtype"), std::string::npos) << message;
  }
  EXPECT_NE(error_message(Json{{"m2_dtype", "bf16"}}).find("\"float32\" or \"bfloat16\" or \"int8\""), std::string::npos);
}

// Host placement keeps m2 in floats: 12 bytes per parameter either way (the
// device's 10 is checked by the GPU test).
TEST(AdemamixBf16M2, HostStateIsFloats) {
  EXPECT_EQ(make_ademamix(Json{{"m2_dtype", "bfloat16"}}, 10)->state_bytes(), 120u);
  EXPECT_EQ(make_ademamix(Json{{"m2_dtype", "bfloat16"}, {"beta1", 0.0}}, 10)->state_bytes(), 80u);
}

// Every stored m2 is a bf16, and it is the stochastic rounding (state stream,
// global index) of the average of the previous m2 and the gradient,
// recomputed here from the math header (β3 without warmup; the
// zero-gradient guard's rate where g = 0).
TEST(AdemamixBf16M2, StoredM2IsTheStochasticRoundingOfItsAverage) {
  const size_t size = 1000;
  const uint64_t seed = 77;
  const size_t element_offset = 4321;
  for (const Json& hp : {Json{{"m2_dtype", "bfloat16"}},
                         Json{{"m2_dtype", "bfloat16"}, {"beta1", 0.0}, {"zero_grad_m2_beta", 0.9}}}) {
    SCOPED_TRACE(hp.dump());
    const Json normalized = find_optimizer("ademamix").normalize(hp);
    const Ema rate = ema_average(normalized.at("beta3").get<double>());
    const Ema guard = normalized.at("zero_grad_m2_beta").is_null()
                          ? rate
                          : Ema{normalized.at("zero_grad_m2_beta").get<float>(), 0.0f};
    auto optimizer = make_ademamix(hp, size);
    std::vector<float> params = test::random_normal_vector(size, 1);
    std::vector<float> previous_m2(size, 0.0f);
    for (int64_t t = 1; t <= 6; ++t) {
      const std::vector<float> grads = gradients(size, t);
      optimizer->step(params, grads, StepInfo{t, 1e-3f, seed, element_offset});
      const std::vector<float> m2 = test::state_buffer(*optimizer, "m2");
      const uint64_t key = state_rounding_key(seed, static_cast<uint64_t>(t));
      size_t not_bf16 = 0, mismatches = 0;
      for (size_t i = 0; i < size; ++i) {
        not_bf16 += !is_bf16(m2[i]);
        const float average = ademamix_m2_average_for_narrow(previous_m2[i], grads[i], grads[i] == 0.0f ? guard : rate);
        mismatches += m2[i] != bf16_round_stochastic(average, rounding_bits(key, element_offset + i));
      }
      EXPECT_EQ(not_bf16, 0u) << "step " << t;
      EXPECT_EQ(mismatches, 0u) << "step " << t;
      previous_m2 = m2;
    }
  }
}

// Unbiasedness. With β3 = 0.999 and a constant gradient g, the fp32 m2 is
// g·(1 − β3ᵗ), 0.181·g after 200 steps: 1e-3·g per step, well under half a
// bf16 gap of m2 for most of the run (m2 = 0.18 has gaps of 2⁻¹⁰ ≈ 1e-3),
// so each step's rounding is a coin flip. Stochastic rounding is unbiased,
// so the mean over 2¹⁶ elements (independent bits) tracks the fp32 value:
// each element random-walks by about √(Σ β3^2k · gap²/4) ≈ 6e-3 (3 %), the
// mean of 2¹⁶ by 3 % / 256 ≈ 1.2e-4, inside the 1e-3 bound 8 times over.
// The per-element spread itself is checked loosely (rms within 6 %).
TEST(AdemamixBf16M2, ConstantGradientMeanTracksFloat32) {
  const size_t size = size_t{1} << 16;
  const int64_t steps = 200;
  const float g = 0.75f;
  const Json hp{{"beta3", 0.999}, {"lr", 1e-4}, {"weight_decay", 0.0}};
  Json bf16_hp = hp;
  bf16_hp["m2_dtype"] = "bfloat16";
  auto fp32 = make_ademamix(hp, size);
  auto bf16 = make_ademamix(bf16_hp, size);
  std::vector<float> fp32_params(size, 0.0f), bf16_params(size, 0.0f);
  const std::vector<float> grads(size, g);
  for (int64_t t = 1; t <= steps; ++t) {
    fp32->step(fp32_params, grads, StepInfo{t, 1e-4f, 2024, 0});
    bf16->step(bf16_params, grads, StepInfo{t, 1e-4f, 2024, 0});
  }
  const std::vector<float> reference = test::state_buffer(*fp32, "m2");
  const std::vector<float> m2 = test::state_buffer(*bf16, "m2");
  const double expected = reference[0];
  EXPECT_NEAR(expected, g * (1.0 - std::pow(0.999, steps)), 1e-4 * g);
  double sum = 0.0, sum_squares = 0.0;
  size_t not_bf16 = 0;
  for (size_t i = 0; i < size; ++i) {
    sum += m2[i];
    sum_squares += (m2[i] - expected) * (m2[i] - expected);
    not_bf16 += !is_bf16(m2[i]);
  }
  EXPECT_EQ(not_bf16, 0u);
  const double mean = sum / static_cast<double>(size);
  const double rms = std::sqrt(sum_squares / static_cast<double>(size));
  EXPECT_LE(std::abs(mean - expected) / expected, 1e-3) << "mean " << mean << " vs fp32 " << expected;
  EXPECT_LE(rms / expected, 0.06) << "rms deviation " << rms;
  EXPECT_GT(rms, 0.0) << "the elements' roundings should differ";
}

// The bits come from (seed, step, global index): two optimizers over the
// halves of a range, the second with element_offset at its start, reproduce
// the whole range's optimizer bit for bit; another seed gives another m2.
TEST(AdemamixBf16M2, BitsDependOnSeedAndGlobalIndexOnly) {
  const size_t size = 1000, split = 613;
  const Json hp{{"m2_dtype", "bfloat16"}};
  auto whole = make_ademamix(hp, size, {{0, 400, true}, {400, 600, false}});
  auto low = make_ademamix(hp, split, {{0, 400, true}, {400, split - 400, false}});
  auto high = make_ademamix(hp, size - split, {{0, size - split, false}});
  auto reseeded = make_ademamix(hp, size, {{0, 400, true}, {400, 600, false}});
  std::vector<float> params = test::random_normal_vector(size, 3);
  std::vector<float> shard_params = params;
  std::vector<float> reseeded_params = params;
  for (int64_t t = 1; t <= 5; ++t) {
    const std::vector<float> grads = gradients(size, t);
    whole->step(params, grads, StepInfo{t, 1e-3f, 9, 0});
    low->step(std::span(shard_params).first(split), std::span(grads).first(split), StepInfo{t, 1e-3f, 9, 0});
    high->step(std::span(shard_params).subspan(split), std::span(grads).subspan(split), StepInfo{t, 1e-3f, 9, split});
    reseeded->step(reseeded_params, grads, StepInfo{t, 1e-3f, 10, 0});
  }
  std::vector<float> shard_m2 = test::state_buffer(*low, "m2");
  const std::vector<float> high_m2 = test::state_buffer(*high, "m2");
  shard_m2.insert(shard_m2.end(), high_m2.begin(), high_m2.end());
  EXPECT_TRUE(test::same_bits(shard_m2, test::state_buffer(*whole, "m2")));
  EXPECT_TRUE(test::same_bits(shard_params, params));
  EXPECT_FALSE(test::same_bits(test::state_buffer(*reseeded, "m2"), test::state_buffer(*whole, "m2")));
}

}  // namespace
}  // namespace emix
