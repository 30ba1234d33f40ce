// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR
// 2019), exactly as torch.optim.AdamW computes it:
//   m1 ← β1·m1 + (1−β1)·g;  ν ← β2·ν + (1−β2)·g²
//   p  ← p·(1 − lr·wd) − lr·(m1/(1−β1ᵗ)) / (√ν/√(1−β2ᵗ) + eps)
// Hyperparameters: lr, beta1, beta2, eps, weight_decay. State: m1, nu.
#include <cmath>
#include <memory>

#include "optim/adamw_coefficients.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct AdamwHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
};

AdamwHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  AdamwHyperparameters hp{
      .lr = reader.non_negative("lr", 1e-3),
      .beta1 = reader.beta("beta1", 0.9),
      .beta2 = reader.beta("beta2", 0.999),
      .eps = reader.positive("eps", 1e-8),
      .weight_decay = reader.non_negative("weight_decay", 0.1),
  };
  reader.reject_unknown_keys();
  return hp;
}

Json to_json(const AdamwHyperparameters& hp) {
  return Json{
      {"lr", hp.lr}, {"beta1", hp.beta1}, {"beta2", hp.beta2}, {"eps", hp.eps}, {"weight_decay", hp.weight_decay}};
}

class Adamw final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "adamw";

  Adamw(const AdamwHyperparameters& hp, size_t size, std::vector<ParamSegment> segments, Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), {"m1", "nu"}, placement), hp_(hp) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m1 = buffer("m1");
    float* nu = buffer("nu");
    update_elements(adamw_coefficients(hp_.beta1, hp_.beta2, hp_.eps, info), info.lr * hp_.weight_decay,
                    [&](size_t i, const AdamwCoefficients& c) { adamw_update(params[i], grads[i], m1[i], nu[i], c); });
  }

  // State order: m1, nu (cuda/adamw_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    update_elements_device(step, info, adamw_coefficients(hp_.beta1, hp_.beta2, hp_.eps, info),
                           info.lr * hp_.weight_decay, {{buffer("m1"), buffer("nu")}});
  }

 private:
  AdamwHyperparameters hp_;
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<Adamw>(
    "Adam with decoupled weight decay (torch.optim.AdamW)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
