// AdEMAMix (Pagliardini, Ablin, Grangier, "The AdEMAMix Optimizer: Better,
// Faster, Older", 2024, Algorithm 1), as the authors' apple/ml-ademamix
// pytorch/ademamix.py computes it:
//   m1 ← β1·m1 + (1−β1)·g   (β1 = 0: m1 is g itself and is not stored)
//   m2 ← β3(t)·m2 + (1−β3(t))·g   (not bias-corrected)
//   ν  ← β2·ν + (1−β2)·g²
//   p  ← p − lr·[ (m1/(1−β1ᵗ) + α(t)·m2) / (√ν/√(1−β2ᵗ) + eps) + wd·p ]
// with the warmups α(t) = α·min(1, t/t_alpha) and β3(t) going from β1 to β3
// linearly in half-life over t_beta3 steps (optimizer_common.hpp); a null
// t_alpha or t_beta3 means no warmup.
// Hyperparameters: lr, beta1, beta2, beta3, alpha, eps, weight_decay,
// t_alpha, t_beta3, m2_dtype, and zero_grad_m2_beta (null: off), a guard for elements
// whose gradient is exactly zero for long stretches (rare-token embedding
// rows): m2 decays at that rate there instead of β3(t), so the update cannot
// grow as ν decays. State: m1 (only when β1 > 0), m2, nu.
// m2_dtype is how m2 is stored on the device:
//   "float32"   4 bytes per parameter.
//   "bfloat16"  2 bytes (m2 is a quarter of the fused step's traffic). Each
//               step's new m2 is rounded stochastically
//               (kernels/bf16_rounding.hpp) with the state stream's bits of
//               (seed, step, global index), unbiased, so the slow average
//               keeps integrating gradients far smaller than a bf16 gap.
//   "int8"      about 1 byte: blocks of 256 with one scale each and the
//               dynamic signed map (optim/math/blockwise_int8.hpp), rounded
//               stochastically with the same bits; the biases' and LayerNorm
//               parameters' m2 stays in fp32 (ElementwiseOptimizer).
// On the host m2 stays a float buffer holding the same values, rounded
// with the same bits (StepInfo's rounding_seed and element_offset), so both
// placements compute the same m2, and checkpoints (m2 as floats) move
// between them and between formats.
#include <cmath>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "optim/math/ademamix_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

struct AdemamixHyperparameters {
  double lr;
  double beta1;
  double beta2;
  double beta3;
  double alpha;
  double eps;
  double weight_decay;
  std::optional<int64_t> t_alpha;
  std::optional<int64_t> t_beta3;
  std::optional<double> zero_grad_m2_beta;
  StateStorage m2_storage;
};

constexpr std::pair<std::string_view, StateStorage> kM2Dtypes[] = {
    {"float32", StateStorage::float32}, {"bfloat16", StateStorage::bfloat16}, {"int8", StateStorage::int8_blockwise}};

StateStorage m2_storage_of(std::string_view dtype) {
  for (const auto& [name, storage] : kM2Dtypes) {
    if (name == dtype) return storage;
  }
  throw std::logic_error("unknown m2_dtype");
}

std::string_view m2_dtype_of(StateStorage storage) {
  for (const auto& [name, candidate] : kM2Dtypes) {
    if (candidate == storage) return name;
  }
  throw std::logic_error("unknown m2 storage");
}

AdemamixHyperparameters read_hyperparameters(const Json& json) {
  HyperparameterReader reader(json);
  AdemamixHyperparameters hp{
      .lr = reader.non_negative("lr", 1e-3),
      .beta1 = reader.beta("beta1", 0.9),
      .beta2 = reader.beta("beta2", 0.999),
      .beta3 = reader.beta("beta3", 0.9999),
      .alpha = reader.non_negative("alpha", 8.0),
      .eps = reader.positive("eps", 1e-8),
      .weight_decay = reader.non_negative("weight_decay", 0.1),
      .t_alpha = reader.warmup_steps("t_alpha"),
      .t_beta3 = reader.warmup_steps("t_beta3"),
      .zero_grad_m2_beta = reader.optional_beta("zero_grad_m2_beta"),
      .m2_storage = m2_storage_of(reader.one_of("m2_dtype", "float32", {"float32", "bfloat16", "int8"})),
  };
  reader.reject_unknown_keys();
  return hp;
}

Json to_json(const AdemamixHyperparameters& hp) {
  return Json{{"lr", hp.lr},
              {"beta1", hp.beta1},
              {"beta2", hp.beta2},
              {"beta3", hp.beta3},
              {"alpha", hp.alpha},
              {"eps", hp.eps},
              {"weight_decay", hp.weight_decay},
              {"t_alpha", warmup_steps_json(hp.t_alpha)},
              {"t_beta3", warmup_steps_json(hp.t_beta3)},
              {"zero_grad_m2_beta", hp.zero_grad_m2_beta ? Json(*hp.zero_grad_m2_beta) : Json(nullptr)},
              {"m2_dtype", m2_dtype_of(hp.m2_storage)}};
}

