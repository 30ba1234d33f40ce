#include "optim/optimizer_common.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "core/error.hpp"

namespace emix {

double HyperparameterReader::non_negative(std::string_view key, double fallback) {
  double value = reader_.get<double>(key, fallback);
  if (!(value >= 0.0)) fail("config key '{}' must be >= 0, got {}", reader_.path(key), value);
  return value;
}

double HyperparameterReader::positive(std::string_view key, double fallback) {
  double value = reader_.get<double>(key, fallback);
  if (!(value > 0.0)) fail("config key '{}' must be > 0, got {}", reader_.path(key), value);
  return value;
}

double HyperparameterReader::beta(std::string_view key, double fallback) {
  double value = reader_.get<double>(key, fallback);
  if (!(value >= 0.0 && value < 1.0)) fail("config key '{}' must be in [0, 1), got {}", reader_.path(key), value);
  return value;
}

std::optional<double> HyperparameterReader::optional_beta(std::string_view key) {
  std::optional<double> value = reader_.optional<double>(key);
  if (value) return beta(key, *value);
  return std::nullopt;
}

std::string HyperparameterReader::one_of(std::string_view key, std::string_view fallback,
                                         std::initializer_list<std::string_view> allowed) {
  std::string value = reader_.get<std::string>(key, std::string(fallback));
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    std::string choices;
    for (std::string_view choice : allowed) choices += fmt::format("{}\"{}\"", choices.empty() ? "" : " or ", choice);
    fail("config key '{}' must be {}, got \"{}\"", reader_.path(key), choices, value);
  }
  return value;
}

std::optional<int64_t> HyperparameterReader::warmup_steps(std::string_view key) {
  std::optional<int64_t> steps = reader_.optional<int64_t>(key);
  if (steps && *steps < 1) {
    fail("config key '{}' must be at least 1 step, or null for no warmup, got {}", reader_.path(key), *steps);
  }
  return steps;
}

Json warmup_steps_json(std::optional<int64_t> steps) { return steps ? Json(*steps) : Json(nullptr); }

std::optional<int64_t> warmup_steps_from_json(const Json& value) {
  if (value.is_null()) return std::nullopt;
  return value.get<int64_t>();
}

double bias_correction(double beta, int64_t step) { return 1.0 - std::pow(beta, static_cast<double>(step)); }

double linear_warmup(int64_t step, double end, std::optional<int64_t> warmup) {
  if (!warmup || step >= *warmup) return end;
  return end * static_cast<double>(step) / static_cast<double>(*warmup);
}

namespace {
double half_life(double beta) { return std::log(0.5) / std::log(beta + 1e-8) - 1.0; }
double beta_of_half_life(double h) { return std::pow(0.5, 1.0 / (h + 1.0)); }
}  // namespace

double half_life_warmup(int64_t step, double start, double end, std::optional<int64_t> warmup) {
  if (!warmup || step >= *warmup) return end;
  double a = static_cast<double>(step) / static_cast<double>(*warmup);
  return beta_of_half_life((1.0 - a) * half_life(start) + a * half_life(end));
}

ElementwiseOptimizer::ElementwiseOptimizer(std::string name, size_t size, std::vector<ParamSegment> segments,
                                           std::vector<std::string> buffer_names, Placement placement,
                                           std::vector<StateStorage> storage)
    : name_(std::move(name)),
      size_(size),
      segments_(std::move(segments)),
      buffer_names_(std::move(buffer_names)),
      storage_(std::move(storage)),
      placement_(placement) {
  check_segments(segments_, size_);
  if (storage_.empty()) storage_.assign(buffer_names_.size(), StateStorage::float32);
  if (storage_.size() != buffer_names_.size()) throw std::logic_error("one storage per state buffer");
  has_int8_ = std::find(storage_.begin(), storage_.end(), StateStorage::int8_blockwise) != storage_.end();
  for (const ParamSegment& segment : segments_) {
    if (is_int8_segment(segment)) {
      if (!int8_ranges_.empty() && int8_ranges_.back().second == segment.offset) {
        int8_ranges_.back().second += segment.count;
      } else {
        int8_ranges_.emplace_back(segment.offset, segment.offset + segment.count);
      }
      packed_offsets_.push_back(0);
    } else {
      packed_offsets_.push_back(packed_count_);
      packed_count_ += segment.count;
    }
  }
  for (size_t i = 0; i < buffer_names_.size(); ++i) {
    if (placement_ == Placement::host) {
      buffers_.emplace_back(size_, 0.0f);
      continue;
    }
    DeviceBuffer buffer;
    switch (storage_[i]) {
      case StateStorage::float32: buffer.elements = device::Allocation(size_ * sizeof(float)); break;
      case StateStorage::bfloat16: buffer.elements = device::Allocation(size_ * sizeof(uint16_t)); break;
      case StateStorage::int8_blockwise:
        buffer.elements = device::Allocation(size_);
        buffer.scales = device::Allocation(int8_block_count() * sizeof(float));
        buffer.floats = device::Allocation(packed_count_ * sizeof(float));
        break;
    }
    device_buffers_.push_back(std::move(buffer));
  }
}

