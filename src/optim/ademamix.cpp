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
// training.zero_stage "m2" builds AdemamixM2Sharded instead: m2 for one
// shard (AdemamixM2Shard) and the rest whole (AdemamixWithoutM2), the same
// per-element math split in two (optim/math/ademamix_math.hpp), host only.
#include <cmath>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "optim/math/ademamix_math.hpp"
#include "optim/optimizer_common.hpp"

namespace emix {
namespace {

constexpr std::string_view kAdemamixName = "ademamix";

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

AdemamixCoefficients coefficients(const AdemamixHyperparameters& hp, const StepInfo& info) {
  AdemamixCoefficients c;
  c.m1 = ema_average(hp.beta1);
  c.m2 = ema_average(half_life_warmup(info.step, hp.beta1, hp.beta3, hp.t_beta3));
  c.m2_no_grad = hp.zero_grad_m2_beta ? Ema{static_cast<float>(*hp.zero_grad_m2_beta), 0.0f} : c.m2;
  c.nu = ema_average(hp.beta2);
  c.inv_bias_correction1 = static_cast<float>(1.0 / bias_correction(hp.beta1, info.step));
  c.inv_sqrt_bias_correction2 = static_cast<float>(1.0 / std::sqrt(bias_correction(hp.beta2, info.step)));
  c.alpha = static_cast<float>(linear_warmup(info.step, hp.alpha, hp.t_alpha));
  c.lr = info.lr;
  c.eps = static_cast<float>(hp.eps);
  return c;
}

// An optimizer that holds m2 (the whole of AdEMAMix, or its m2 alone under
// training.zero_stage "m2"), with its host update.
class AdemamixM2Holder : public ElementwiseOptimizer {
 protected:
  AdemamixM2Holder(const AdemamixHyperparameters& hp, size_t size, std::vector<ParamSegment> segments,
                   std::vector<std::string> buffer_names, Placement placement, std::vector<StateStorage> storage)
      : ElementwiseOptimizer(std::string(kAdemamixName), size, std::move(segments), std::move(buffer_names), placement,
                             std::move(storage)),
        hp_(hp) {}

  // Calls update(i, c, narrow) for every element, where narrow is
  // std::true_type where m2 is stored narrower than a float (update then
  // averages m2 with ademamix_m2_average<true>) and std::false_type
  // elsewhere, then stores the new m2 as m2_dtype holds it.
  template <typename Update>
  void update_and_store_m2(const StepInfo& info, double lr_weight_decay, const Update& update) {
    const AdemamixCoefficients c = coefficients(hp_, info);
    auto wide = [&](size_t i, const AdemamixCoefficients& ci) { update(i, ci, std::false_type{}); };
    auto narrow = [&](size_t i, const AdemamixCoefficients& ci) { update(i, ci, std::true_type{}); };
    switch (hp_.m2_storage) {
      case StateStorage::float32: update_elements(c, lr_weight_decay, wide); break;
      case StateStorage::bfloat16: {
        float* m2 = buffer("m2");
        const uint64_t key = state_rounding_key(info.rounding_seed, static_cast<uint64_t>(info.step));
        update_elements(c, lr_weight_decay, [&](size_t i, const AdemamixCoefficients& ci) {
          narrow(i, ci);
          m2[i] = bf16_round_stochastic(m2[i], rounding_bits(key, info.element_offset + i));
        });
        break;
      }
      case StateStorage::int8_blockwise:
        update_elements(c, lr_weight_decay, wide, Segments::not_int8);
        update_elements(c, lr_weight_decay, narrow, Segments::int8);
        requantize_int8("m2", info);
        break;
    }
  }

  AdemamixHyperparameters hp_;
};

class Ademamix final : public AdemamixM2Holder {
 public:
  static constexpr std::string_view kName = kAdemamixName;

  Ademamix(const AdemamixHyperparameters& hp, size_t size, std::vector<ParamSegment> segments, Placement placement)
      : AdemamixM2Holder(hp, size, std::move(segments), buffer_names(hp), placement, buffer_storage(hp)) {}

  void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) override {
    check_step(params, grads, info);
    float* m1 = hp_.beta1 == 0.0 ? nullptr : buffer("m1");
    float* m2 = buffer("m2");
    float* nu = buffer("nu");
    update_and_store_m2(info, info.lr * hp_.weight_decay, [&](size_t i, const AdemamixCoefficients& c, auto narrow) {
      ademamix_update<decltype(narrow)::value>(params[i], grads[i], m1 == nullptr ? nullptr : m1 + i, m2[i], nu[i], c);
    });
  }

  // State order: m1 (null when β1 = 0), m2 (in data, in bf16 for m2_dtype
  // "bfloat16", in int8 blocks for "int8"), nu (cuda/ademamix_update.cu).
  void step_device(const DeviceStep& step, const StepInfo& info) override {
    check_device_step(step, info);
    float* m1 = hp_.beta1 == 0.0 ? nullptr : buffer("m1");
    device::StateBuffers state{{m1, nullptr, buffer("nu")}};
    const AdemamixCoefficients c = coefficients(hp_, info);
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
};

// training.zero_stage "m2": the first half of the step, m2 over one shard.
class AdemamixM2Shard final : public AdemamixM2Holder {
 public:
  AdemamixM2Shard(const AdemamixHyperparameters& hp, size_t size, std::vector<ParamSegment> segments)
      : AdemamixM2Holder(hp, size, std::move(segments), {"m2"}, Placement::host, {hp.m2_storage}) {}

