#pragma once
// Small text helpers shared by error messages and progress logs.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace emix {

// The candidate closest to `word` by edit distance, or "" when none is close
// enough to be a plausible typo.
std::string closest_match(std::string_view word, std::span<const std::string> candidates);

// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

// 1234567 -> "1.23M"; 4321 -> "4.32k".
std::string format_count(double value);
// 1536 → "1.50 KiB" (binary units, for memory).
std::string format_bytes(double bytes);

}  // namespace emix