size_t ElementwiseOptimizer::index_of(std::string_view name) const {
  auto it = std::find(buffer_names_.begin(), buffer_names_.end(), name);
  if (it == buffer_names_.end()) throw std::logic_error(fmt::format("optimizer has no state buffer '{}'", name));
  return static_cast<size_t>(it - buffer_names_.begin());
}

uint64_t ElementwiseOptimizer::state_bytes() const {
  uint64_t bytes = 0;
  for (StateStorage storage : storage_) {
    bytes += placement_ == Placement::device ? device_state_bytes(storage, size_, packed_count_) : size_ * sizeof(float);
  }
  return bytes;
}

void ElementwiseOptimizer::allocate_mirrors() {
  if (buffers_.size() == buffer_names_.size()) return;
  for (size_t i = 0; i < buffer_names_.size(); ++i) buffers_.emplace_back(size_, 0.0f);
}

std::vector<StateBuffer> ElementwiseOptimizer::state_buffers() {
  allocate_mirrors();
  std::vector<StateBuffer> result;
  for (size_t i = 0; i < buffers_.size(); ++i) result.push_back(StateBuffer{buffer_names_[i], buffers_[i], storage_[i]});
  return result;
}

void ElementwiseOptimizer::copy_state_to_host() {
  if (placement_ == Placement::host) return;
  allocate_mirrors();
  std::vector<uint16_t> bits;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    const void* elements = device_buffers_[i].elements.get();
    switch (storage_[i]) {
      case StateStorage::float32:
        device::memory_ops().copy_to_host(buffers_[i].data(), elements, size_ * sizeof(float));
        break;
      case StateStorage::bfloat16:
        bits.resize(size_);
        device::memory_ops().copy_to_host(bits.data(), elements, size_ * sizeof(uint16_t));
        std::transform(bits.begin(), bits.end(), buffers_[i].begin(), bf16_bits_to_float);
        break;
      case StateStorage::int8_blockwise: int8_to_host(i); break;
    }
  }
}

void ElementwiseOptimizer::copy_state_to_device() {
  if (placement_ == Placement::host) return;
  // Mirrors never exposed hold nothing newer than the device state.
  if (buffers_.empty()) return;
  std::vector<uint16_t> bits;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    void* elements = device_buffers_[i].elements.get();
    switch (storage_[i]) {
      case StateStorage::float32:
        device::memory_ops().copy_to_device(elements, buffers_[i].data(), size_ * sizeof(float));
        break;
      case StateStorage::bfloat16:
        bits.resize(size_);
        std::transform(buffers_[i].begin(), buffers_[i].end(), bits.begin(), bf16_bits_nearest_even);
        device::memory_ops().copy_to_device(elements, bits.data(), size_ * sizeof(uint16_t));
        break;
      case StateStorage::int8_blockwise: int8_to_device(i); break;
    }
  }
}

float* ElementwiseOptimizer::buffer(std::string_view name) {
  const size_t index = index_of(name);
  if (placement_ == Placement::host) return buffers_[index].data();
  if (storage_[index] != StateStorage::float32) {
    throw std::logic_error(fmt::format("{}: state buffer '{}' is stored in {} on the device", name_, name,
                                       storage_name(storage_[index])));
  }
  return device_buffers_[index].elements.as<float>();
}

