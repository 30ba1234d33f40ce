// Simplified-AdEMAMix (Morwani, Vyas, Zhang, Kakade, "Connections between
// Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD Variants", 2025),
// as the authors' DepenM/Simplified-AdEMAMix simplified_AdEMAMix.py computes it:
//   m ← β1(t)·m + g   (an accumulator: no 1−β1 factor)
//   ν ← β2·ν + (1−β2)·g²
//   n ← β1(t)·n + 1;  d ← β2·d + (1−β2)   (running scalars)
//   u = (α·g + m) / (√ν + eps·√d);  u ← u/n if bias_correction1;  u ← u·√d if bias_correction2
//   p ← p − lr·(u + wd·p)
// where β1(t) goes from min_beta1 to beta1 linearly in half-life over t_beta1
// steps (optimizer_common.hpp); a null t_beta1 means no warmup.
// Hyperparameters: lr, beta1, beta2, alpha, eps, weight_decay, t_beta1,
// min_beta1, bias_correction1, bias_correction2. State: m, nu; scalars n, d.
#include <cmath>
#include <memory>
#include <optional>

#include "optim/math/simplified_ademamix_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct SimplifiedAdemamixHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double alpha;
  double eps;
  double weight_decay;
  std::optional<int64_t> t_beta1;
  double min_beta1;
  bool bias_correction1;
  bool bias_correction2;
};

SimplifiedAdemamixHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  SimplifiedAdemamixHyperparameters hp{
      .lr = reader.non_negative("lr", 1e-3),
      .beta1 = reader.beta("beta1", 0.99),
      .beta2 = reader.beta("beta2", 0.95),
      .alpha = reader.non_negative("alpha", 0.0),
      .eps = reader.positive("eps", 1e-8),
      .weight_decay = reader.non_negative("weight_decay", 0.0),
      .t_beta1 = reader.warmup_steps("t_beta1"),
      .min_beta1 = reader.beta("min_beta1", 0.9),
      .bias_correction1 = reader.flag("bias_correction1", false),
      .bias_correction2 = reader.flag("bias_correction2", true),
  };
  reader.reject_unknown_keys();
  return hp;
}

Json to_json(const SimplifiedAdemamixHyperparameters& hp) {
  return Json{{"lr", hp.lr},
              {"beta1", hp.beta1},
              {"beta2", hp.beta2},
              {"alpha", hp.alpha},
              {"eps", hp.eps},
              {"weight_decay", hp.weight_decay},
              {"t_beta1", warmup_steps_json(hp.t_beta1)},
              {"min_beta1", hp.min_beta1},
              {"bias_correction1", hp.bias_correction1},
              {"bias_correction2", hp.bias_correction2}};
}

class SimplifiedAdemamix final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "simplified_ademamix";

  SimplifiedAdemamix(const SimplifiedAdemamixHyperparameters& hp, size_t size, std::vector<ParamSegment> segments,
                     Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), {"m", "nu"}, placement), hp_(hp) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m = buffer("m");
    float* nu = buffer("nu");
    update_elements(coefficients(info), info.lr * hp_.weight_decay,
                    [&](size_t i, const SimplifiedAdemamixCoefficients& c) {
                      simplified_ademamix_update(params[i], grads[i], m[i], nu[i], c);
                    });
  }

  // State order: m, nu (cuda/simplified_ademamix_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    update_elements_device(step, info, coefficients(info), info.lr * hp_.weight_decay,
                           {{buffer("m"), buffer("nu")}});
  }

  // n and d sum over the history of β1(t) and β2; they are saved rather than
  // recomputed from the step so that a resumed run continues the very sums
  // it had, whatever its hyperparameters were before.
  Json scalar_state() const override { return Json{{"n", n_}, {"d", d_}}; }

  void load_scalar_state(const Json& state) override {
    JsonObjectReader reader(state, "optimizer_state");
    double n = reader.required<double>("n");
    double d = reader.required<double>("d");
    reader.reject_unknown_keys();
    n_ = n;
    d_ = d;
  }

 private:
  // Advances n and d: call once per step.
  SimplifiedAdemamixCoefficients coefficients(const StepInfo& info) {
    double beta1 = half_life_warmup(info.step, hp_.min_beta1, hp_.beta1, hp_.t_beta1);
    n_ = beta1 * n_ + 1.0;
    d_ = hp_.beta2 * d_ + (1.0 - hp_.beta2);
    double step_size = info.lr;
    if (hp_.bias_correction1) step_size /= n_;
    if (hp_.bias_correction2) step_size *= std::sqrt(d_);
    SimplifiedAdemamixCoefficients c;
    c.m = Ema{static_cast<float>(beta1), 1.0f};
    c.nu = ema_average(hp_.beta2);
    c.alpha = static_cast<float>(hp_.alpha);
    c.eps_sqrt_d = static_cast<float>(hp_.eps * std::sqrt(d_));
    c.step_size = static_cast<float>(step_size);
    return c;
  }

  SimplifiedAdemamixHyperparameters hp_;
  double n_ = 0.0;
  double d_ = 0.0;
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<SimplifiedAdemamix>(
    "Simplified-AdEMAMix: one momentum accumulator plus alpha times the gradient (Morwani et al. 2025)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
