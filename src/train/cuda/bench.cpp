// `emix bench` on the CUDA backend (see bench.hpp). Times with CUDA events
// around work queued on the model's stream, after warm-up steps, so that
// plan building, cuDNN's run-time compilation and allocations stay out of
// the figures.
#include "train/cuda/bench.hpp"

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "core/error.hpp"
#include "core/text.hpp"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.hpp"
#include "model/cuda/gpt2_cuda.hpp"
#include "optim/optimizer.hpp"
#include "train/cuda/cuda_options.hpp"

namespace emix {
namespace {

class EventTimer {
 public:
  explicit EventTimer(cudaStream_t stream) : stream_(stream) {
    EMIX_CUDA_CHECK(cudaEventCreate(&start_));
    EMIX_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  void start() { EMIX_CUDA_CHECK(cudaEventRecord(start_, stream_)); }
  double stop_ms() {
    EMIX_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    EMIX_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    EMIX_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

std::vector<ParamSegment> segments_of(const ParameterLayout& layout) {
  std::vector<ParamSegment> segments;
  for (const auto& t : layout.tensors()) segments.push_back(ParamSegment{t.offset, t.count, t.weight_decay});
  return segments;
}

struct OptimizerTiming {
  double ms = 0.0;            // median of one step
  double bytes = 0.0;         // it must move: master read and written, gradient read, bf16 weight written, state read and written
  size_t device_in_use = 0;   // bytes in use on the device while the optimizer exists: the training footprint
};

// One optimizer step over the model's parameters, timed.
OptimizerTiming time_optimizer(const Json& section, cuda::Gpt2Cuda& model, int repeats) {
  Json hyperparameters = section;
  const std::string name = hyperparameters.at("name").get<std::string>();
  hyperparameters.erase("name");
  const OptimizerSpec& spec = find_optimizer(name);
  auto optimizer = spec.create(spec.normalize(hyperparameters), model.num_parameters(), segments_of(model.layout()),
                               Placement::device);
  DeviceStep step{model.master(), model.grads(), model.params(), 1.0f, 1, 0, model.stream()};
  EventTimer timer(model.stream());
  std::vector<double> times;
  for (int i = 0; i < repeats + 3; ++i) {
    timer.start();
    optimizer->step_device(step, StepInfo{i + 1, 1e-4f, 1, 0});
    const double ms = timer.stop_ms();
    if (i >= 3) times.push_back(ms);
  }
  const double P = static_cast<double>(model.num_parameters());
  size_t free_bytes = 0, total_bytes = 0;
  EMIX_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return {median(times), P * (4.0 + 4.0 + 2.0 + 2.0) + 2.0 * static_cast<double>(optimizer->state_bytes()),
          total_bytes - free_bytes};
}

// Device-to-device copy bandwidth in bytes/ms (bytes read plus bytes
// written), median over repeats of a 1 GiB copy: large enough to run at the
// memory's rate, small enough to fit beside any model.
double copy_bandwidth(cudaStream_t stream, int repeats) {
  constexpr size_t kBytes = size_t{1} << 30;
  void *from = nullptr, *to = nullptr;
  EMIX_CUDA_CHECK(cudaMalloc(&from, kBytes));
  EMIX_CUDA_CHECK(cudaMalloc(&to, kBytes));
  EMIX_CUDA_CHECK(cudaMemsetAsync(from, 1, kBytes, stream));
  EventTimer timer(stream);
  std::vector<double> times;
  for (int i = 0; i < repeats + 3; ++i) {
    timer.start();
    EMIX_CUDA_CHECK(cudaMemcpyAsync(to, from, kBytes, cudaMemcpyDeviceToDevice, stream));
    const double ms = timer.stop_ms();
    if (i >= 3) times.push_back(ms);
  }
  cudaFree(from);
  cudaFree(to);
  return 2.0 * static_cast<double>(kBytes) / median(times);
}

}  // namespace

void run_cuda_benchmark(const Config& config, int warmup, int steps) {
  std::string why;
  const auto devices = cuda::list_devices(&why);
  if (devices.empty()) fail("bench: no usable GPU ({})", why);
  const ModelConfig& m = config.model;
  const int B = config.training.batch_size, T = config.training.seq_len;
  cuda::Gpt2Cuda model(m, gpt2_cuda_options(config.cuda));
  model.init_weights(config.training.seed);
  std::mt19937 random(1);
  std::uniform_int_distribution<int32_t> token(0, m.vocab_size - 1);
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = token(random);
    targets[i] = token(random);
  }
  // Steps: forward + backward + norm, as the trainer runs them (the
  // optimizer is timed apart below).
  EventTimer timer(model.stream());
  std::vector<double> times;
  for (int i = 0; i < warmup + steps; ++i) {
    timer.start();
    model.zero_grad();
    model.forward_backward(inputs, targets, B, T, 1.0f);
    model.grad_norm();
    const double ms = timer.stop_ms();
    if (i >= warmup) times.push_back(ms);
  }
  const double step_ms = median(times);
  model.enable_kernel_profile(true);
  model.zero_grad();
  model.forward_backward(inputs, targets, B, T, 1.0f);
  const auto groups = model.kernel_times();
  model.enable_kernel_profile(false);
  const OptimizerTiming chosen = time_optimizer(config.optimizer, model, 20);
  const OptimizerTiming adamw = time_optimizer(Json{{"name", "adamw"}}, model, 20);
  const double optimizer_ms = chosen.ms, optimizer_bytes = chosen.bytes;
  const double copy_rate = copy_bandwidth(model.stream(), 20);
  const size_t total_bytes = devices[0].total_memory_bytes;
  const double tokens = static_cast<double>(B) * T;
  const double total_ms = step_ms + optimizer_ms;
  const double flops_per_token = training_flops_per_token(m, model.num_parameters(), T);
  const double peak = cuda::dense_bf16_peak_flops(devices[0].name);
  const std::string optimizer_name = config.optimizer.at("name").get<std::string>();
  std::printf("device                  %s\n", devices[0].name.c_str());
  const char* cudnn_backward = config.cuda.deterministic ? " (deterministic backward)" : " (atomic backward)";
  std::printf("model                   %d layers, %d channels, %d heads, %s parameters; attention %s%s, recompute %s\n",
              m.n_layer, m.n_embd, m.n_head, format_count(static_cast<double>(model.num_parameters())).c_str(),
              config.cuda.attention.c_str(), config.cuda.attention == "cudnn" ? cudnn_backward : "",
              config.cuda.recompute.c_str());
  std::printf("micro-batch             %d x %d tokens\n", B, T);
  std::printf("forward+backward        %.2f ms (median of %d)\n", step_ms, steps);
  // Kernel groups: timed in one more step with an event after each
  // operation, apart from the timed steps above.
  double grouped_ms = 0.0;
  for (const auto& group : groups) grouped_ms += group.second;
  for (const auto& [name, ms] : groups) {
    std::printf("  %-21s %.2f ms (%.0f%%)\n", name.c_str(), ms, 100.0 * ms / grouped_ms);
  }
  std::printf("%-23s %.2f ms, %.0f GB/s (%.0f%% of a %.0f GB/s device-to-device copy)\n", (optimizer_name + " step").c_str(),
              optimizer_ms, optimizer_bytes / optimizer_ms / 1e6, 100.0 * (optimizer_bytes / optimizer_ms) / copy_rate,
              copy_rate / 1e6);
  std::printf("adamw step              %.2f ms, %.0f GB/s; %s / adamw = %.2f\n", adamw.ms, adamw.bytes / adamw.ms / 1e6,
              optimizer_name.c_str(), optimizer_ms / adamw.ms);
  std::printf("step (one micro-batch)  %.2f ms, %s tokens/s", total_ms, format_count(tokens / total_ms * 1e3).c_str());
  if (peak > 0.0) std::printf(", MFU %.1f%%", 100.0 * tokens / total_ms * 1e3 * flops_per_token / peak);
  std::printf("\nmemory in use           %s of %s (model, activations, %s state, library workspaces)\n",
              format_bytes(static_cast<double>(chosen.device_in_use)).c_str(), format_bytes(static_cast<double>(total_bytes)).c_str(),
              optimizer_name.c_str());
}

}  // namespace emix