uint16_t* ElementwiseOptimizer::device_bf16_buffer(std::string_view name) {
  const size_t index = index_of(name);
  if (placement_ != Placement::device || storage_[index] != StateStorage::bfloat16) {
    throw std::logic_error(fmt::format("{}: state buffer '{}' is not stored in bf16 on the device", name_, name));
  }
  return device_buffers_[index].elements.as<uint16_t>();
}

void ElementwiseOptimizer::set_int8_device_buffer(device::StateBuffers& state, int b, std::string_view name) {
  const size_t index = index_of(name);
  if (placement_ != Placement::device || storage_[index] != StateStorage::int8_blockwise) {
    throw std::logic_error(fmt::format("{}: state buffer '{}' is not stored in int8 on the device", name_, name));
  }
  state.int8[b] = device_buffers_[index].elements.as<uint8_t>();
  state.int8_scales[b] = device_buffers_[index].scales.as<float>();
  state.data[b] = device_buffers_[index].floats.as<float>();
}

device::Int8Ranges ElementwiseOptimizer::device_int8_ranges() const {
  if (int8_ranges_.size() > static_cast<size_t>(device::kMaxInt8Ranges)) {
    fail("{}: {} separate runs of int8 state; the CUDA update handles at most {}", name_, int8_ranges_.size(),
         device::kMaxInt8Ranges);
  }
  device::Int8Ranges ranges;
  ranges.count = static_cast<uint32_t>(int8_ranges_.size());
  for (size_t r = 0; r < int8_ranges_.size(); ++r) {
    ranges.begin[r] = int8_ranges_[r].first;
    ranges.end[r] = int8_ranges_[r].second;
  }
  return ranges;
}

std::pair<device::StateBuffers, DeviceStep> ElementwiseOptimizer::shifted_to_segment(device::StateBuffers state,
                                                                                     DeviceStep step, size_t s) const {
  const size_t offset = segments_[s].offset;
  for (int b = 0; b < device::kMaxStateBuffers; ++b) {
    if (state.int8[b] != nullptr) {
      state.data[b] += packed_offsets_[s];
      state.int8[b] = nullptr;
      state.int8_scales[b] = nullptr;
    } else if (state.data[b] != nullptr) {
      state.data[b] += offset;
    }
    if (state.bf16[b] != nullptr) state.bf16[b] += offset;
  }
  step.master += offset;
  step.grads = static_cast<const uint16_t*>(step.grads) + offset;
  step.params_bf16 = static_cast<uint16_t*>(step.params_bf16) + offset;
  step.element_offset += offset;
  return {state, step};
}

size_t ElementwiseOptimizer::int8_block_count() const { return emix::int8_block_count(size_); }

namespace {

// int8_dynamic_magnitude(0..127), computed once.
const float* int8_magnitude_table() {
  static const std::array<float, kInt8Magnitudes> table = [] {
    std::array<float, kInt8Magnitudes> magnitudes{};
    for (uint32_t m = 0; m < kInt8Magnitudes; ++m) magnitudes[m] = int8_dynamic_magnitude(m);
    return magnitudes;
  }();
  return table.data();
}

}  // namespace

std::vector<float> ElementwiseOptimizer::int8_scales(const float* values) const {
  std::vector<float> scales(int8_block_count(), 0.0f);
  const auto blocks = static_cast<int64_t>(scales.size());
#pragma omp parallel for schedule(static) if (blocks >= 64)
  for (int64_t w = 0; w < blocks; ++w) {
    float& scale = scales[static_cast<size_t>(w)];
    for_each_int8_element(static_cast<size_t>(w), [&](size_t i) { scale = int8_scale_max(scale, fabsf(values[i])); });
  }
  return scales;
}

void ElementwiseOptimizer::requantize_int8(std::string_view name, const StepInfo& info) {
  float* values = buffers_.at(index_of(name)).data();
  const std::vector<float> scales = int8_scales(values);
  const uint64_t key = state_rounding_key(info.rounding_seed, static_cast<uint64_t>(info.step));
  const float* magnitudes = int8_magnitude_table();
  const auto blocks = static_cast<int64_t>(scales.size());
#pragma omp parallel for schedule(static) if (blocks >= 64)
  for (int64_t w = 0; w < blocks; ++w) {
    const float scale = scales[static_cast<size_t>(w)];
    for_each_int8_element(static_cast<size_t>(w), [&](size_t i) {
      const uint32_t random = rounding_bits(key, info.element_offset + i);
      values[i] = int8_dequantize(int8_code_stochastic(values[i], scale, random, magnitudes), scale, magnitudes);
    });
  }
}

