#pragma once
// Host-side pieces shared by the elementwise optimizers: reading their
// hyperparameters with range checks, the warmups of the AdEMAMix family's
// hyperparameters, and a base class that owns the state buffers (in host or
// device memory) and runs an update over the weight-decay segments, on the
// host or through the optimizer's registered CUDA update.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/json_reader.hpp"
#include "kernels/bf16_rounding.hpp"
#include "optim/device_backend.hpp"
#include "optim/optimizer.hpp"

namespace emix {

// Reads one optimizer's hyperparameters; errors name "optimizer.<key>".
// Missing and null keys give the fallback.
class HyperparameterReader {
 public:
  explicit HyperparameterReader(const Json& hyperparameters) : reader_(hyperparameters, "optimizer") {}

  double non_negative(std::string_view key, double fallback);
  double positive(std::string_view key, double fallback);
  // A decay rate, in [0, 1).
  double beta(std::string_view key, double fallback);
  // A decay rate in [0, 1), or nullopt when null or absent.
  std::optional<double> optional_beta(std::string_view key);
  bool flag(std::string_view key, bool fallback) { return reader_.get<bool>(key, fallback); }
  // One of `allowed`; anything else is an error listing them.
  std::string one_of(std::string_view key, std::string_view fallback, std::initializer_list<std::string_view> allowed);
  // A warmup length of at least one step; null or absent means no warmup.
  std::optional<int64_t> warmup_steps(std::string_view key);
  // Throws for a key that no read asked for, suggesting the closest valid one.
  void reject_unknown_keys() const { reader_.reject_unknown_keys(); }

 private:
  JsonObjectReader reader_;
};

// The JSON form of an optional warmup length: null for none.
Json warmup_steps_json(std::optional<int64_t> steps);
// Reads a warmup length back from normalized hyperparameters.
std::optional<int64_t> warmup_steps_from_json(const Json& value);

// 1 − βᵗ: the weight an average started at zero has gathered after t steps.
double bias_correction(double beta, int64_t step);

// end·min(1, t/T), or end throughout when there is no warmup (AdEMAMix's α).
double linear_warmup(int64_t step, double end, std::optional<int64_t> warmup);

// A decay rate warmed up linearly in half-life, from `start` at t = 0 to
// `end` at t = T (AdEMAMix's β3, Simplified-AdEMAMix's β1): with
// f(β) = ln 0.5 / ln(β + 1e-8) − 1 and f⁻¹(h) = 0.5^(1/(h+1)),
// β(t) = f⁻¹((1 − t/T)·f(start) + (t/T)·f(end)) for t < T, else end.
// Linear in β itself would spend the warmup at short memories: the half-life
// of β grows like 1/(1 − β).
double half_life_warmup(int64_t step, double start, double end, std::optional<int64_t> warmup);

// An optimizer whose update is elementwise: it owns named state buffers of
// size() zero-initialized floats each, and applies weight decay per segment.
// On device placement the buffers are device memory, with host mirrors for
// state_buffers() allocated when first needed. Buffers named in
// `device_bf16_buffers` are stored in bf16 on the device (2 bytes per
// element); their mirrors are floats holding the same values exactly, so
// checkpoints do not depend on the placement. Host placement keeps them in
// floats: the optimizer itself keeps their values bf16 there.
class ElementwiseOptimizer : public Optimizer {
 public:
  std::string_view name() const override { return name_; }
  Placement placement() const override { return placement_; }
  size_t size() const override { return size_; }
  size_t state_bytes_per_parameter() const override;
  std::vector<StateBuffer> state_buffers() override;
  // Device → host widens the bf16 buffers exactly; host → device rounds
  // them to nearest even, which leaves values written by a bf16 run (every
  // checkpoint of one, on either placement) unchanged.
  void copy_state_to_host() override;
  void copy_state_to_device() override;

 protected:
  ElementwiseOptimizer(std::string name, size_t size, std::vector<ParamSegment> segments,
                       std::vector<std::string> buffer_names, Placement placement,
                       const std::vector<std::string>& device_bf16_buffers = {});

  // The named buffer where the optimizer keeps its state: host memory, or
  // device memory on device placement (not for a buffer stored in bf16 there).
  float* buffer(std::string_view name);
  // A buffer stored in bf16 on the device: its bit patterns, device memory.
  uint16_t* device_bf16_buffer(std::string_view name);
  // Throw std::logic_error when a step's arguments do not fit the optimizer
  // or its placement.
  void check_step(std::span<float> params, std::span<const float> grads, const StepInfo& info) const;
  void check_device_step(const DeviceStep& step, const StepInfo& info) const;
  void check_device_conversion(const DeviceStep& step) const;

