#pragma once
// GPT-2 on the CPU in fp32: forward, backward and inference over one flat
// parameter buffer and one flat gradient buffer (layout: ParameterLayout).
// This is the reference backend: the golden tests pin it down and the CUDA
// backend is checked against it. Parallel with OpenMP; deterministic for a
// given thread count.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/gpt2_config.hpp"

namespace emix {

// GPT-2 initialization from `seed` into a buffer laid out as `layout`
// (Gpt2Cpu::init_weights; the CUDA backend initializes through it too, so
// both start from the same weights).
void init_gpt2_weights(std::span<float> params, const ModelConfig& config, const ParameterLayout& layout, uint64_t seed);

class Gpt2Cpu {
 public:
  explicit Gpt2Cpu(const ModelConfig& config);
  ~Gpt2Cpu();
  Gpt2Cpu(const Gpt2Cpu&) = delete;
  Gpt2Cpu& operator=(const Gpt2Cpu&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  std::span<float> params() { return std::span<float>(params_).first(layout_.num_parameters()); }
  std::span<const float> params() const { return std::span<const float>(params_).first(layout_.num_parameters()); }
  std::span<float> grads() { return std::span<float>(grads_).first(layout_.num_parameters()); }
  std::span<const float> grads() const { return std::span<const float>(grads_).first(layout_.num_parameters()); }

  // Extends the parameter and gradient buffers with zeros to `elements`
  // (never below the parameter count), so that multi-rank collectives can
  // work on them in place as world × chunk (train/data_parallel.cpp).
  // params() and grads() still span the parameters, padded_params() and
  // padded_grads() the whole buffers. Values are kept; spans taken before
  // are invalidated. The padding stays zero: nothing but zero_grad and the
  // collectives write it.
  void pad_buffers(size_t elements);
  std::span<float> padded_params() { return params_; }
  std::span<float> padded_grads() { return grads_; }

  // GPT-2 initialization from `seed`: weights N(0, 0.02), the two residual
  // projections (attprojw, fcprojw) N(0, 0.02/sqrt(2·n_layer)), LayerNorm
  // weights 1, biases 0, padded rows of wte 0.
  void init_weights(uint64_t seed);

  // Forward over B sequences of T tokens (T <= block_size), ids < vocab_size.
  // With targets (B·T ids), returns the mean cross-entropy over all B·T
  // positions and keeps what backward needs; without, returns 0.
  float forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T);
  // Logits of the last forward, [B][T][padded_vocab_size]; padded columns
  // are not meaningful. Valid until the next backward.
  std::span<const float> logits() const;

  void zero_grad();
  // grads += grad_scale · d(loss)/d(params), for the forward just done with
  // targets. grad_scale = 1/accumulation_steps averages micro-batches.
  void backward(float grad_scale = 1.0f);

  // Logits of the next token after each of B sequences of T tokens,
  // [B][vocab_size], computing the output head for the last position only.
  std::span<const float> next_token_logits(std::span<const int32_t> inputs, int B, int T);

 private:
  struct Activations;
  // Checks the batch, then runs the embedding and every block; returns the
  // last block's output, [B·T, n_embd].
  const float* forward_blocks(std::span<const int32_t> inputs, int B, int T);

  ModelConfig config_;
  ParameterLayout layout_;
  std::vector<float> params_;
  std::vector<float> grads_;
  std::unique_ptr<Activations> acts_;
};

}  // namespace emix
