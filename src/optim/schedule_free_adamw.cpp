// Schedule-Free AdamW (Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky,
// "The Road Less Scheduled", NeurIPS 2024, Algorithm 1;
// facebookresearch/schedule_free adamw_schedulefree.py):
//   y_t = (1−β1)·z_t + β1·x_t                (the parameter buffer holds y)
//   ν ← β2·ν + (1−β2)·g²                     (g is the gradient at y_t)
//   γ_t = lr·min(1, t/warmup_steps)
//   z_{t+1} = z_t − γ_t·[ g/(√(ν/(1−β2ᵗ)) + eps) + wd·y_t ]
//   c_{t+1} = w_t / Σ_{i≤t} w_i,  w_t = t^r · (max_{i≤t} γ_i)^weight_lr_power
//   x_{t+1} = (1 − c_{t+1})·x_t + c_{t+1}·z_{t+1};   x_1 = z_1 = the initial parameters
// With the defaults (r = 0, weight_lr_power = 2) and a non-decreasing lr,
// c_{t+1} = γ_t² / Σ γ_i², the paper's form; the max is the official
// code's, and keeps the weights from shrinking should the lr decrease.
// Schedule-free needs no lr schedule: the trainer's should be constant, and
// warmup_steps is the optimizer's own linear warmup (γ_t above, null for
// none), which multiplies the trainer's lr.
// Bias correction: by default ν is bias-corrected as in AdamW (ν̂ above).
// bias_correction_in_lr = true gives the official code exactly
// (adamw_schedulefree.py, and adamw_schedulefree_paper.py, "the version used
// in the published experiments"): ν is not corrected and instead
// γ_t = lr·min(1, t/warmup_steps)·√(1−β2ᵗ), which also scales the weight
// decay, eps and the averaging weights (early iterates weigh less in x).
// The two differ over the first ~1/(1−β2) steps, and through those steps'
// share of x.
// y is updated in place (schedule_free_math.hpp has the derivation); x is
// materialized only by to_eval_params: x = y + (1 − 1/β1)·(z − y).
// Defaults: lr = 2.5e-3, β1 = 0.9, β2 = 0.999, eps = 1e-8, r = 0,
// weight_lr_power = 2, no warmup (the official code's; its warmup_steps = 0
// is our null); weight_decay = 0.1 (this project's AdamW default; the
// official default is 0).
// Hyperparameters: lr, beta1 (in (0, 1): x = (y − (1−β1)·z)/β1), beta2, eps,
// weight_decay, warmup_steps, r, weight_lr_power, bias_correction_in_lr.
// State: z, nu; scalars steps (t so far), weight_sum (Σ w_i), lr_max
// (max γ_i) and eval_mode (whether the buffer holds x).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "core/error.hpp"
#include "optim/math/schedule_free_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct ScheduleFreeHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  std::optional<int64_t> warmup_steps;
  double r;
  double weight_lr_power;
  bool bias_correction_in_lr;
};

ScheduleFreeHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  ScheduleFreeHyperparameters hp{
      .lr = reader.non_negative("lr", 2.5e-3),
      .beta1 = reader.beta("beta1", 0.9),
      .beta2 = reader.beta("beta2", 0.999),
      .eps = reader.positive("eps", 1e-8),
      .weight_decay = reader.non_negative("weight_decay", 0.1),
      .warmup_steps = reader.warmup_steps("warmup_steps"),
      .r = reader.non_negative("r", 0.0),
      .weight_lr_power = reader.non_negative("weight_lr_power", 2.0),
      .bias_correction_in_lr = reader.flag("bias_correction_in_lr", false),
  };
  reader.reject_unknown_keys();
  // x = (y − (1−β1)·z)/β1: β1 = 0 would make y = z and lose x.
  if (hp.beta1 == 0.0) fail("config key 'optimizer.beta1' must be in (0, 1) for schedule_free_adamw, got 0");
  return hp;
}

Json to_json(const ScheduleFreeHyperparameters& hp) {
  return Json{{"lr", hp.lr},
              {"beta1", hp.beta1},
              {"beta2", hp.beta2},
              {"eps", hp.eps},
              {"weight_decay", hp.weight_decay},
              {"warmup_steps", warmup_steps_json(hp.warmup_steps)},
              {"r", hp.r},
              {"weight_lr_power", hp.weight_lr_power},
              {"bias_correction_in_lr", hp.bias_correction_in_lr}};
}

