#pragma once
// Strict reading of one JSON object: every key is typed, wrong types and
// unknown keys are errors that name the key (and suggest the closest valid
// one). Config sections and optimizer hyperparameters are both read this way.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace emix {

using Json = nlohmann::json;

class JsonObjectReader {
 public:
  // `where` prefixes key names in messages: "optimizer" gives "optimizer.lr".
  JsonObjectReader(const Json& object, std::string where);

  // Missing or null keys give `fallback`.
  template <typename T>
  T get(std::string_view key, T fallback) {
    const Json* value = lookup(key);
    return (value == nullptr || value->is_null()) ? fallback : convert<T>(*value, key);
  }
  template <typename T>
  std::optional<T> optional(std::string_view key) {
    const Json* value = lookup(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    return convert<T>(*value, key);
  }
  template <typename T>
  T required(std::string_view key) {
    const Json* value = lookup(key);
    if (value == nullptr || value->is_null()) fail("config key '{}' is required but missing", path(key));
    return convert<T>(*value, key);
  }
  // A nested object, read by its own reader (missing gives an empty object).
  JsonObjectReader object(std::string_view key);

  // Throws for the first key present in the object that nothing asked for.
  void reject_unknown_keys() const;

  std::string path(std::string_view key) const { return where_.empty() ? std::string(key) : where_ + "." + std::string(key); }

 private:
  const Json* lookup(std::string_view key);
  [[noreturn]] void wrong_type(std::string_view key, const Json& value, std::string_view expected) const;

  template <typename T>
  T convert(const Json& value, std::string_view key) const {
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) wrong_type(key, value, "true or false");
      return value.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      // Accept 1e6 as well as 1000000, but never silently truncate 1.5.
      if (!value.is_number()) wrong_type(key, value, "an integer");
      double d = value.get<double>();
      if (value.is_number_float() && (d != std::floor(d) || !std::isfinite(d))) wrong_type(key, value, "an integer");
      if (d < static_cast<double>(std::numeric_limits<T>::min()) || d > static_cast<double>(std::numeric_limits<T>::max())) {
        wrong_type(key, value, "an integer in range");
      }
      return value.is_number_float() ? static_cast<T>(d) : value.get<T>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) wrong_type(key, value, "a number");
      return value.get<T>();
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) wrong_type(key, value, "a string");
      return value.get<std::string>();
    } else if constexpr (std::is_same_v<T, Json>) {
      return value;
    } else {
      static_assert(sizeof(T) == 0, "unsupported config value type");
    }
  }

  const Json& object_;
  std::string where_;
  std::vector<std::string> known_keys_;
};

// object[key] of a file's metadata (a checkpoint manifest, its run state),
// checked to be an integer that fits T, else an error naming `file`, the key
// and the value. nlohmann's own get<T>() converts a float or an out-of-range
// number with a plain cast, undefined behaviour (found by fuzzing).
template <typename T>
T json_integer(const Json& object, const char* key, const std::filesystem::path& file) {
  const Json& value = object.at(key);
  bool fits = false;
  if (value.is_number_unsigned()) {
    fits = value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  } else if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    fits = std::is_signed_v<T> && v >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
           v <= static_cast<int64_t>(std::numeric_limits<T>::max());
  }
  if (!fits) {
    fail_file(file, "'{}' is {}: expected an integer in [{}, {}]", key, value.dump(), std::numeric_limits<T>::min(),
              std::numeric_limits<T>::max());
  }
  return value.get<T>();
}

// Parses JSON text; syntax errors name `source` with line and column.
Json parse_json_text(std::string_view text, std::string_view source);

}  // namespace emix
