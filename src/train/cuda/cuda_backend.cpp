// The "cuda" training backend: Gpt2Cuda on one GPU, the optimizer's state on
// the device and its fused update kernels; host copies only for checkpoints,
// evaluation-point conversions and sampling.
#include <memory>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/text.hpp"
#include "distributed/process_identity.hpp"
#include "kernels/cuda/device.hpp"
#include "model/cuda/gpt2_cuda.hpp"
#include "model/gpt2_cpu.hpp"
#include "train/backend.hpp"
#include "train/cuda/cuda_options.hpp"

namespace emix {
namespace {

class CudaBackend final : public ModelBackend {
 public:
  explicit CudaBackend(const Config& config)
      : model_((use_this_ranks_device(), config.model), gpt2_cuda_options(config.cuda)),
        rounding_seed_(config.training.seed),
        peak_flops_(cuda::dense_bf16_peak_flops(cuda::current_device().name)),
        host_weights_(model_.num_parameters()) {}

  const ParameterLayout& layout() const override { return model_.layout(); }
  Placement placement() const override { return Placement::device; }
  double peak_flops() const override { return peak_flops_; }

  std::vector<std::string> describe(int B, int T, size_t state_bytes) const override {
    const cuda::DeviceInfo device = cuda::current_device();
    std::vector<std::string> lines = {fmt::format("device: {} ({} SMs, {} of memory)", device.name, device.multiprocessors,
                                                  format_bytes(static_cast<double>(device.total_memory_bytes)))};
    const size_t total = table_total(B, T);
    for (const cuda::MemoryItem& item : model_.memory_table(B, T)) {
      lines.push_back(fmt::format("  memory: {:<28} {:>10}", item.name, format_bytes(static_cast<double>(item.bytes))));
    }
    lines.push_back(fmt::format("  memory: {:<28} {:>10}", "optimizer state", format_bytes(static_cast<double>(state_bytes))));
    lines.push_back(fmt::format("  memory: {:<28} {:>10} for micro-batches of {}×{}", "total",
                                format_bytes(static_cast<double>(total + state_bytes)), B, T));
    // Activations grow linearly with B; the libraries' workspaces and
    // fragmentation get a 5% margin.
    const size_t per_sequence = table_total(2, T) - table_total(1, T);
    const size_t fixed = table_total(1, T) - per_sequence + state_bytes;
    const auto usable = static_cast<size_t>(0.95 * static_cast<double>(device.total_memory_bytes));
    const size_t largest = usable > fixed ? (usable - fixed) / per_sequence : 0;
    lines.push_back(fmt::format("  largest micro-batch that fits at T={}: about {} sequences{}", T, largest,
                                largest < static_cast<size_t>(B) ? " (less than training.batch_size: expect out of memory; "
                                                                   "lower it or set cuda.recompute)"
                                                                 : ""));
    return lines;
  }

  void init_weights(uint64_t seed) override { model_.init_weights(seed); }
  void zero_grad() override { model_.zero_grad(); }
  float forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                         float grad_scale) override {
    return model_.forward_backward(inputs, targets, B, T, grad_scale);
  }
  float forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T) override {
    return model_.forward(inputs, targets, B, T);
  }
  double grad_norm() override { return model_.grad_norm(); }
  double grad_norm_squared(size_t begin, size_t count) override { return model_.grad_norm_squared(begin, count); }
  DeviceBuffers padded_device_buffers(size_t padded) override {
    model_.pad_buffers(padded);
    return {model_.master(), model_.params(), model_.grads(), rounding_seed_, model_.stream()};
  }
  void master_changed(int64_t step) override { rederive_bf16_weights(step); }
  void report_gradients_of_next_backward(GradientsReady ready) override {
    model_.report_gradients_of_next_backward(std::move(ready));
  }

  void step(Optimizer& optimizer, const StepInfo& info, float grad_scale) override {
    optimizer.step_device(device_step(grad_scale), info);
  }

  std::span<float> weights() override {
    model_.get_weights(host_weights_);
    return host_weights_;
  }
  void weights_changed(int64_t step) override {
    model_.set_weights(host_weights_);
    rederive_bf16_weights(step);
  }
  void pull_optimizer_state(Optimizer& optimizer) override { optimizer.copy_state_to_host(); }
  void push_optimizer_state(Optimizer& optimizer) override { optimizer.copy_state_to_device(); }
  void to_eval_params(Optimizer& optimizer) override { optimizer.to_eval_params_device(device_step(1.0f)); }
  void to_train_params(Optimizer& optimizer) override { optimizer.to_train_params_device(device_step(1.0f)); }

  Gpt2Cpu& sampling_model() override {
    if (!sampler_) sampler_.emplace(model_.config());
    model_.get_weights(sampler_->params());
    return *sampler_;
  }

 private:
  size_t table_total(int B, int T) const {
    size_t total = 0;
    for (const cuda::MemoryItem& item : model_.memory_table(B, T)) total += item.bytes;
    return total;
  }

  // After update `step` the bf16 weights are master rounded stochastically
  // as that update rounded them; before any (step 0), to nearest.
  void rederive_bf16_weights(int64_t step) {
    if (step > 0) {
      model_.round_weights_stochastically(rounding_seed_, static_cast<uint64_t>(step));
    } else {
      model_.refresh_bf16_weights();
    }
  }

  // This rank's GPU (the first of a single process), chosen before anything
  // is allocated. The NCCL communicator has chosen the same one.
  static void use_this_ranks_device() {
    std::string why;
    if (cuda::list_devices(&why).empty()) fail("device \"cuda\": no usable GPU ({})", why);
    cuda::select_device_for_local_rank(read_process_identity().local_rank);
  }

  DeviceStep device_step(float grad_scale) {
    DeviceStep s;
    s.master = model_.master();
    s.grads = model_.grads();
    s.params_bf16 = model_.params();
    s.grad_scale = grad_scale;
    s.rounding_seed = rounding_seed_;
    s.element_offset = 0;
    s.stream = model_.stream();
    return s;
  }

  cuda::Gpt2Cuda model_;
  uint64_t rounding_seed_;
  double peak_flops_;  // of the device, read once: the progress line asks at every log interval
  std::vector<float> host_weights_;
  std::optional<Gpt2Cpu> sampler_;
};

const bool cuda_registered = register_backend("cuda", [](const Config& config) -> std::unique_ptr<ModelBackend> {
  return std::make_unique<CudaBackend>(config);
});

}  // namespace

cuda::Gpt2CudaOptions gpt2_cuda_options(const CudaConfig& config) {
  cuda::Gpt2CudaOptions options;
  options.attention = config.attention == "reference" ? cuda::AttentionKind::reference : cuda::AttentionKind::cudnn;
  if (config.recompute == "gelu") options.recompute = cuda::Recompute::gelu;
  if (config.recompute == "gelu+layernorm") options.recompute = cuda::Recompute::gelu_layernorm;
  options.deterministic = config.deterministic;
  return options;
}

}  // namespace emix
