#include "optim/grad_clip.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace emix {
namespace {

constexpr size_t kLanes = 8;

// Eight running sums, element i going to sum i mod 8: an order fixed by the
// source, which a compiler can vectorize without changing the result.
double block_sum_of_squares(const float* values, size_t count) {
  double lanes[kLanes] = {};
  for (size_t i = 0; i < count; ++i) {
    double x = values[i];
    lanes[i % kLanes] += x * x;
  }
  double sum = 0.0;
  for (double lane : lanes) sum += lane;
  return sum;
}

}  // namespace

std::vector<double> block_sums_of_squares(std::span<const float> values) {
  const size_t blocks = (values.size() + kSumOfSquaresBlock - 1) / kSumOfSquaresBlock;
  std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < static_cast<int64_t>(blocks); ++b) {
    size_t begin = static_cast<size_t>(b) * kSumOfSquaresBlock;
    partial[static_cast<size_t>(b)] =
        block_sum_of_squares(values.data() + begin, std::min(kSumOfSquaresBlock, values.size() - begin));
  }
  return partial;
}

double sum_of_squares(std::span<const float> values) {
  double sum = 0.0;
  for (double p : block_sums_of_squares(values)) sum += p;
  return sum;
}

double global_norm(std::span<const float> grads) { return std::sqrt(sum_of_squares(grads)); }

float clip_scale(double norm, double max_norm) {
  if (!(max_norm > 0.0) || !std::isfinite(norm) || norm <= max_norm) return 1.0f;
  return static_cast<float>(max_norm / norm);
}

void scale_in_place(std::span<float> x, float scale) {
  const auto count = static_cast<int64_t>(x.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) x[static_cast<size_t>(i)] *= scale;
}

float clip_to_norm(std::span<float> grads, double norm, double max_norm) {
  const float scale = clip_scale(norm, max_norm);
  if (scale != 1.0f) scale_in_place(grads, scale);
  return scale;
}

double clip_grad_norm(std::span<float> grads, double max_norm) {
  double norm = global_norm(grads);
  clip_to_norm(grads, norm, max_norm);
  return norm;
}

}  // namespace emix
