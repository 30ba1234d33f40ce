#pragma once
// AdEMAMix's per-element update (Pagliardini, Ablin, Grangier, "The AdEMAMix
// Optimizer: Better, Faster, Older", 2024, Algorithm 1; apple/ml-ademamix):
//   m1 ← β1·m1 + (1−β1)·g   (β1 = 0: m1 is g itself and is not stored)
//   m2 ← β3(t)·m2 + (1−β3(t))·g   (a slow average, never bias-corrected)
//   ν  ← β2·ν + (1−β2)·g²
//   p  ← p·(1 − lr·wd) − lr·(m1/(1−β1ᵗ) + α(t)·m2) / (√ν/√(1−β2ᵗ) + eps)
// Optional guard (zero_grad_m2_beta): where g is exactly 0 (an embedding row
// of a token absent from the batch), m2 decays with that rate instead of
// β3(t). Without it, a row that stops receiving gradients sees ν decay faster
// than m2² (β3 > √β2), so its update m2/√ν grows without bound while the
// gradient stays zero: see docs/reliability.md.
// m2 stored narrower than a float (m2_dtype "bfloat16" or "int8",
// kM2Narrow): m2's average is computed as below, and the caller rounds the
// new m2 stochastically to the format when it stores it (the host in
// ademamix.cpp, the device in fused_update.cuh or blockwise_int8_update.cuh);
// this step's parameter update uses the new m2 before that rounding.
// C++17 and host/device: the CUDA fused kernels include it unchanged.
#include <math.h>

#include "core/hd.hpp"
#include "optim/math/ema.hpp"

namespace emix {

// What is the same for every element of one step, computed by the host in
// double precision (warmups included) and rounded to float once.
struct AdemamixCoefficients {
  Ema m1;
  Ema m2;          // β3(t)
  Ema m2_no_grad;  // for g = 0: the guard's rate, or m2 itself without the guard
  Ema nu;
  float inv_bias_correction1 = 0.0f;       // 1 / (1 − β1ᵗ)
  float inv_sqrt_bias_correction2 = 0.0f;  // 1 / √(1 − β2ᵗ)
  float alpha = 0.0f;                      // α(t)
  float lr = 0.0f;
  float eps = 0.0f;
  float lr_weight_decay = 0.0f;  // lr·wd, or 0 where weight decay is off
};

// m2's average when m2 is stored narrower than a float: β·m2 + w·g with the
// one FMA spelled out. Compilers contract ema()'s two products into an FMA
// as they see fit (nvcc one way, g++ with FMA another, or not at all): a
// 1-ulp difference the rounding after it would now and then turn into a
// whole step of the narrow format. Spelled out, the host and the device
// round the same float with the same bits, and store the same value.
EMIX_HD float ademamix_m2_average_for_narrow(float m2, float grad, Ema e) { return fmaf(e.beta, m2, e.weight * grad); }

// m2's new average (before a narrow format's rounding).
template <bool kM2Narrow = false>
EMIX_HD float ademamix_m2_average(float m2, float grad, const AdemamixCoefficients& c) {
  const Ema e = grad == 0.0f ? c.m2_no_grad : c.m2;
  if constexpr (kM2Narrow) {
    return ademamix_m2_average_for_narrow(m2, grad, e);
  } else {
    return ema(m2, grad, e);
  }
}

// Everything but m2, given m2's new average: m1 and ν, then the parameter.
// training.zero_stage "m2" calls it on its own (m2 comes from the rank that
// holds it); m1 is null when β1 = 0, which saves a third of the optimizer's
// memory.
EMIX_HD void ademamix_update_with_m2(float& param, float grad, float* m1, float m2, float& nu,
                                     const AdemamixCoefficients& c) {
  float fast = grad;
  if (m1 != nullptr) fast = *m1 = ema(*m1, grad, c.m1);
  nu = ema(nu, grad * grad, c.nu);
  float denominator = sqrtf(nu) * c.inv_sqrt_bias_correction2 + c.eps;
  param -= c.lr_weight_decay * param + c.lr * (fast * c.inv_bias_correction1 + c.alpha * m2) / denominator;
}

template <bool kM2Narrow = false>
EMIX_HD void ademamix_update(float& param, float grad, float* m1, float& m2, float& nu, const AdemamixCoefficients& c) {
  m2 = ademamix_m2_average<kM2Narrow>(m2, grad, c);
  ademamix_update_with_m2(param, grad, m1, m2, nu, c);
}

}  // namespace emix
