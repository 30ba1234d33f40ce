#pragma once
// GPT-2 on one GPU in bf16 mixed precision: bf16 weights, activations and
// gradients, fp32 master weights (which the optimizer updates), fp32
// LayerNorm and softmax statistics. Same model, same parameter layout and
// same initialization as the CPU reference (model/gpt2_cpu.hpp), which the
// GPU tests compare it against.
//
// Forward, per block: LayerNorm (fused with the previous residual add) →
// qkv matmul → attention → projection → residual add + LayerNorm → fc
// matmul with GELU in its epilogue → projection; then the final LayerNorm,
// the output head against wte and the fused softmax cross-entropy, which
// leaves d(loss)/d(logits) in place of the logits. Backward walks the blocks
// in reverse, accumulating parameter gradients (micro-batches add up).
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "model/gpt2_config.hpp"

namespace emix::cuda {

enum class AttentionKind { cudnn, reference };

// Activations the backward recomputes instead of keeping one per block:
// GELU's output (4·C per token, the largest), and also the LayerNorm outputs
// (2·C more). Each costs one cheap elementwise pass in the backward.
enum class Recompute { none, gelu, gelu_layernorm };

struct Gpt2CudaOptions {
  AttentionKind attention = AttentionKind::cudnn;
  Recompute recompute = Recompute::none;
  // cuDNN attention's bitwise reproducible backward (make_cudnn_attention);
  // every other kernel, and our reference attention, is deterministic anyway.
  bool deterministic = true;
};

// One line of the startup memory table.
struct MemoryItem {
  std::string name;
  size_t bytes = 0;
};

class Gpt2Cuda {
 public:
  Gpt2Cuda(const ModelConfig& config, Gpt2CudaOptions options);
  ~Gpt2Cuda();
  Gpt2Cuda(const Gpt2Cuda&) = delete;
  Gpt2Cuda& operator=(const Gpt2Cuda&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  size_t num_parameters() const { return layout_.num_parameters(); }
  cudaStream_t stream() const { return stream_; }

  // Device buffers of num_parameters() elements (more after pad_buffers).
  float* master() { return master_; }
  bf16* params() { return params_; }
  bf16* grads() { return grads_; }
  // Extends the three buffers above with zeros to `padded` elements, so that
  // collectives over world × chunk elements work on them in place (ZeRO's
  // padding; train/data_parallel.cpp). Pointers taken before are invalid.
  void pad_buffers(size_t padded);

  // The CPU backend's initialization (init_gpt2_weights), uploaded.
  void init_weights(uint64_t seed);
  // master ← host (then the bf16 weights, rounded to nearest).
  void set_weights(std::span<const float> host);
  // host ← master.
  void get_weights(std::span<float> host) const;
  // The bf16 weights again from master (after master changed on the device),
  // rounded to nearest.
  void refresh_bf16_weights();
  // The bf16 weights from master rounded stochastically as the optimizer's
  // update number `step` rounds them (kernels/bf16_rounding.hpp).
  void round_weights_stochastically(uint64_t seed, uint64_t step);

  void zero_grad();
  // One training micro-batch: forward, loss, and backward, adding
  // grad_scale · d(mean loss)/d(params) to the gradients. Returns the mean
  // loss over the B·T positions.
  float forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                         float grad_scale);
  // The next forward_backward calls `ready` with each group of
  // gradient_groups_in_backward_order() once the kernels that finish its
  // gradients are queued on stream(); later ones do not. Null: none.
  using GradientsReady = std::function<void(std::span<const ParamRange>)>;
  void report_gradients_of_next_backward(GradientsReady ready);
  // Mean loss without touching the gradients (validation).
  float forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T);
  // ‖grads‖₂ over every parameter, in fp32 (deterministic).
  double grad_norm();
  // Σ g² over grads[begin, begin + count), in fp32 (deterministic); grad_norm()
  // is the square root of the whole buffer's.
  double grad_norm_squared(size_t begin, size_t count);

  // Timing of the kernel groups (matmul, attention, LayerNorm, ...) for
  // benchmarks: when enabled, kernel_times() returns the milliseconds of each
  // group summed over the forwards and backwards run since its last call.
  void enable_kernel_profile(bool on);
  std::vector<std::pair<std::string, double>> kernel_times();

  // What each buffer takes on the device for micro-batches of B×T.
  std::vector<MemoryItem> memory_table(int B, int T) const;

 private:
  struct Activations;
  // Runs the forward up to the loss; with grad_scale > 0 the classifier also
  // leaves the logits' gradient in place.
  float run_forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T, float grad_scale,
                    bool write_grad);
  void run_backward(std::span<const int32_t> inputs, int B, int T, const GradientsReady& ready);

  ModelConfig config_;
  ParameterLayout layout_;
  Gpt2CudaOptions options_;
  cudaStream_t stream_ = nullptr;
  float* master_ = nullptr;
  bf16* params_ = nullptr;
  bf16* grads_ = nullptr;
  size_t padded_size_ = 0;  // elements of the three buffers above
  std::vector<std::vector<ParamRange>> gradient_groups_;
  GradientsReady gradients_ready_;
  std::unique_ptr<Activations> acts_;
};

}  // namespace emix::cuda
