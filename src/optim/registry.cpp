#include "optim/optimizer.hpp"

#include <algorithm>
#include <map>

#include "core/error.hpp"
#include "core/text.hpp"
#include "optim/math/blockwise_int8.hpp"

#include <fmt/ranges.h>

namespace emix {
namespace {
// Function-local static: registration runs from other files' static
// initializers, whose order relative to this file is unspecified.
std::map<std::string, OptimizerSpec, std::less<>>& registry() {
  static std::map<std::string, OptimizerSpec, std::less<>> specs;
  return specs;
}
}  // namespace

void Optimizer::step_device(const DeviceStep& step, const StepInfo& info) {
  (void)step;
  (void)info;
  fail("{} has no CUDA update", name());
}

void Optimizer::load_scalar_state(const Json& state) {
  if (!state.empty()) fail("this optimizer has no scalar state, but the checkpoint holds {}", state.dump());
}

bool register_optimizer(OptimizerSpec spec) {
  std::string name = spec.name;
  bool inserted = registry().emplace(name, std::move(spec)).second;
  if (!inserted) throw std::logic_error("optimizer registered twice: " + name);
  return true;
}

std::vector<std::string> optimizer_names() {
  std::vector<std::string> names;
  for (const auto& [name, spec] : registry()) names.push_back(name);
  return names;
}

const OptimizerSpec& find_optimizer(std::string_view name) {
  auto it = registry().find(name);
  if (it != registry().end()) return it->second;
  auto names = optimizer_names();
  std::string suggestion = closest_match(name, names);
  fail("unknown optimizer '{}'{} (registered: {})", name,
       suggestion.empty() ? "" : fmt::format(", did you mean '{}'?", suggestion), fmt::join(names, ", "));
}

CommonHyperparameters common_hyperparameters(const Json& normalized) {
  return CommonHyperparameters{normalized.at("lr").get<double>(), normalized.at("weight_decay").get<double>()};
}

uint64_t device_state_bytes(StateStorage storage, uint64_t count, uint64_t float_elements) {
  switch (storage) {
    case StateStorage::float32: return 4 * count;
    case StateStorage::bfloat16: return 2 * count;
    case StateStorage::int8_blockwise: return count + 4 * int8_block_count(count) + 4 * float_elements;
  }
  return 0;
}

std::string_view storage_name(StateStorage storage) {
  switch (storage) {
    case StateStorage::float32: return "fp32";
    case StateStorage::bfloat16: return "bf16";
    case StateStorage::int8_blockwise: return "int8";
  }
  return "?";
}

void check_segments(std::span<const ParamSegment> segments, size_t size) {
  size_t expected = 0;
  for (const auto& s : segments) {
    if (s.offset != expected) throw std::logic_error("optimizer segments must tile the parameter range in order");
    expected += s.count;
  }
  if (expected != size) throw std::logic_error("optimizer segments do not cover the parameter range");
}

std::vector<ParamSegment> segments_within(std::span<const ParamSegment> segments, size_t begin, size_t end) {
  std::vector<ParamSegment> within;
  for (const auto& s : segments) {
    const size_t first = std::max(begin, s.offset);
    const size_t last = std::min(end, s.offset + s.count);
    if (first < last) within.push_back(ParamSegment{first - begin, last - first, s.weight_decay});
  }
  return within;
}

}  // namespace emix