std::vector<std::string> buffer_names(const AdemamixHyperparameters& hp) {
  if (hp.beta1 == 0.0) return {"m2", "nu"};
  return {"m1", "m2", "nu"};
}

std::vector<StateStorage> buffer_storage(const AdemamixHyperparameters& hp) {
  if (hp.beta1 == 0.0) return {hp.m2_storage, StateStorage::float32};
  return {StateStorage::float32, hp.m2_storage, StateStorage::float32};
}

class Ademamix final : public ElementwiseOptimizer {
 public:
  static constexpr std::string_view kName = "ademamix";

  Ademamix(const AdemamixHyperparameters& hp, size_t size, std::vector<ParamSegment> segments, Placement placement)
      : ElementwiseOptimizer(std::string(kName), size, std::move(segments), buffer_names(hp), placement,
                             buffer_storage(hp)),
        hp_(hp) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m1 = hp_.beta1 == 0.0 ? nullptr : buffer("m1");
    float* m2 = buffer("m2");
    float* nu = buffer("nu");
    const AdemamixCoefficients c = coefficients(info);
    const double lr_weight_decay = info.lr * hp_.weight_decay;
    auto update_float = [&](size_t i, const AdemamixCoefficients& ci) {
      ademamix_update(params[i], grads[i], m1 == nullptr ? nullptr : m1 + i, m2[i], nu[i], ci);
    };
    auto update_narrow = [&](size_t i, const AdemamixCoefficients& ci) {
      ademamix_update<true>(params[i], grads[i], m1 == nullptr ? nullptr : m1 + i, m2[i], nu[i], ci);
    };
    switch (hp_.m2_storage) {
      case StateStorage::float32: update_elements(c, lr_weight_decay, update_float); break;
      case StateStorage::bfloat16: {
        const uint64_t key = state_rounding_key(info.rounding_seed, static_cast<uint64_t>(info.step));
        update_elements(c, lr_weight_decay, [&](size_t i, const AdemamixCoefficients& ci) {
          update_narrow(i, ci);
          m2[i] = bf16_round_stochastic(m2[i], rounding_bits(key, info.element_offset + i));
        });
        break;
      }
      case StateStorage::int8_blockwise:
        update_elements(c, lr_weight_decay, update_float, Segments::not_int8);
        update_elements(c, lr_weight_decay, update_narrow, Segments::int8);
        requantize_int8("m2", info);
        break;
    }
  }

  // State order: m1 (null when β1 = 0), m2 (in data, in bf16 for m2_dtype
  // "bfloat16", in int8 blocks for "int8"), nu (cuda/ademamix_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    float* m1 = hp_.beta1 == 0.0 ? nullptr : buffer("m1");
    device::StateBuffers state{{m1, nullptr, buffer("nu")}};
    const AdemamixCoefficients c = coefficients(info);
    const double lr_weight_decay = info.lr * hp_.weight_decay;
    switch (hp_.m2_storage) {
      case StateStorage::float32: state.data[1] = buffer("m2"); break;
      case StateStorage::bfloat16: state.bf16[1] = device_bf16_buffer("m2"); break;
      case StateStorage::int8_blockwise:
        set_int8_device_buffer(state, 1, "m2");
        update_int8_device(step, info, c, lr_weight_decay, state);
        break;
    }
    update_elements_device(step, info, c, lr_weight_decay, state);
  }

 private:
  AdemamixCoefficients coefficients(const StepInfo& info) const {
    AdemamixCoefficients c;
    c.m1 = ema_average(hp_.beta1);
    c.m2 = ema_average(half_life_warmup(info.step, hp_.beta1, hp_.beta3, hp_.t_beta3));
    c.m2_no_grad = hp_.zero_grad_m2_beta ? Ema{static_cast<float>(*hp_.zero_grad_m2_beta), 0.0f} : c.m2;
    c.nu = ema_average(hp_.beta2);
    c.inv_bias_correction1 = static_cast<float>(1.0 / bias_correction(hp_.beta1, info.step));
    c.inv_sqrt_bias_correction2 = static_cast<float>(1.0 / std::sqrt(bias_correction(hp_.beta2, info.step)));
    c.alpha = static_cast<float>(linear_warmup(info.step, hp_.alpha, hp_.t_alpha));
    c.lr = info.lr;
    c.eps = static_cast<float>(hp_.eps);
    return c;
  }

  AdemamixHyperparameters hp_;
};

EMIX_REGISTER_OPTIMIZER(optimizer_spec<Ademamix>(
    "AdEMAMix: Adam plus a slow gradient average mixed in with weight alpha (Pagliardini et al. 2024)",
    read_hyperparameters, to_json));

}  // namespace
}  // namespace emix
