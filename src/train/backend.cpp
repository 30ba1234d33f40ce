#include "train/backend.hpp"

#include <map>
#include <stdexcept>
#include <omp.h>

#include <fmt/format.h>

#include "core/error.hpp"
#include "model/gpt2_cpu.hpp"
#include "optim/grad_clip.hpp"

namespace emix {
namespace {

// The CPU reference: the model's buffers are the host buffers, so weights(),
// the optimizer state and sampling need no copies.
class CpuBackend final : public ModelBackend {
 public:
  explicit CpuBackend(const ModelConfig& config) : model_(config) {}

  const ParameterLayout& layout() const override { return model_.layout(); }
  Placement placement() const override { return Placement::host; }
  std::vector<std::string> describe(int, int, size_t) const override {
    return {fmt::format("device: CPU, {} threads", omp_get_max_threads())};
  }
  void init_weights(uint64_t seed) override { model_.init_weights(seed); }
  void zero_grad() override { model_.zero_grad(); }
  float forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                         float grad_scale) override {
    float loss = model_.forward(inputs, targets, B, T);
    model_.backward(grad_scale);
    return loss;
  }
  float forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T) override {
    return model_.forward(inputs, targets, B, T);
  }
  double grad_norm() override { return global_norm(model_.grads()); }
  HostBuffers padded_host_buffers(size_t padded) override {
    model_.pad_buffers(padded);
    return {model_.padded_params(), model_.padded_grads()};
  }
  void step(Optimizer& optimizer, const StepInfo& info, float grad_scale) override {
    if (grad_scale != 1.0f) scale_in_place(model_.grads(), grad_scale);
    optimizer.step(model_.params(), model_.grads(), info);
  }
  std::span<float> weights() override { return model_.params(); }
  void weights_changed(int64_t) override {}
  void pull_optimizer_state(Optimizer&) override {}
  void push_optimizer_state(Optimizer&) override {}
  void to_eval_params(Optimizer& optimizer) override { optimizer.to_eval_params(model_.params()); }
  void to_train_params(Optimizer& optimizer) override { optimizer.to_train_params(model_.params()); }
  Gpt2Cpu& sampling_model() override { return model_; }

 private:
  Gpt2Cpu model_;
};

std::map<std::string, BackendFactory>& backends() {
  static std::map<std::string, BackendFactory> registry;
  return registry;
}

const bool cpu_registered = register_backend("cpu", [](const Config& config) -> std::unique_ptr<ModelBackend> {
  return std::make_unique<CpuBackend>(config.model);
});

}  // namespace

ModelBackend::HostBuffers ModelBackend::padded_host_buffers(size_t) {
  throw std::logic_error("padded_host_buffers: this backend keeps its buffers in device memory");
}

ModelBackend::DeviceBuffers ModelBackend::padded_device_buffers(size_t) {
  throw std::logic_error("padded_device_buffers: this backend keeps its buffers in host memory");
}

double ModelBackend::grad_norm_squared(size_t, size_t) {
  throw std::logic_error("grad_norm_squared: this backend keeps its gradients in host memory");
}

void ModelBackend::master_changed(int64_t) {
  throw std::logic_error("master_changed: this backend has no master weights on a device");
}

bool register_backend(const std::string& device, BackendFactory factory) {
  backends()[device] = std::move(factory);
  return true;
}

std::unique_ptr<ModelBackend> make_backend(const Config& config) {
  auto it = backends().find(config.device);
  if (it == backends().end()) {
    if (config.device == "cuda") fail("device \"cuda\": this build has no CUDA backend (nvcc was not found when it was configured)");
    fail("device \"{}\" is unknown: use \"cpu\" or \"cuda\"", config.device);
  }
  return it->second(config);
}

}  // namespace emix
