#pragma once
// Blockwise 8-bit storage of optimizer state (AdEMAMix's m2 with m2_dtype
// "int8"), after Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers
// via Block-wise Quantization" (ICLR 2022): the state is cut into blocks of
// kInt8Block elements, each block stores one float scale (its absolute
// maximum) and one byte per element, a code of a fixed non-linear "dynamic"
// map of [−1, 1]; an element's value is map(code) · scale.
//
// The map (our own spelling of the paper's dynamic signed map). Bit 7 is the
// sign. In the low 7 bits m, the number of leading zeros E (0 to 6) picks the
// decade 10^−E, the first 1 bit after them is an indicator, and the k = 6 − E
// bits below it are a linear fraction j:
//   |value| = 10^−E · (0.1 + 0.9 · (j + 1) / 2^k),   m = 0 → 0.
// So the 127 magnitudes run from 10⁻⁶ to exactly 1, with 64 linear steps in
// [0.1, 1], 32 in [0.01, 0.1], and so on: small values keep their relative
// precision, which a linear 8-bit map would flush to zero. Magnitudes grow
// with m, so codes can be searched in order.
//
// Writes round stochastically between the two neighbouring codes, with
// probability in proportion to the distance, so the stored value is unbiased
// (E[stored] = value). As for bf16 (kernels/bf16_rounding.hpp), this is what
// keeps a slow average moving: with β3 = 0.9999 the per-step change is far
// below half a code's gap, and rounding to nearest would leave most elements
// stuck. The element of largest magnitude is exactly ±1 · scale, so the scale
// is recovered from the stored values alone (checkpoints store the values as
// floats; see ElementwiseOptimizer).
// C++17 and host/device: the CUDA kernels include it unchanged.
#include <math.h>
#include <stdint.h>

#include "core/hd.hpp"

