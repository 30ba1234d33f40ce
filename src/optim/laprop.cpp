// LaProp (Ziyin, Wang, Ueda, "LaProp: Separating Momentum and Adaptivity in
// Adam", 2020, Algorithm 1; Z-T-WANG/LaProp-Optimizer laprop.py): Adam with
// the order of momentum and preconditioning swapped, so the momentum averages
// already-normalized gradients:
//   ν ← β2·ν + (1−β2)·g²
//   u = g / (√(ν/(1−β2ᵗ)) + eps)
//   m ← β1·m + (1−β1)·u
//   p ← p − lr·[ m/(1−β1ᵗ) + wd·p ]
// Differences from the official code, on purpose: (1) weight decay is
// AdamW's, lr·wd·p from the parameter before the step; the official code
// subtracts wd·p (not scaled by lr) after the step. (2) The official code
// folds lr into the momentum (m ← β1·m + (1−β1)·lr·u, divided by an average
// of past lrs); with a constant lr that is the update above exactly, and
// under a schedule this form applies the schedule's lr to the whole
// averaged step, as AdamW does. The centered and amsgrad variants are not
// implemented.
// Defaults: lr = 4e-4, β1 = 0.9, β2 = 0.999, eps = 1e-15 (the official
// code's: |u| ≤ √((1−β2ᵗ)/(1−β2)) whatever eps, so eps only guards 0/0);
// weight_decay = 0.1 (this project's AdamW default, same units).
// Hyperparameters: lr, beta1, beta2, eps, weight_decay. State: m, nu.
#include <cmath>
#include <memory>

#include "optim/math/laprop_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct LapropHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
};

LapropHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  LapropHyperparameters hp{
      .lr = reader.non_negative("lr", 4e-4),
      .beta1 = reader.beta("beta1", 0.9),
      .beta2 = reader.beta("beta2", 0.999),
      .eps = reader.positive("eps", 1e-15),
      .weight_decay = reader.non_negative("weight_decay", 0.1),
  };
  reader.reject_unknown_keys();
  return hp;
}

Json to_json(const LapropHyperparameters& hp) {
  return Json{
      {"lr", hp.lr}, {"beta1", hp.beta1}, {"beta2", hp.beta2}, {"eps", hp.eps}, {"weight_decay", hp.weight_decay}};
}

class Laprop final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "laprop";

  Laprop(const LapropHyperparameters& hp, size_t size, std::vector<ParamSegment> segments, Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), {"m", "nu"}, placement), hp_(hp) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m = buffer("m");
    float* nu = buffer("nu");
    update_elements(coefficients(info), info.lr * hp_.weight_decay, [&](size_t i, const LapropCoefficients& c) {
      laprop_update(params[i], grads[i], m[i], nu[i], c);
    });
  }

  // State order: m, nu (cuda/laprop_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    update_elements_device(step, info, coefficients(info), info.lr * hp_.weight_decay,
                           {{buffer("m"), buffer("nu")}});
  }

 private:
  LapropCoefficients coefficients(const StepInfo& info) const {
    LapropCoefficients c;
    c.nu = ema_average(hp_.beta2);
    c.m = ema_average(hp_.beta1);
    c.inv_sqrt_bias_correction2 = static_cast<float>(1.0 / std::sqrt(bias_correction(hp_.beta2, info.step)));
    c.eps = static_cast<float>(hp_.eps);
    c.step_size = static_cast<float>(info.lr / bias_correction(hp_.beta1, info.step));
    return c;
  }

  LapropHyperparameters hp_;
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<Laprop>(
    "LaProp: momentum of the RMS-normalized gradient (Ziyin et al. 2020)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
