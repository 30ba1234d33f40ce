#include "core/env.hpp"

#include <charconv>
#include <cstdlib>

#include "core/error.hpp"

namespace emix {

std::string env_string(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

int env_int(const char* name) {
  const std::string value = env_string(name);
  if (value.empty()) return -1;
  int result = 0;
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(value.data(), end, result);
  if (ec != std::errc() || ptr != end || result < 0) {
    fail("environment variable {}={} is not a non-negative integer", name, value);
  }
  return result;
}

}  // namespace emix