namespace emix {

inline constexpr int kInt8Block = 256;
inline constexpr int kInt8Magnitudes = 128;  // codes 0..127 of the low 7 bits

// Blocks of a range of `count` elements (the last one may be short).
EMIX_HD uint64_t int8_block_count(uint64_t count) { return (count + kInt8Block - 1) / kInt8Block; }

// |map| of the 7-bit magnitude code m (0..127). fmaf keeps the host and the
// device from contracting the sum differently: the same float everywhere.
EMIX_HD float int8_dynamic_magnitude(uint32_t m) {
  if (m == 0) return 0.0f;
  int k = 6;
  while ((m >> k) == 0) --k;  // the indicator bit; E = 6 − k leading zeros
  const float fraction = static_cast<float>((m - (1u << k)) + 1u) / static_cast<float>(1u << k);
  float decade = 1.0f;
  for (int e = 6 - k; e > 0; --e) decade *= 0.1f;
  return decade * fmaf(0.9f, fraction, 0.1f);
}

// The value of a full 8-bit code (sign in bit 7), before scaling.
EMIX_HD float int8_dynamic_value(uint8_t code) {
  const float magnitude = int8_dynamic_magnitude(code & 0x7Fu);
  return (code & 0x80u) != 0 ? -magnitude : magnitude;
}

// The largest magnitude code m with magnitudes[m] ≤ a (a ≥ 0, or NaN: 0);
// `magnitudes` is int8_dynamic_magnitude(0..127), a table.
//
// Computed, not searched: a binary search is seven table reads, each
// waiting for the one before, and on the CPU that chain is most of an int8
// optimizer step. Instead, the decade is counted with six independent
// comparisons against the decades' tops (codes 2^c − 1 = 10^(c−6), so c of
// them ≤ a puts m in [2^c − 1, 2^(c+1) − 1]); inside it the map is linear,
// which gives m by one division; float rounding can leave that estimate one
// off at a boundary, so one comparison each way with the table's own values
// makes the result exactly the search's.
EMIX_HD uint32_t int8_magnitude_at_or_below(float a, const float* magnitudes) {
  uint32_t c = 0;
  for (uint32_t top = 1; top < kInt8Magnitudes / 2; top = 2 * top + 1) c += static_cast<uint32_t>(magnitudes[top] <= a);
  // Within decade c, code 2^c − 1 + s has magnitude decade · (0.1 + 0.9 s / 2^c)
  // for s = 1 .. 2^c (s = 0: the decade below's top). Clamped with
  // comparisons (fmaxf is a library call on the CPU); a NaN s becomes 0.
  const float decade = magnitudes[(2u << c) - 1];
  const float steps = static_cast<float>(1u << c);
  const float estimate = floorf((a / decade - 0.1f) / 0.9f * steps);
  const float s = estimate > 0.0f ? (estimate < steps ? estimate : steps) : 0.0f;
  uint32_t m = (1u << c) - 1 + static_cast<uint32_t>(s);
  if (m + 1 < kInt8Magnitudes && magnitudes[m + 1] <= a) ++m;
  if (magnitudes[m] > a) --m;
  return m;
}

// The full code of magnitude code m with y's sign (one zero: +0).
EMIX_HD uint8_t int8_signed_code(uint32_t m, float y) {
  if (m == 0) return 0;
  return static_cast<uint8_t>(m | (y < 0.0f ? 0x80u : 0u));
}

// The code of y ∈ [−1, 1] (a value divided by its block's scale), rounded
// stochastically with `random` (32 uniform bits) between the two
// neighbouring magnitudes. |y| ≥ 1 gives ±1 exactly; values already on the
// map keep their code whatever the bits.
EMIX_HD uint8_t int8_dynamic_code_stochastic(float y, uint32_t random, const float* magnitudes) {
  const float a = fabsf(y);
  const uint32_t low = int8_magnitude_at_or_below(a, magnitudes);
  if (low + 1 == kInt8Magnitudes) return int8_signed_code(low, y);
  // Round up with probability (a − below) / (above − below); u ∈ [0, 1) has
  // 24 bits, exactly representable.
  const float below = magnitudes[low], above = magnitudes[low + 1];
  const float u = static_cast<float>(random >> 8) * (1.0f / 16777216.0f);
  return int8_signed_code(u * (above - below) < a - below ? low + 1 : low, y);
}

// The code nearest to y (ties away from zero): converting stored values
// back to codes, where they are exactly on the map.
EMIX_HD uint8_t int8_dynamic_code_nearest(float y, const float* magnitudes) {
  const float a = fabsf(y);
  const uint32_t low = int8_magnitude_at_or_below(a, magnitudes);
  const bool up = low + 1 < kInt8Magnitudes && magnitudes[low + 1] - a <= a - magnitudes[low];
  return int8_signed_code(up ? low + 1 : low, y);
}

// What an element stores: the code's value times its block's scale, the
// magnitude read from the table (int8_dynamic_value's loops cost more than
// the rest of an optimizer step).
EMIX_HD float int8_dequantize(uint8_t code, float scale, const float* magnitudes) {
  const float magnitude = magnitudes[code & 0x7Fu];
  return ((code & 0x80u) != 0 ? -magnitude : magnitude) * scale;
}

// A block's scale is the largest magnitude of its elements, combined with
// this in any order: NaN if any is NaN (fmaxf would drop it), so a
// corrupted block shows as NaN instead of being silently rescaled.
EMIX_HD float int8_scale_max(float scale, float magnitude) {
  if (isnan(scale) || isnan(magnitude)) return NAN;
  return scale > magnitude ? scale : magnitude;  // not fmaxf: a library call on the CPU
}

// The stored code of `value` in a block of scale `scale`: an all-zero block
// (scale 0) stores zeros; a NaN scale makes every code 0 and every value
// 0 · NaN = NaN.
EMIX_HD uint8_t int8_code_stochastic(float value, float scale, uint32_t random, const float* magnitudes) {
  return scale == 0.0f ? 0 : int8_dynamic_code_stochastic(value / scale, random, magnitudes);
}
EMIX_HD uint8_t int8_code_nearest(float value, float scale, const float* magnitudes) {
  return scale == 0.0f ? 0 : int8_dynamic_code_nearest(value / scale, magnitudes);
}

}  // namespace emix
