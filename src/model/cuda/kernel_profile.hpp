#pragma once
// Optional timing of a model's kernel groups, for `emix bench`: when
// enabled, an event is recorded on the stream after each operation, and an
// operation's time is the gap since the previous event. Events cost little,
// but they are recorded only when asked for.
#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

namespace emix::cuda {

class KernelProfile {
 public:
  KernelProfile() = default;
  ~KernelProfile();
  KernelProfile(const KernelProfile&) = delete;
  KernelProfile& operator=(const KernelProfile&) = delete;

  void enable(bool on) { enabled_ = on; }
  // Starts a run of marks (a forward, a backward).
  void begin(cudaStream_t stream);
  // The work queued since the previous mark belongs to `group`.
  void mark(const char* group, cudaStream_t stream);
  // Milliseconds per group summed over every run since the last call, in the
  // order groups first appeared; waits for the marked work.
  std::vector<std::pair<std::string, double>> collect();

 private:
  cudaEvent_t next_event();

  bool enabled_ = false;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  // For each event after the first of its run: its group (nullptr starts a run).
  std::vector<const char*> groups_;
};

}  // namespace emix::cuda
