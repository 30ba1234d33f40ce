// MARS-AdamW (Yuan, Liu, Wu, Zhou, Gu, "MARS: Unleashing the Power of
// Variance Reduction for Training Large Models", 2024, Algorithm 1 with the
// AdamW preconditioner, in the approximate form the authors train with: the
// previous step's gradient stands in for ∇f(x_{t−1}, ξ_t); AGI-Arena/MARS
// mars.py, mars_type "mars-adamw"):
//   c  = g + γ·(β1/(1−β1))·(g − g_prev)
//   c ← c/‖c‖ if clip_corrected_gradient and ‖c‖ > 1
//   m1 ← β1·m1 + (1−β1)·c;  ν ← β2·ν + (1−β2)·c²;  g_prev ← g
//   p  ← p − lr·[ (m1/(1−β1ᵗ)) / (√ν/√(1−β2ᵗ) + eps) + wd·p ]
// Step 1: the paper starts from x_1 = x_0, so the correction is zero and
// c = g (the official code instead takes g_prev = 0 there, which scales the
// first gradient by 1 + γ·β1/(1−β1)).
// ‖c‖ is the L2 norm over ALL parameters (every segment; under ZeRO the
// ranks' shards together, StepInfo::sum_blocks_over_shards), not per tensor
// as in the official code, which clips each parameter tensor separately. It
// is summed in double over the blocks of grad_clip.hpp, so it depends
// neither on the thread count nor on the sharding.
// The official code also runs plain AdamW (its own lr, betas, decay) on 1-D
// tensors unless optimize_1d; here MARS updates every element alike (as its
// optimize_1d = True).
// Defaults: lr = 3e-3, β1 = 0.95, β2 = 0.99, eps = 1e-8, gamma = 0.025 (the
// official code's), weight_decay = 0.01 (the authors' GPT-2 configs),
// clip_corrected_gradient = true (Algorithm 1).
// Hyperparameters: lr, beta1, beta2, eps, weight_decay, gamma,
// clip_corrected_gradient. State: m1, nu, g_prev.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "optim/adamw_coefficients.hpp"
#include "optim/grad_clip.hpp"
#include "optim/math/mars_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct MarsHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  double gamma;
  bool clip_corrected_gradient;
};

MarsHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  MarsHyperparameters hp{
      .lr = reader.non_negative("lr", 3e-3),
      .beta1 = reader.beta("beta1", 0.95),
      .beta2 = reader.beta("beta2", 0.99),
      .eps = reader.positive("eps", 1e-8),
      .weight_decay = reader.non_negative("weight_decay", 0.01),
      .gamma = reader.non_negative("gamma", 0.025),
      .clip_corrected_gradient = reader.flag("clip_corrected_gradient", true),
  };
  reader.reject_unknown_keys();
  return hp;
}

Json to_json(const MarsHyperparameters& hp) {
  return Json{{"lr", hp.lr},
              {"beta1", hp.beta1},
              {"beta2", hp.beta2},
              {"eps", hp.eps},
              {"weight_decay", hp.weight_decay},
              {"gamma", hp.gamma},
              {"clip_corrected_gradient", hp.clip_corrected_gradient}};
}

class Mars final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "mars";

  Mars(const MarsHyperparameters& hp, size_t size, std::vector<ParamSegment> segments, Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), {"m1", "nu", "g_prev"}, placement),
        hp_(hp) {
    if (placement == Placement::device && hp_.clip_corrected_gradient) {
      norm_scratch_ = device::Allocation(device::kSumOfSquaresScratch * sizeof(double));
    }
  }

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m1 = buffer("m1");
    float* nu = buffer("nu");
    float* g_prev = buffer("g_prev");
    MarsCoefficients c = coefficients(info);
    if (hp_.clip_corrected_gradient) clip(c, corrected_norm(grads, g_prev, c.correction, info));
    update_elements(c, info.lr * hp_.weight_decay, [&](size_t i, const MarsCoefficients& k) {
      mars_update(params[i], grads[i], g_prev[i], m1[i], nu[i], k);
    });
  }

  // State order: m1, nu, g_prev (cuda/mars_update.cu). The norm is a pass of
  // its own before the update, and the host waits for it.
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    float* g_prev = buffer("g_prev");
    MarsCoefficients c = coefficients(info);
    if (hp_.clip_corrected_gradient) {
      auto* sum_of_squares = device_pass<device::SumOfSquaresFunction>("corrected_sum_of_squares");
      // Under ZeRO the ranks' totals are added in rank order (one "block"
      // each); otherwise this is the total itself.
      const double shard_total = sum_of_squares(g_prev, step, c.correction, size(), norm_scratch_.as<double>());
      clip(c, std::sqrt(total_of_blocks(info, std::span<const double>(&shard_total, 1))));
    }
    update_elements_device(step, info, c, info.lr * hp_.weight_decay, {{buffer("m1"), buffer("nu"), g_prev}});
  }

 private:
  MarsCoefficients coefficients(const StepInfo& info) const {
    MarsCoefficients c;
    static_cast<AdamwCoefficients&>(c) = adamw_coefficients(hp_.beta1, hp_.beta2, hp_.eps, info);
    c.correction = info.step == 1 ? 0.0f : static_cast<float>(hp_.gamma * hp_.beta1 / (1.0 - hp_.beta1));
    return c;
  }

  // c ← c/‖c‖ where ‖c‖ > 1.
  static void clip(MarsCoefficients& c, double norm) {
    if (norm > 1.0) c.clip_scale = static_cast<float>(1.0 / norm);
  }

  // ‖c‖ over all parameters: each block summed in order in double, then the
  // blocks in order, so the result is the same for any thread count.
  double corrected_norm(std::span<const float> grads, const float* g_prev, float correction, const StepInfo& info) const {
    const size_t n = size();
    const size_t blocks = (n + kSumOfSquaresBlock - 1) / kSumOfSquaresBlock;
    std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (int64_t b = 0; b < static_cast<int64_t>(blocks); ++b) {
      const size_t begin = static_cast<size_t>(b) * kSumOfSquaresBlock;
      const size_t end = std::min(n, begin + kSumOfSquaresBlock);
      double sum = 0.0;
      for (size_t i = begin; i < end; ++i) {
        double value = mars_corrected_gradient(grads[i], g_prev[i], correction);
        sum += value * value;
      }
      partial[static_cast<size_t>(b)] = sum;
    }
    return std::sqrt(total_of_blocks(info, partial));
  }

  MarsHyperparameters hp_;
  device::Allocation norm_scratch_;  // device placement with clipping only
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<Mars>(
    "MARS-AdamW: AdamW on a variance-reduced gradient g + γ·β1/(1−β1)·(g − g_prev) (Yuan et al. 2024)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