  // Calls update(i, c) for every element i, where c is `coefficients` with
  // its lr_weight_decay set to `lr_weight_decay` on weight-decay segments and
  // to 0 elsewhere. Elements are independent, so the result does not depend
  // on how OpenMP splits the loop.
  template <typename Coefficients, typename Update>
  void update_elements(Coefficients coefficients, double lr_weight_decay, const Update& update) const {
    for (const ParamSegment& segment : segments_) {
      coefficients.lr_weight_decay = segment_lr_weight_decay(segment, lr_weight_decay);
      const auto begin = static_cast<int64_t>(segment.offset);
      const auto end = begin + static_cast<int64_t>(segment.count);
#pragma omp parallel for schedule(static) if (segment.count >= kMinParallelElements)
      for (int64_t i = begin; i < end; ++i) update(static_cast<size_t>(i), coefficients);
    }
  }

  // The device counterpart: one launch of the fused update registered under
  // name() per segment, with the same per-segment coefficients. Sets the
  // rounding key of the bf16 state (device_backend.hpp) from
  // step.rounding_seed.
  template <typename Coefficients>
  void update_elements_device(const DeviceStep& step, const StepInfo& info, Coefficients coefficients,
                              double lr_weight_decay, device::StateBuffers state) const {
    auto* update = device::find_function<device::UpdateFunction<Coefficients>>(name_);
    if (update == nullptr) fail_no_device_update();
    const uint64_t key = rounding_key(step.rounding_seed, static_cast<uint64_t>(info.step));
    state.bf16_rounding_key = state_rounding_key(step.rounding_seed, static_cast<uint64_t>(info.step));
    for (const ParamSegment& segment : segments_) {
      if (segment.count == 0) continue;
      coefficients.lr_weight_decay = segment_lr_weight_decay(segment, lr_weight_decay);
      update(coefficients, state, step, key, segment.offset, segment.count);
    }
  }

  // A registered device pass "<name>.<pass>" of type Function; throws
  // "<name> has no CUDA update" when it is missing.
  template <typename Function>
  Function* device_pass(std::string_view pass) const {
    auto* function = device::find_function<Function>(name_ + "." + std::string(pass));
    if (function == nullptr) fail_no_device_update();
    return function;
  }

 private:
  static float segment_lr_weight_decay(const ParamSegment& segment, double lr_weight_decay) {
    return static_cast<float>(segment.weight_decay ? lr_weight_decay : 0.0);
  }
  [[noreturn]] void fail_no_device_update() const;
  void allocate_mirrors();
  size_t index_of(std::string_view name) const;

  // Below this, waking the thread team costs more than the update itself
  // (a model has many small bias and LayerNorm segments).
  static constexpr size_t kMinParallelElements = size_t{1} << 14;

  std::string name_;
  size_t size_;
  std::vector<ParamSegment> segments_;
  std::vector<std::string> buffer_names_;
  std::vector<bool> device_bf16_;  // per buffer: stored in bf16 on the device
  Placement placement_;
  // Host placement: the state. Device placement: the mirrors, empty until
  // state_buffers() or copy_state_to_host() first needs them.
  std::vector<std::vector<float>> buffers_;
  std::vector<device::Allocation> device_buffers_;  // device placement only
};

// The registry entry of an optimizer class constructed from (hyperparameters,
// size, segments, placement), given the functions that read its hyperparameters from
// JSON (validating them and filling defaults) and write them back.
// The class names itself: OptimizerType::kName.
template <typename OptimizerType, typename Hyperparameters>
OptimizerSpec optimizer_spec(std::string description, Hyperparameters (*read)(const Json&),
                             Json (*write)(const Hyperparameters&)) {
  return OptimizerSpec{
      .name = std::string(OptimizerType::kName),
      .description = std::move(description),
      .normalize = [read, write](const Json& json) { return write(read(json)); },
      .build = [read](const Json& json, size_t size, std::vector<ParamSegment> segments,
                      Placement placement) -> std::unique_ptr<Optimizer> {
        return std::make_unique<OptimizerType>(read(json), size, std::move(segments), placement);
      },
  };
}

}  // namespace emix
