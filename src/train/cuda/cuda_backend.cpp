// The "cuda" training backend: Gpt2Cuda on one GPU, the optimizer's state on
// the device and its fused update kernels; host copies only for checkpoints,
// evaluation-point conversions and sampling.
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/text.hpp"
#include "kernels/cuda/device.hpp"
#include "model/cuda/gpt2_cuda.hpp"
#include "model/gpt2_cpu.hpp"
#include "train/backend.hpp"

namespace emix {
namespace {

cuda::AttentionKind attention_kind(const std::string& name) {
  if (name == "cudnn") return cuda::AttentionKind::cudnn;
  if (name == "reference") return cuda::AttentionKind::reference;
  fail("cuda.attention: \"{}\" is not one of \"cudnn\", \"reference\"", name);
}

class CudaBackend final : public ModelBackend {
 public:
  explicit CudaBackend(const Config& config)
      : model_((require_device(), config.model), cuda::Gpt2CudaOptions{attention_kind(config.cuda.attention)}),
        rounding_seed_(config.training.seed),
        host_weights_(model_.num_parameters()) {}

  const ParameterLayout& layout() const override { return model_.layout(); }
  Placement placement() const override { return Placement::device; }

  std::vector<std::string> describe(int B, int T) const override {
    std::string why;
    const auto devices = cuda::list_devices(&why);
    std::vector<std::string> lines = {fmt::format("device: {} ({} SMs, {} of memory)", devices.at(0).name,
                                                  devices.at(0).multiprocessors,
                                                  format_bytes(static_cast<double>(devices.at(0).total_memory_bytes)))};
    size_t total = 0;
    for (const cuda::MemoryItem& item : model_.memory_table(B, T)) {
      lines.push_back(fmt::format("  memory: {:<28} {:>10}", item.name, format_bytes(static_cast<double>(item.bytes))));
      total += item.bytes;
    }
    lines.push_back(fmt::format("  memory: {:<28} {:>10} (model and activations for micro-batch {}×{}; optimizer state beside)",
                                "total", format_bytes(static_cast<double>(total)), B, T));
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

  void step(Optimizer& optimizer, const StepInfo& info, float grad_scale) override {
    optimizer.step_device(device_step(grad_scale), info);
  }

  std::span<float> weights() override {
    model_.get_weights(host_weights_);
    return host_weights_;
  }
  void weights_changed(int64_t step) override {
    model_.set_weights(host_weights_);
    if (step > 0) model_.round_weights_stochastically(rounding_seed_, static_cast<uint64_t>(step));
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
  static void require_device() {
    std::string why;
    if (cuda::list_devices(&why).empty()) fail("device \"cuda\": no usable GPU ({})", why);
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
  std::vector<float> host_weights_;
  std::optional<Gpt2Cpu> sampler_;
};

const bool cuda_registered = register_backend("cuda", [](const Config& config) -> std::unique_ptr<ModelBackend> {
  return std::make_unique<CudaBackend>(config);
});

}  // namespace
}  // namespace emix
