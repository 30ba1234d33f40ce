// Lion (Chen, Liang, Huang, Real, Wang, Liu, Pham, Dong, Luong, Hsieh, Lu,
// Le, "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
// Algorithm 2 "Lion with decoupled weight decay"; google/automl lion):
//   c ← β1·m + (1−β1)·g
//   p ← p − lr·(sign(c) + wd·p)
//   m ← β2·m + (1−β2)·g
// Defaults: β1 = 0.9, β2 = 0.99 (the paper's and the official code's);
// lr = 1e-4 (the official code's); weight_decay = 1.0, our choice from the
// paper's rule (Section 5): Lion's update has a larger norm than AdamW's, so
// its lr should be 3–10x smaller and its decoupled decay 3–10x larger to keep
// the decay strength lr·wd. 1e-4 and 1.0 keep lr·wd = 1e-4, the value of this
// project's AdamW defaults (1e-3, 0.1). The official code's default decay is 0.
// Hyperparameters: lr, beta1, beta2, weight_decay. State: m.
#include <memory>

#include "optim/math/lion_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct LionHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double weight_decay;
};

LionHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  LionHyperparameters hp{
      .lr = reader.non_negative("lr", 1e-4),
      .beta1 = reader.beta("beta1", 0.9),
      .beta2 = reader.beta("beta2", 0.99),
      .weight_decay = reader.non_negative("weight_decay", 1.0),
  };
  reader.reject_unknown_keys();
  return hp;
}

Json to_json(const LionHyperparameters& hp) {
  return Json{{"lr", hp.lr}, {"beta1", hp.beta1}, {"beta2", hp.beta2}, {"weight_decay", hp.weight_decay}};
}

class Lion final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "lion";

  Lion(const LionHyperparameters& hp, size_t size, std::vector<ParamSegment> segments, Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), {"m"}, placement), hp_(hp) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m = buffer("m");
    update_elements(coefficients(info), info.lr * hp_.weight_decay,
                    [&](size_t i, const LionCoefficients& k) { lion_update(params[i], grads[i], m[i], k); });
  }

  // State order: m (cuda/lion_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    update_elements_device(step, info, coefficients(info), info.lr * hp_.weight_decay, {{buffer("m")}});
  }

 private:
  LionCoefficients coefficients(const StepInfo& info) const {
    LionCoefficients c;
    c.interpolation = ema_average(hp_.beta1);
    c.m = ema_average(hp_.beta2);
    c.lr = info.lr;
    return c;
  }

  LionHyperparameters hp_;
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<Lion>(
    "Lion: the sign of an interpolated momentum, with decoupled weight decay (Chen et al. 2023)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
