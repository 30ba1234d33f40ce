#pragma once
// What the trainer needs of the device that runs the model: the CPU
// reference (Gpt2Cpu) or one GPU (Gpt2Cuda, registered by the CUDA build).
// The trainer's logic (data order, accumulation, clipping decisions,
// skipping, checkpoints, resume) is the same for both; only where the
// numbers live differs.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "model/gpt2_config.hpp"
#include "optim/optimizer.hpp"

namespace emix {

class Gpt2Cpu;

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;

  virtual const ParameterLayout& layout() const = 0;
  // Where the optimizer's state must live.
  virtual Placement placement() const = 0;
  // The device's dense bf16 peak in FLOP/s, for MFU; 0 where unknown (CPU).
  virtual double peak_flops() const { return 0.0; }
  // Lines for the startup log (device, memory table) for micro-batches of
  // B×T, with the optimizer's state taking state_bytes.
  virtual std::vector<std::string> describe(int B, int T, size_t state_bytes) const = 0;

  virtual void init_weights(uint64_t seed) = 0;
  virtual void zero_grad() = 0;
  // One micro-batch: adds grad_scale · d(mean loss)/d(params) to the
  // gradients and returns the mean loss.
  virtual float forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                                 float grad_scale) = 0;
  // Mean loss only (validation).
  virtual float forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T) = 0;
  virtual double grad_norm() = 0;
  // The fp32 weights and accumulated gradients in host memory, for
  // placements where they live there (the CPU), for multi-rank training
  // (train/data_parallel.cpp): their buffers extended with zeros to
  // `padded` elements (a ZeRO plan's world × chunk), so that collectives
  // work on them in place. The spans are valid until the next call; the
  // weights' first parameter-count elements are weights(). Other backends
  // throw emix::Error.
  struct HostBuffers {
    std::span<float> weights;
    std::span<float> gradients;
  };
  virtual HostBuffers padded_host_buffers(size_t padded);
  // The same for a GPU backend's device buffers (bf16 weights and gradients,
  // fp32 master weights), with what an optimizer update on them needs.
  // Host backends throw emix::Error.
  struct DeviceBuffers {
    float* master = nullptr;
    void* params_bf16 = nullptr;
    void* grads_bf16 = nullptr;
    uint64_t rounding_seed = 0;  // DeviceStep::rounding_seed
    void* stream = nullptr;      // cudaStream_t the model runs on
  };
  virtual DeviceBuffers padded_device_buffers(size_t padded);
  // Σ g² over the accumulated gradients [begin, begin + count), on a GPU
  // backend: grad_norm() is the square root of the whole buffer's.
  virtual double grad_norm_squared(size_t begin, size_t count);
  // A GPU backend's master weights were changed on the device (gathered
  // from the ranks that updated them): the bf16 weights are re-derived as
  // update `step` rounded them (weights_changed()'s rule).
  virtual void master_changed(int64_t step);
  // During the next forward_backward only: `ready` is called with each group
  // of gradient_groups_in_backward_order() as soon as the work finishing its
  // gradients is queued (on DeviceBuffers::stream for a GPU), so that data
  // parallelism sends them while the backward goes on. Null: no reports.
  // The default (the CPU) never reports; the caller then reduces the
  // unreported parameters after the backward.
  using GradientsReady = std::function<void(std::span<const ParamRange> ranges)>;
  virtual void report_gradients_of_next_backward(GradientsReady ready) { (void)ready; }
  // One optimizer update from the accumulated gradients, each multiplied by
  // grad_scale first (clipping).
  virtual void step(Optimizer& optimizer, const StepInfo& info, float grad_scale) = 0;

  // The fp32 weights on the host: the live buffer on the CPU, a copy of the
  // device's master weights on a GPU (fetched by this call). After writing
  // into the span, call weights_changed(step) with the number of updates
  // those weights have had: a GPU re-derives its bf16 weights from them as
  // that update's stochastic rounding did, so resuming stays bit-exact.
  virtual std::span<float> weights() = 0;
  virtual void weights_changed(int64_t step) = 0;
  // The optimizer's state on the host (for checkpoints) and back.
  virtual void pull_optimizer_state(Optimizer& optimizer) = 0;
  virtual void push_optimizer_state(Optimizer& optimizer) = 0;
  // Schedule-free's evaluation point x and back (Optimizer::to_eval_params).
  virtual void to_eval_params(Optimizer& optimizer) = 0;
  virtual void to_train_params(Optimizer& optimizer) = 0;

  // A CPU model holding the current weights, for sampling text.
  virtual Gpt2Cpu& sampling_model() = 0;
};

// Builds the backend config.device names; "cuda" exists only in builds with
// the CUDA backend (it registers itself).
std::unique_ptr<ModelBackend> make_backend(const Config& config);

using BackendFactory = std::function<std::unique_ptr<ModelBackend>(const Config& config)>;
bool register_backend(const std::string& device, BackendFactory factory);

}  // namespace emix
