#include "optim/device_backend.hpp"

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <typeindex>

#include "core/error.hpp"

namespace emix::device {
namespace {

// Function-local statics: registration runs from emix_cuda's static
// initializers, whose order relative to this file is unspecified.
std::optional<MemoryOps>& registered_memory_ops() {
  static std::optional<MemoryOps> ops;
  return ops;
}

struct Entry {
  std::type_index type;
  ErasedFunction function;
};

std::map<std::string, Entry, std::less<>>& functions() {
  static std::map<std::string, Entry, std::less<>> entries;
  return entries;
}

}  // namespace

bool register_memory_ops(const MemoryOps& ops) {
  if (registered_memory_ops()) throw std::logic_error("device memory operations registered twice");
  registered_memory_ops() = ops;
  return true;
}

const MemoryOps& memory_ops() {
  if (!registered_memory_ops()) fail("this build has no CUDA backend");
  return *registered_memory_ops();
}

Allocation::Allocation(size_t bytes) : data_(memory_ops().allocate_zeroed(bytes)) {}

Allocation::~Allocation() {
  if (data_ != nullptr) memory_ops().release(data_);
}

Allocation& Allocation::operator=(Allocation&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) memory_ops().release(data_);
    data_ = other.data_;
    other.data_ = nullptr;
  }
  return *this;
}

bool register_function(std::string_view key, const std::type_info& type, ErasedFunction function) {
  bool inserted = functions().emplace(std::string(key), Entry{std::type_index(type), function}).second;
  if (!inserted) throw std::logic_error("device function registered twice: " + std::string(key));
  return true;
}

ErasedFunction find_function(std::string_view key, const std::type_info& type) {
  auto it = functions().find(key);
  if (it == functions().end()) return nullptr;
  if (it->second.type != std::type_index(type)) {
    throw std::logic_error("device function '" + std::string(key) + "' was registered with another type");
  }
  return it->second.function;
}

}  // namespace emix::device