class ScheduleFreeAdamw final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "schedule_free_adamw";

  ScheduleFreeAdamw(const ScheduleFreeHyperparameters& hp, size_t size, std::vector<ParamSegment> segments,
                    Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), {"z", "nu"}, placement), hp_(hp) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    check_train_mode();
    float* z = buffer("z");
    float* nu = buffer("nu");
    if (steps_ == 0) std::copy(params.begin(), params.end(), z);  // z_1 = x_1 = y_1
    const double lr = scheduled_lr(info);
    update_elements(coefficients(info, lr), lr * hp_.weight_decay,
                    [&](size_t i, const ScheduleFreeCoefficients& k) {
                      schedule_free_update(params[i], grads[i], z[i], nu[i], k);
                    });
  }

  // State order: z, nu (cuda/schedule_free_adamw_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    check_train_mode();
    float* z = buffer("z");
    if (steps_ == 0) device::memory_ops().copy_on_stream(z, step.master, size() * sizeof(float), step.stream);
    const double lr = scheduled_lr(info);
    update_elements_device(step, info, coefficients(info, lr), lr * hp_.weight_decay, {{z, buffer("nu")}});
  }

  bool has_eval_params() const override { return true; }

  void to_eval_params(std::span<float> params) override {
    if (eval_mode_) return;
    convert(params, eval_weight());
    eval_mode_ = true;
  }

  void to_train_params(std::span<float> params) override {
    if (!eval_mode_) return;
    convert(params, train_weight());
    eval_mode_ = false;
  }

  void to_eval_params_device(const DeviceStep& step) override {
    if (eval_mode_) return;
    convert_device(step, eval_weight());
    eval_mode_ = true;
  }

  void to_train_params_device(const DeviceStep& step) override {
    if (!eval_mode_) return;
    convert_device(step, train_weight());
    eval_mode_ = false;
  }

  // The running scalars are saved rather than recomputed from the step so
  // that a resumed run continues the very averages it had.
  Json scalar_state() const override {
    return Json{{"steps", steps_}, {"weight_sum", weight_sum_}, {"lr_max", lr_max_}, {"eval_mode", eval_mode_}};
  }

  void load_scalar_state(const Json& state) override {
    JsonObjectReader reader(state, "optimizer_state");
    auto steps = reader.required<int64_t>("steps");
    auto weight_sum = reader.required<double>("weight_sum");
    auto lr_max = reader.required<double>("lr_max");
    auto eval_mode = reader.required<bool>("eval_mode");
    reader.reject_unknown_keys();
    if (steps < 0) fail("optimizer_state.steps must be >= 0, got {}", steps);
    steps_ = steps;
    weight_sum_ = weight_sum;
    lr_max_ = lr_max;
    eval_mode_ = eval_mode;
  }

 private:
  // γ_t: the trainer's lr times the warmup (and √(1−β2ᵗ) where it carries
  // the bias correction).
  double scheduled_lr(const StepInfo& info) const {
    double lr = linear_warmup(info.step, info.lr, hp_.warmup_steps);
    if (hp_.bias_correction_in_lr) lr *= std::sqrt(bias_correction(hp_.beta2, info.step));
    return lr;
  }

  // Advances the running scalars: call once per step, with lr = γ_t.
  ScheduleFreeCoefficients coefficients(const StepInfo& info, double lr) {
    const double correction2 = bias_correction(hp_.beta2, info.step);
    lr_max_ = std::max(lr_max_, lr);
    const double weight = std::pow(static_cast<double>(info.step), hp_.r) * std::pow(lr_max_, hp_.weight_lr_power);
    weight_sum_ += weight;
    const double average_weight = weight_sum_ > 0.0 ? weight / weight_sum_ : 0.0;
    ++steps_;

    ScheduleFreeCoefficients c;
    c.nu = ema_average(hp_.beta2);
    c.inv_sqrt_bias_correction2 = hp_.bias_correction_in_lr ? 1.0f : static_cast<float>(1.0 / std::sqrt(correction2));
    c.eps = static_cast<float>(hp_.eps);
    c.lr = static_cast<float>(lr);
    c.average_weight = static_cast<float>(average_weight);
    c.y_step_weight = static_cast<float>(hp_.beta1 * (1.0 - average_weight) - 1.0);
    return c;
  }

  void check_train_mode() const {
    if (eval_mode_) {
      throw std::logic_error("schedule_free_adamw: step while the parameters hold x; call to_train_params first");
    }
  }

  // The weights of schedule_free_convert: y → x and x → y.
  float eval_weight() const { return static_cast<float>(1.0 - 1.0 / hp_.beta1); }
  float train_weight() const { return static_cast<float>(1.0 - hp_.beta1); }

  // params[i] ← params[i] + weight·(z[i] − params[i]). Before the first step
  // z is not set yet, and x = y = z anyway.
  void convert(std::span<float> params, float weight) {
    if (params.size() != size()) {
      throw std::logic_error(fmt::format("schedule_free_adamw over {} parameters was given {} to convert", size(),
                                         params.size()));
    }
    if (steps_ == 0) return;
    const float* z = buffer("z");
    const auto n = static_cast<int64_t>(params.size());
#pragma omp parallel for schedule(static) if (n >= (int64_t{1} << 14))
    for (int64_t i = 0; i < n; ++i) params[i] = schedule_free_convert(params[i], z[i], weight);
  }

  void convert_device(const DeviceStep& step, float weight) {
    check_device_conversion(step);
    if (steps_ == 0) return;
    device_pass<device::ConvertFunction>("convert")(buffer("z"), step, weight, size());
  }

  ScheduleFreeHyperparameters hp_;
  int64_t steps_ = 0;
  double weight_sum_ = 0.0;
  double lr_max_ = 0.0;
  bool eval_mode_ = false;
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<ScheduleFreeAdamw>(
    "Schedule-Free AdamW: no lr schedule; trains at y, evaluates at the average x (Defazio et al. 2024)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