void ElementwiseOptimizer::int8_to_host(size_t b) {
  const DeviceBuffer& device_buffer = device_buffers_[b];
  std::vector<uint8_t> codes(size_);
  std::vector<float> scales(int8_block_count());
  std::vector<float> packed(packed_count_);
  device::memory_ops().copy_to_host(codes.data(), device_buffer.elements.get(), codes.size());
  device::memory_ops().copy_to_host(scales.data(), device_buffer.scales.get(), scales.size() * sizeof(float));
  device::memory_ops().copy_to_host(packed.data(), device_buffer.floats.get(), packed.size() * sizeof(float));
  std::vector<float>& values = buffers_[b];
  const float* magnitudes = int8_magnitude_table();
  for (size_t w = 0; w < scales.size(); ++w) {
    for_each_int8_element(w, [&](size_t i) { values[i] = int8_dequantize(codes[i], scales[w], magnitudes); });
  }
  for_each_packed_segment([&](size_t offset, size_t packed_offset, size_t count) {
    std::copy_n(packed.begin() + static_cast<ptrdiff_t>(packed_offset), count, values.begin() + static_cast<ptrdiff_t>(offset));
  });
}

void ElementwiseOptimizer::int8_to_device(size_t b) {
  const std::vector<float>& values = buffers_[b];
  const std::vector<float> scales = int8_scales(values.data());
  std::vector<uint8_t> codes(size_, 0);
  std::vector<float> packed(packed_count_);
  const float* magnitudes = int8_magnitude_table();
  for (size_t w = 0; w < scales.size(); ++w) {
    for_each_int8_element(w, [&](size_t i) { codes[i] = int8_code_nearest(values[i], scales[w], magnitudes); });
  }
  for_each_packed_segment([&](size_t offset, size_t packed_offset, size_t count) {
    std::copy_n(values.begin() + static_cast<ptrdiff_t>(offset), count, packed.begin() + static_cast<ptrdiff_t>(packed_offset));
  });
  DeviceBuffer& device_buffer = device_buffers_[b];
  device::memory_ops().copy_to_device(device_buffer.elements.get(), codes.data(), codes.size());
  device::memory_ops().copy_to_device(device_buffer.scales.get(), scales.data(), scales.size() * sizeof(float));
  device::memory_ops().copy_to_device(device_buffer.floats.get(), packed.data(), packed.size() * sizeof(float));
}

void ElementwiseOptimizer::check_step(std::span<float> params, std::span<const float> grads,
                                      const StepInfo& info) const {
  if (placement_ != Placement::host) {
    throw std::logic_error(fmt::format("{}: step() on an optimizer placed on the device; use step_device", name_));
  }
  if (params.size() != size_ || grads.size() != size_) {
    throw std::logic_error(fmt::format("optimizer over {} parameters was given {} parameters and {} gradients",
                                       size_, params.size(), grads.size()));
  }
  // Bias corrections are 1 − βᵗ: step 0 would divide by zero.
  if (info.step < 1) throw std::logic_error(fmt::format("optimizer steps count from 1, got {}", info.step));
}

void ElementwiseOptimizer::check_device_step(const DeviceStep& step, const StepInfo& info) const {
  check_device_conversion(step);
  if (step.grads == nullptr) throw std::logic_error(fmt::format("{}: step_device without gradients", name_));
  if (info.step < 1) throw std::logic_error(fmt::format("optimizer steps count from 1, got {}", info.step));
}

void ElementwiseOptimizer::check_device_conversion(const DeviceStep& step) const {
  if (placement_ != Placement::device) {
    throw std::logic_error(fmt::format("{}: a device update on an optimizer placed on the host; use step", name_));
  }
  if (step.master == nullptr || step.params_bf16 == nullptr) {
    throw std::logic_error(fmt::format("{}: a device update needs master weights and bf16 parameters", name_));
  }
}

void ElementwiseOptimizer::fail_no_device_update() const { fail("{} has no CUDA update", name_); }

}  // namespace emix
