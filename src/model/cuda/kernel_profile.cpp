#include "model/cuda/kernel_profile.hpp"

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace emix::cuda {

KernelProfile::~KernelProfile() {
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

cudaEvent_t KernelProfile::next_event() {
  if (used_ == pool_.size()) {
    cudaEvent_t e = nullptr;
    EMIX_CUDA_CHECK(cudaEventCreate(&e));
    pool_.push_back(e);
  }
  return pool_[used_++];
}

void KernelProfile::begin(cudaStream_t stream) {
  if (!enabled_) return;
  EMIX_CUDA_CHECK(cudaEventRecord(next_event(), stream));
  groups_.push_back(nullptr);
}

void KernelProfile::mark(const char* group, cudaStream_t stream) {
  if (!enabled_) return;
  EMIX_CUDA_CHECK(cudaEventRecord(next_event(), stream));
  groups_.push_back(group);
}

std::vector<std::pair<std::string, double>> KernelProfile::collect() {
  std::vector<std::pair<std::string, double>> totals;
  if (used_ > 0) EMIX_CUDA_CHECK(cudaEventSynchronize(pool_[used_ - 1]));
  for (size_t i = 1; i < used_; ++i) {
    if (groups_[i] == nullptr) continue;  // the start of a run
    float ms = 0.0f;
    EMIX_CUDA_CHECK(cudaEventElapsedTime(&ms, pool_[i - 1], pool_[i]));
    auto it = std::find_if(totals.begin(), totals.end(), [&](const auto& t) { return t.first == groups_[i]; });
    if (it == totals.end()) {
      totals.emplace_back(groups_[i], ms);
    } else {
      it->second += ms;
    }
  }
  used_ = 0;
  groups_.clear();
  return totals;
}

}  // namespace emix::cuda
