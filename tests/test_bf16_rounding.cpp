// float → bf16 stochastic rounding and its counter-based random bits
// (kernels/bf16_rounding.hpp), on the CPU: the CUDA optimizers run the same
// header. Checks exactness on representable values, unbiasedness,
// determinism of the hash, and NaN/infinity handling.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>

#include "kernels/bf16_rounding.hpp"

namespace emix {
namespace {

uint32_t bits_of(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

float float_of(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

TEST(Bf16Rounding, HashUsesTheSplitmix64Finalizer) {
  // The first output of the splitmix64 generator seeded with 0 is the
  // finalizer of 0x9E3779B97F4A7C15 (the published reference sequence).
  EXPECT_EQ(splitmix64_mix(0x9E3779B97F4A7C15ull), 0xE220A8397B1DCDAFull);
}

TEST(Bf16Rounding, BitsAreDeterministicAndDependOnEveryInput) {
  EXPECT_EQ(rounding_bits(7, 3, 12345), rounding_bits(7, 3, 12345));
  EXPECT_EQ(rounding_bits(7, 3, 12345), rounding_bits(rounding_key(7, 3), 12345));
  EXPECT_NE(rounding_bits(7, 3, 12345), rounding_bits(8, 3, 12345));
  EXPECT_NE(rounding_bits(7, 3, 12345), rounding_bits(7, 4, 12345));
  EXPECT_NE(rounding_bits(7, 3, 12345), rounding_bits(7, 3, 12346));
  // Swapping step and index must not give the same stream.
  EXPECT_NE(rounding_bits(7, 3, 5), rounding_bits(7, 5, 3));

  // The 16 bits the rounding uses are spread evenly: the mean of 2^17 draws
  // of a uniform value in [0, 1) is within 5 standard deviations of 1/2
  // (σ = 1/√(12·n) ≈ 8e-4), and few values repeat.
  constexpr int kDraws = 1 << 17;
  double sum = 0.0;
  std::set<uint32_t> distinct;
  for (int i = 0; i < kDraws; ++i) {
    const uint32_t bits = rounding_bits(42, 1, static_cast<uint64_t>(i));
    sum += static_cast<double>(bits >> 16) / 65536.0;
    distinct.insert(bits);
  }
  EXPECT_NEAR(sum / kDraws, 0.5, 5.0 / std::sqrt(12.0 * kDraws));
  EXPECT_GT(distinct.size(), static_cast<size_t>(kDraws * 0.99));
}

TEST(Bf16Rounding, RepresentableValuesAreExact) {
  const uint32_t randoms[] = {0u, 0xFFFFFFFFu, 0x0000FFFFu, 0xFFFF0000u, rounding_bits(1, 2, 3)};
  for (uint32_t pattern = 0; pattern <= 0xFFFFu; ++pattern) {
    if ((pattern & 0x7F80u) == 0x7F80u) continue;  // infinities and NaNs: below
    const float x = bf16_bits_to_float(static_cast<uint16_t>(pattern));
    ASSERT_EQ(bits_of(x), pattern << 16);
    for (uint32_t random : randoms) {
      ASSERT_EQ(bf16_bits_stochastic(x, random), pattern) << "pattern " << pattern << ", random " << random;
    }
  }
}

// The mean of many roundings of x is x: within 5 standard deviations of the
// mean, where one rounding's deviation is gap·√(p(1−p)) (p the probability
// of rounding up); every draw is one of x's two bf16 neighbours.
void expect_unbiased(float x, uint64_t seed) {
  const uint32_t low = bits_of(x) & 0xFFFF0000u;
  const float down = float_of(low);
  const float up = float_of(low + 0x10000u);
  const double gap = static_cast<double>(up) - down;
  const double p = (static_cast<double>(x) - down) / gap;
  constexpr int kDraws = 200000;
  const uint64_t key = rounding_key(seed, 1);
  double sum = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const float rounded = bf16_bits_to_float(bf16_bits_stochastic(x, rounding_bits(key, static_cast<uint64_t>(i))));
    ASSERT_TRUE(rounded == down || rounded == up) << x << " rounded to " << rounded;
    sum += rounded;
  }
  const double sigma = std::fabs(gap) * std::sqrt(p * (1.0 - p) / kDraws);
  EXPECT_NEAR(sum / kDraws, static_cast<double>(x), 5.0 * sigma + 1e-12 * std::fabs(x)) << "x = " << x;
}

TEST(Bf16Rounding, IsUnbiased) {
  expect_unbiased(1.0f + 0.3f * 0x1p-7f, 1);    // p ≈ 0.3
  expect_unbiased(-(1.0f + 0.7f * 0x1p-7f), 2); // negative, p ≈ 0.7
  expect_unbiased(3.14159265f, 3);
  expect_unbiased(1e-3f * 1.00123f, 4);
  expect_unbiased(float_of(0x00001234u), 5);    // a float subnormal
  expect_unbiased(float_of(0x7F00C000u), 6);    // large: 1.7e38, p = 0.75
  expect_unbiased(1.0f + 0x1p-23f, 7);          // p = 2^-16: rarely up, never biased
}

TEST(Bf16Rounding, KeepsInfinitiesAndNaNs) {
  const float inf = std::numeric_limits<float>::infinity();
  const uint32_t randoms[] = {0u, 0xFFFFFFFFu, 0x80000000u};
  for (uint32_t random : randoms) {
    EXPECT_EQ(bf16_bits_stochastic(inf, random), 0x7F80u);
    EXPECT_EQ(bf16_bits_stochastic(-inf, random), 0xFF80u);
    // NaNs stay NaN with their sign, including one whose payload lies only
    // in the low 16 bits (truncation alone would make it infinity).
    for (uint32_t nan_bits : {0x7FC00000u, 0x7F800001u, 0xFF80FFFFu, 0x7FFFFFFFu}) {
      const float rounded = bf16_bits_to_float(bf16_bits_stochastic(float_of(nan_bits), random));
      EXPECT_TRUE(std::isnan(rounded)) << std::hex << nan_bits;
      EXPECT_EQ(std::signbit(rounded), (nan_bits >> 31) != 0) << std::hex << nan_bits;
    }
  }
  // Above the largest finite bf16, rounding up reaches infinity.
  const float largest = std::numeric_limits<float>::max();
  EXPECT_EQ(bf16_bits_stochastic(largest, 0u), 0x7F7Fu);
  EXPECT_EQ(bf16_bits_stochastic(largest, 0xFFFFFFFFu), 0x7F80u);
}

}  // namespace
}  // namespace emix
