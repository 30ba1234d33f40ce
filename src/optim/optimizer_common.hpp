#pragma once
// Host-side pieces shared by the elementwise optimizers: reading their
// hyperparameters with range checks, the warmups of the AdEMAMix family's
// hyperparameters, and a base class that owns the state buffers (in host or
// device memory) and runs an update over the weight-decay segments, on the
// host or through the optimizer's registered CUDA update.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/json_reader.hpp"
#include "kernels/bf16_rounding.hpp"
#include "optim/device_backend.hpp"
#include "optim/math/blockwise_int8.hpp"
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
// state_buffers() allocated when first needed. Each buffer has a
// StateStorage for the device (`storage`, default all float32); the mirrors
// are floats holding the same values exactly, so checkpoints do not depend
// on the placement. Host placement keeps floats, and the optimizer keeps
// their values representable in the narrow format there: a bf16 buffer by
// rounding each write (bf16_round_stochastic), an int8_blockwise one by
// calling requantize_int8 after each update.
//
// int8_blockwise (optim/math/blockwise_int8.hpp): the elements of
// weight-decayed segments (the int8 segments) form blocks of kInt8Block
// elements aligned to multiples of kInt8Block of the global parameter index
// (ranges start at ZeRO shard boundaries, which are such multiples), each
// block the int8 elements of one aligned window, so the blocks do not depend
// on the number of ranks. On the device they are a byte per element plus a
// scale per window; the other segments' elements are packed in a float
// array of their own.
class ElementwiseOptimizer : public Optimizer {
 public:
  std::string_view name() const override { return name_; }
  Placement placement() const override { return placement_; }
  size_t size() const override { return size_; }
  uint64_t state_bytes() const override;
  std::vector<StateBuffer> state_buffers() override;
  // Device → host widens the narrow buffers exactly; host → device rounds
  // them to the nearest representable value, which leaves values written by
  // a run in the same format (every checkpoint of one, on either placement)
  // unchanged.
  void copy_state_to_host() override;
  void copy_state_to_device() override;

 protected:
  ElementwiseOptimizer(std::string name, size_t size, std::vector<ParamSegment> segments,
                       std::vector<std::string> buffer_names, Placement placement,
                       std::vector<StateStorage> storage = {});

  // Which segments update_elements visits.
  enum class Segments { all, int8, not_int8 };

  // The named buffer where the optimizer keeps its state: host memory, or
  // device memory on device placement (float32 storage only there).
  float* buffer(std::string_view name);
  // A buffer stored in bf16 on the device: its bit patterns, device memory.
  uint16_t* device_bf16_buffer(std::string_view name);
  // Host placement, after an update wrote new values into the int8_blockwise
  // buffer `name`: every block's scale becomes its largest magnitude and each
  // value the stochastic rounding of value / scale to the map, times the
  // scale, with the state stream's bits of (info.rounding_seed, info.step,
  // info.element_offset + i), as the device stores them.
  void requantize_int8(std::string_view name, const StepInfo& info);
  bool is_int8_segment(const ParamSegment& segment) const { return has_int8_ && segment.weight_decay; }
  // Throw std::logic_error when a step's arguments do not fit the optimizer
  // or its placement.
  void check_step(std::span<float> params, std::span<const float> grads, const StepInfo& info) const;
  void check_device_step(const DeviceStep& step, const StepInfo& info) const;
  void check_device_conversion(const DeviceStep& step) const;

  // Calls update(i, c) for every element i of the chosen segments within
  // [first, last), where c is `coefficients` with its lr_weight_decay set to
  // `lr_weight_decay` on weight-decay segments and to 0 elsewhere. Elements
  // are independent, so the result does not depend on how OpenMP splits the
  // loop.
  template <typename Coefficients, typename Update>
  void update_elements(Coefficients coefficients, double lr_weight_decay, const Update& update,
                       Segments which = Segments::all, size_t first = 0, size_t last = SIZE_MAX) const {
    for (const ParamSegment& segment : segments_) {
      if (!visits(which, segment)) continue;
      coefficients.lr_weight_decay = segment_lr_weight_decay(segment, lr_weight_decay);
      const auto begin = static_cast<int64_t>(std::max(first, segment.offset));
      const auto end = static_cast<int64_t>(std::min(last, segment.offset + segment.count));
#pragma omp parallel for schedule(static) if (end - begin >= static_cast<int64_t>(kMinParallelElements))
      for (int64_t i = begin; i < end; ++i) update(static_cast<size_t>(i), coefficients);
    }
  }

  // The device counterpart: one launch of the fused update registered under
  // name() per segment, with the same per-segment coefficients, and with an
  // int8_blockwise buffer: the int8 segments skipped (update_int8_device
  // does them), the others pointed at their packed floats. Sets the
  // rounding key of the narrow state (device_backend.hpp) from
  // step.rounding_seed.
  template <typename Coefficients>
  void update_elements_device(const DeviceStep& step, const StepInfo& info, Coefficients coefficients,
                              double lr_weight_decay, device::StateBuffers state) const {
    auto* update = device::find_function<device::UpdateFunction<Coefficients>>(name_);
    if (update == nullptr) fail_no_device_update();
    const uint64_t key = rounding_key(step.rounding_seed, static_cast<uint64_t>(info.step));
    state.narrow_rounding_key = state_rounding_key(step.rounding_seed, static_cast<uint64_t>(info.step));
    for (size_t s = 0; s < segments_.size(); ++s) {
      const ParamSegment& segment = segments_[s];
      if (segment.count == 0 || is_int8_segment(segment)) continue;
      coefficients.lr_weight_decay = segment_lr_weight_decay(segment, lr_weight_decay);
      if (!has_int8_) {
        update(coefficients, state, step, key, segment.offset, segment.count);
        continue;
      }
      const auto [segment_state, segment_step] = shifted_to_segment(state, step, s);
      update(coefficients, segment_state, segment_step, key, 0, segment.count);
    }
  }

