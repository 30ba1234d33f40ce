#include "optim/optimizer_common.hpp"

#include <algorithm>
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
                                           const std::vector<std::string>& device_bf16_buffers)
    : name_(std::move(name)),
      size_(size),
      segments_(std::move(segments)),
      buffer_names_(std::move(buffer_names)),
      device_bf16_(buffer_names_.size(), false),
      placement_(placement) {
  check_segments(segments_, size_);
  for (const std::string& bf16_name : device_bf16_buffers) device_bf16_[index_of(bf16_name)] = true;
  for (size_t i = 0; i < buffer_names_.size(); ++i) {
    if (placement_ == Placement::host) {
      buffers_.emplace_back(size_, 0.0f);
    } else {
      device_buffers_.emplace_back(size_ * (device_bf16_[i] ? sizeof(uint16_t) : sizeof(float)));
    }
  }
}

size_t ElementwiseOptimizer::index_of(std::string_view name) const {
  auto it = std::find(buffer_names_.begin(), buffer_names_.end(), name);
  if (it == buffer_names_.end()) throw std::logic_error(fmt::format("optimizer has no state buffer '{}'", name));
  return static_cast<size_t>(it - buffer_names_.begin());
}

size_t ElementwiseOptimizer::state_bytes_per_parameter() const {
  size_t bytes = 0;
  for (bool bf16 : device_bf16_) bytes += placement_ == Placement::device && bf16 ? sizeof(uint16_t) : sizeof(float);
  return bytes;
}

void ElementwiseOptimizer::allocate_mirrors() {
  if (buffers_.size() == buffer_names_.size()) return;
  for (size_t i = 0; i < buffer_names_.size(); ++i) buffers_.emplace_back(size_, 0.0f);
}

std::vector<StateBuffer> ElementwiseOptimizer::state_buffers() {
  allocate_mirrors();
  std::vector<StateBuffer> result;
  for (size_t i = 0; i < buffers_.size(); ++i) result.push_back(StateBuffer{buffer_names_[i], buffers_[i], device_bf16_[i]});
  return result;
}

void ElementwiseOptimizer::copy_state_to_host() {
  if (placement_ == Placement::host) return;
  allocate_mirrors();
  std::vector<uint16_t> bits;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    if (!device_bf16_[i]) {
      device::memory_ops().copy_to_host(buffers_[i].data(), device_buffers_[i].get(), size_ * sizeof(float));
      continue;
    }
    bits.resize(size_);
    device::memory_ops().copy_to_host(bits.data(), device_buffers_[i].get(), size_ * sizeof(uint16_t));
    std::transform(bits.begin(), bits.end(), buffers_[i].begin(), bf16_bits_to_float);
  }
}

void ElementwiseOptimizer::copy_state_to_device() {
  if (placement_ == Placement::host) return;
  // Mirrors never exposed hold nothing newer than the device state.
  if (buffers_.empty()) return;
  std::vector<uint16_t> bits;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    if (!device_bf16_[i]) {
      device::memory_ops().copy_to_device(device_buffers_[i].get(), buffers_[i].data(), size_ * sizeof(float));
      continue;
    }
    bits.resize(size_);
    std::transform(buffers_[i].begin(), buffers_[i].end(), bits.begin(), bf16_bits_nearest_even);
    device::memory_ops().copy_to_device(device_buffers_[i].get(), bits.data(), size_ * sizeof(uint16_t));
  }
}

float* ElementwiseOptimizer::buffer(std::string_view name) {
  const size_t index = index_of(name);
  if (placement_ == Placement::host) return buffers_[index].data();
  if (device_bf16_[index]) {
    throw std::logic_error(fmt::format("{}: state buffer '{}' is stored in bf16 on the device", name_, name));
  }
  return device_buffers_[index].as<float>();
}

uint16_t* ElementwiseOptimizer::device_bf16_buffer(std::string_view name) {
  const size_t index = index_of(name);
  if (placement_ != Placement::device || !device_bf16_[index]) {
    throw std::logic_error(fmt::format("{}: state buffer '{}' is not stored in bf16 on the device", name_, name));
  }
  return device_buffers_[index].as<uint16_t>();
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
