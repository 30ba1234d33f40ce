#pragma once
// float → bf16 by stochastic rounding, with the random bits drawn from a
// counter-based hash, so that any element's rounding can be recomputed from
// (seed, step, global element index) alone: the same on every device, for
// any launch configuration and any ZeRO shard layout.
//
// The hash is three rounds of the splitmix64 finalizer (Steele, Lea, Flood,
// "Fast Splittable Pseudorandom Number Generators", 2014; the constants are
// Stafford's "Mix13" variant), each input XORed in after the previous one is
// fully mixed:
//   key  = mix(mix(seed ⊕ φ) ⊕ step)       (once per step, on the host)
//   bits = high 32 bits of mix(key ⊕ index)
// where φ = 0x9E3779B97F4A7C15 keeps seed 0 away from mix's fixed point 0.
// mix is a bijection of 64-bit words, so for one key distinct indices give
// distinct hashes.
//
// Stochastic rounding adds 16 random bits to the float's bit pattern and
// truncates to the high 16 bits (a bf16 is the high half of a float): the
// magnitude rounds up exactly when the carry reaches bit 16, which happens
// with probability (low 16 bits)/2¹⁶, the distance to the lower neighbour in
// units of the gap. So E[round(x)] = x, and values that are already bf16
// (low bits zero) never change. Working on the magnitude's bits makes it
// symmetric in sign; a carry out of the mantissa moves to the next binade,
// which is the right neighbour, and above the largest finite bf16 it rounds
// to infinity with the same probability rule. NaN stays NaN (quieted, sign
// kept: truncation alone could turn a NaN whose payload is all in the low
// bits into infinity) and ±infinity stays itself.
//
// Optimizer state kept in bf16 (AdEMAMix's m2 with m2_dtype "bfloat16") is
// rounded the same way, from a stream of its own so that its bits are
// independent of the weights':
//   state key = rounding_key(seed ⊕ kStateRoundingStream, step)
// with kStateRoundingStream = 0x6D325F7374617465, the ASCII of "m2_state".
// Unbiased rounding is what lets such a slow average (β3 = 0.9999, whose
// per-step change is far below half a bf16 gap) keep moving at all: rounding
// to nearest would leave it stuck.
// C++17 and host/device: the CUDA optimizer kernels include it unchanged.
#include <stdint.h>
#include <string.h>

#include "core/hd.hpp"

namespace emix {

// The splitmix64 finalizer: a bijection on 64-bit words with full avalanche.
EMIX_HD uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// What the bits of one step depend on besides the element index.
EMIX_HD uint64_t rounding_key(uint64_t seed, uint64_t step) {
  return splitmix64_mix(splitmix64_mix(seed ^ 0x9E3779B97F4A7C15ull) ^ step);
}

EMIX_HD uint32_t rounding_bits(uint64_t key, uint64_t index) {
  return static_cast<uint32_t>(splitmix64_mix(key ^ index) >> 32);
}

EMIX_HD uint32_t rounding_bits(uint64_t seed, uint64_t step, uint64_t index) {
  return rounding_bits(rounding_key(seed, step), index);
}

// The bf16 bit pattern of x rounded stochastically with the high 16 bits of
// `random` (see the header comment).
EMIX_HD uint16_t bf16_bits_stochastic(float x, uint32_t random) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7F800000u) == 0x7F800000u) {
    const bool nan = (bits & 0x007FFFFFu) != 0;
    return static_cast<uint16_t>((bits >> 16) | (nan ? 0x0040u : 0u));
  }
  return static_cast<uint16_t>((bits + (random >> 16)) >> 16);
}

// The float a bf16 bit pattern stands for (exact).
EMIX_HD float bf16_bits_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float x;
  memcpy(&x, &wide, sizeof x);
  return x;
}

// x stochastically rounded to bf16, widened back to float (exact).
EMIX_HD float bf16_round_stochastic(float x, uint32_t random) {
  return bf16_bits_to_float(bf16_bits_stochastic(x, random));
}

// The bf16 bit pattern nearest to x, ties to even (NaN quieted as above).
EMIX_HD uint16_t bf16_bits_nearest_even(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

inline constexpr uint64_t kStateRoundingStream = 0x6D325F7374617465ull;  // "m2_state"

// The key of step `step`'s rounding of bf16 optimizer state.
EMIX_HD uint64_t state_rounding_key(uint64_t seed, uint64_t step) {
  return rounding_key(seed ^ kStateRoundingStream, step);
}

}  // namespace emix