  // The int8 segments on the device: one launch of the registered pass
  // "<name>.int8" over every block, with the int8_blockwise buffers' codes
  // and scales in `state` and the decayed segments' coefficients.
  template <typename Coefficients>
  void update_int8_device(const DeviceStep& step, const StepInfo& info, Coefficients coefficients,
                          double lr_weight_decay, device::StateBuffers state) const {
    auto* update = device_pass<device::Int8UpdateFunction<Coefficients>>("int8");
    coefficients.lr_weight_decay = static_cast<float>(lr_weight_decay);
    state.narrow_rounding_key = state_rounding_key(step.rounding_seed, static_cast<uint64_t>(info.step));
    update(coefficients, state, device_int8_ranges(), step,
           rounding_key(step.rounding_seed, static_cast<uint64_t>(info.step)), size_);
  }
  // The device storage of an int8_blockwise buffer, set in `state` as its
  // index b: int8[b], int8_scales[b] and data[b] (the packed floats).
  void set_int8_device_buffer(device::StateBuffers& state, int b, std::string_view name);

  // A registered device pass "<name>.<pass>" of type Function; throws
  // "<name> has no CUDA update" when it is missing.
  template <typename Function>
  Function* device_pass(std::string_view pass) const {
    auto* function = device::find_function<Function>(name_ + "." + std::string(pass));
    if (function == nullptr) fail_no_device_update();
    return function;
  }

 private:
  // One buffer's device memory: the elements (floats, bf16 bits or int8
  // codes) and, for int8_blockwise, the blocks' scales and the packed floats
  // of the other segments.
  struct DeviceBuffer {
    device::Allocation elements;
    device::Allocation scales;
    device::Allocation floats;
  };

  static float segment_lr_weight_decay(const ParamSegment& segment, double lr_weight_decay) {
    return static_cast<float>(segment.weight_decay ? lr_weight_decay : 0.0);
  }
  bool visits(Segments which, const ParamSegment& segment) const {
    return which == Segments::all || (which == Segments::int8) == is_int8_segment(segment);
  }
  // `state` and `step` moved to start at segment s: every float buffer and
  // array advanced by its offset, an int8_blockwise buffer's data pointed at
  // the segment's packed floats.
  std::pair<device::StateBuffers, DeviceStep> shifted_to_segment(device::StateBuffers state, DeviceStep step,
                                                                 size_t s) const;
  // int8_ranges_ for a kernel's arguments; throws if there are more than
  // device::kMaxInt8Ranges.
  device::Int8Ranges device_int8_ranges() const;
  [[noreturn]] void fail_no_device_update() const;
  void allocate_mirrors();
  size_t index_of(std::string_view name) const;
  size_t int8_block_count() const;
  // Calls f(i) for every int8 element i of block w, in order.
  template <typename F>
  void for_each_int8_element(size_t w, const F& f) const {
    const size_t block_begin = w * kInt8Block, block_end = std::min(size_, block_begin + kInt8Block);
    auto range = std::upper_bound(int8_ranges_.begin(), int8_ranges_.end(), block_begin,
                                  [](size_t i, const std::pair<size_t, size_t>& r) { return i < r.second; });
    for (; range != int8_ranges_.end() && range->first < block_end; ++range) {
      for (size_t i = std::max(block_begin, range->first); i < std::min(block_end, range->second); ++i) f(i);
    }
  }
  // Calls f(offset, packed_offset, count) for every segment whose elements an
  // int8_blockwise buffer keeps in its packed floats.
  template <typename F>
  void for_each_packed_segment(const F& f) const {
    for (size_t s = 0; s < segments_.size(); ++s) {
      if (!is_int8_segment(segments_[s])) f(segments_[s].offset, packed_offsets_[s], segments_[s].count);
    }
  }
  // The blocks' scales: the largest magnitude of each block's int8 elements
  // in `values` (NaN if any is NaN).
  std::vector<float> int8_scales(const float* values) const;
  void int8_to_host(size_t b);
  void int8_to_device(size_t b);

  // Below this, waking the thread team costs more than the update itself
  // (a model has many small bias and LayerNorm segments).
  static constexpr size_t kMinParallelElements = size_t{1} << 14;

  std::string name_;
  size_t size_;
  std::vector<ParamSegment> segments_;
  std::vector<std::string> buffer_names_;
  std::vector<StateStorage> storage_;  // per buffer, on the device
  Placement placement_;
  bool has_int8_ = false;              // some buffer is int8_blockwise
  std::vector<std::pair<size_t, size_t>> int8_ranges_;  // [begin, end) of the int8 segments, adjacent ones merged
  std::vector<size_t> packed_offsets_; // per segment not int8: its first element among the packed floats
  size_t packed_count_ = 0;
  // Host placement: the state. Device placement: the mirrors, empty until
  // state_buffers() or copy_state_to_host() first needs them.
  std::vector<std::vector<float>> buffers_;
  std::vector<DeviceBuffer> device_buffers_;  // device placement only
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
      .build_m2_sharded = nullptr,
  };
}

}  // namespace emix