  void step(std::span<float>, std::span<const float>, const StepInfo&) override {
    throw std::logic_error("AdEMAMix's sharded m2 is updated by update(), not step()");
  }

  // m2_values: the new m2 before its rounding to m2_dtype, which is what the
  // parameter update reads.
  void update(std::span<const float> grads, std::span<float> m2_values, const StepInfo& info) {
    check_step(m2_values, grads, info);
    float* m2 = buffer("m2");
    update_and_store_m2(info, 0.0, [&](size_t i, const AdemamixCoefficients& c, auto narrow) {
      m2_values[i] = m2[i] = ademamix_m2_average<decltype(narrow)::value>(m2[i], grads[i], c);
    });
  }
};

// training.zero_stage "m2": the second half, everything but m2, whole.
class AdemamixWithoutM2 final : public ElementwiseOptimizer {
 public:
  AdemamixWithoutM2(const AdemamixHyperparameters& hp, size_t size, std::vector<ParamSegment> segments)
      : ElementwiseOptimizer(std::string(kAdemamixName), size, std::move(segments),
                             hp.beta1 == 0.0 ? std::vector<std::string>{"nu"} : std::vector<std::string>{"m1", "nu"},
                             Placement::host),
        hp_(hp) {}

  void step(std::span<float>, std::span<const float>, const StepInfo&) override {
    throw std::logic_error("AdEMAMix without m2 is updated by update(), not step()");
  }

  void update(std::span<float> params, std::span<const float> grads, size_t begin, std::span<const float> m2_values,
              const StepInfo& info) {
    check_step(params, grads, info);
    if (begin + m2_values.size() > size()) throw std::logic_error("m2 values beyond the parameters");
    float* m1 = hp_.beta1 == 0.0 ? nullptr : buffer("m1");
    float* nu = buffer("nu");
    auto update = [&](size_t i, const AdemamixCoefficients& c) {
      ademamix_update_with_m2(params[i], grads[i], m1 == nullptr ? nullptr : m1 + i, m2_values[i - begin], nu[i], c);
    };
    update_elements(coefficients(hp_, info), info.lr * hp_.weight_decay, update, Segments::all, begin,
                    begin + m2_values.size());
  }

 private:
  AdemamixHyperparameters hp_;
};

class AdemamixM2Sharded final : public M2ShardedOptimizer {
 public:
  AdemamixM2Sharded(const AdemamixHyperparameters& hp, size_t size, const std::vector<ParamSegment>& segments,
                    size_t m2_begin, size_t m2_end)
      : m2_begin_(m2_begin),
        m2_shard_(hp, m2_end - m2_begin, segments_within(segments, m2_begin, m2_end)),
        rest_(hp, size, segments) {}

  std::string_view name() const override { return kAdemamixName; }
  size_t size() const override { return rest_.size(); }
  uint64_t state_bytes() const override { return m2_shard_.state_bytes() + rest_.state_bytes(); }
  // In the unsplit order: m1, m2, nu.
  std::vector<StateBuffer> state_buffers() override {
    std::vector<StateBuffer> buffers = rest_.state_buffers();
    buffers.insert(buffers.end() - 1, m2_shard_.state_buffers().front());
    return buffers;
  }

  void step(std::span<float>, std::span<const float>, const StepInfo&) override {
    throw std::logic_error("an m2-sharded AdEMAMix steps in two halves (update_m2_shard, update_with_m2)");
  }
  void update_m2_shard(std::span<const float> grads, std::span<float> m2_values, const StepInfo& info) override {
    StepInfo shard = info;
    shard.element_offset += m2_begin_;
    m2_shard_.update(grads, m2_values, shard);
  }
  void update_with_m2(std::span<float> params, std::span<const float> grads, size_t begin,
                      std::span<const float> m2_values, const StepInfo& info) override {
    rest_.update(params, grads, begin, m2_values, info);
  }

 private:
  size_t m2_begin_;
  AdemamixM2Shard m2_shard_;
  AdemamixWithoutM2 rest_;
};

OptimizerSpec ademamix_spec() {
  OptimizerSpec spec = optimizer_spec<Ademamix>(
      "AdEMAMix: Adam plus a slow gradient average mixed in with weight alpha (Pagliardini et al. 2024)",
      read_hyperparameters, to_json);
  spec.build_m2_sharded = [](const Json& json, size_t size, std::vector<ParamSegment> segments, size_t m2_begin,
                             size_t m2_end) -> std::unique_ptr<M2ShardedOptimizer> {
    return std::make_unique<AdemamixM2Sharded>(read_hyperparameters(json), size, segments, m2_begin, m2_end);
  };
  return spec;
}

EMIX_REGISTER_OPTIMIZER(ademamix_spec());

}  // namespace
}  // namespace emix
