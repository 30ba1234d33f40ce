#include "model/gpt2_cpu.hpp"

#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cpu/encoder.hpp"
#include "kernels/cpu/gelu.hpp"
#include "kernels/cpu/layernorm.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/residual.hpp"
#include "model/model_tensors.hpp"

namespace emix {
namespace {

// derive_seed purpose of tensor i's initialization: kInitStreams + i.
constexpr uint64_t kInitStreams = 0x100;
constexpr float kInitStd = 0.02f;

struct Shape {
  int B, T, C, NH;
  int64_t N;  // B·T rows

  int64_t attention_size() const { return static_cast<int64_t>(B) * NH * T * T; }
};

// One block's activations; its input is the previous block's residual3 (or
// the embedding).
struct BlockActivations {
  float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att, *residual2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *residual3;
};

// Gradients of activations, reused by every block.
struct Scratch {
  float* dresidual;  // [N, C], d(loss)/d(residual stream), accumulated through the blocks
  float* dnarrow;    // [N, C]
  float* dwide;      // [N, 4C]
};

template <typename T>
void grow(std::vector<T>& buffer, int64_t size) {
  if (buffer.size() < static_cast<size_t>(size)) buffer.resize(static_cast<size_t>(size));
}

void block_forward(const BlockActivations& x, const float* residual, const BlockTensors<const float>& w, float* projected,
                   const Shape& s) {
  const int C = s.C;
  cpu::layernorm_forward(x.ln1, x.ln1_mean, x.ln1_rstd, residual, w.ln1w, w.ln1b, s.N, C);
  cpu::matmul_forward(x.qkv, x.ln1, w.qkvw, w.qkvb, s.N, C, 3 * C);
  cpu::attention_forward(x.atty, x.att, x.qkv, s.B, s.T, C, s.NH);
  cpu::matmul_forward(projected, x.atty, w.attprojw, w.attprojb, s.N, C, C);
  cpu::residual_forward(x.residual2, residual, projected, s.N * C);
  cpu::layernorm_forward(x.ln2, x.ln2_mean, x.ln2_rstd, x.residual2, w.ln2w, w.ln2b, s.N, C);
  cpu::matmul_forward(x.fch, x.ln2, w.fcw, w.fcb, s.N, C, 4 * C);
  cpu::gelu_forward(x.fch_gelu, x.fch, s.N * 4 * C);
  cpu::matmul_forward(projected, x.fch_gelu, w.fcprojw, w.fcprojb, s.N, 4 * C, C);
  cpu::residual_forward(x.residual3, x.residual2, projected, s.N * C);
}

// On entry d.dresidual holds d(loss)/d(residual3); on exit d(loss)/d(residual).
void block_backward(const BlockActivations& x, const float* residual, const BlockTensors<const float>& w,
                    const BlockTensors<float>& g, const Scratch& d, const Shape& s) {
  const int C = s.C;
  cpu::matmul_backward(d.dwide, g.fcprojw, g.fcprojb, d.dresidual, x.fch_gelu, w.fcprojw, s.N, 4 * C, C);
  cpu::gelu_backward(d.dwide, x.fch, d.dwide, s.N * 4 * C);
  cpu::matmul_backward(d.dnarrow, g.fcw, g.fcb, d.dwide, x.ln2, w.fcw, s.N, C, 4 * C);
  cpu::layernorm_backward(d.dresidual, g.ln2w, g.ln2b, d.dnarrow, x.residual2, w.ln2w, x.ln2_mean, x.ln2_rstd, s.N, C);
  cpu::matmul_backward(d.dnarrow, g.attprojw, g.attprojb, d.dresidual, x.atty, w.attprojw, s.N, C, C);
  cpu::attention_backward(d.dwide, d.dnarrow, x.qkv, x.att, s.B, s.T, C, s.NH);
  cpu::matmul_backward(d.dnarrow, g.qkvw, g.qkvb, d.dwide, x.ln1, w.qkvw, s.N, C, 3 * C);
  cpu::layernorm_backward(d.dresidual, g.ln1w, g.ln1b, d.dnarrow, residual, w.ln1w, x.ln1_mean, x.ln1_rstd, s.N, C);
}

// rows × cols values N(0, std²); row r draws from its own stream, so the
// result does not depend on the thread count.
void fill_normal(float* data, int64_t rows, int64_t cols, float std, uint64_t seed, uint64_t purpose) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(derive_seed(seed, purpose, static_cast<uint64_t>(r)));
    for (int64_t c = 0; c < cols; ++c) data[r * cols + c] = std * static_cast<float>(rng.next_normal());
  }
}

const ModelConfig& validated(const ModelConfig& config) {
  config.validate();
  return config;
}

}  // namespace

struct Gpt2Cpu::Activations {
  Shape shape{};
  bool ready_for_backward = false;  // the last call was a forward with targets
  int64_t logits_rows = 0;          // rows of `logits` that logits() shows
  std::vector<int32_t> inputs, targets;
  std::vector<float> encoded;
  // Every block's activations, one buffer per kind, block l at l·(its size).
  std::vector<float> ln1, ln1_mean, ln1_rstd, qkv, atty, att, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, residual3;
  std::vector<float> projected;  // attention or MLP output before the residual add; not needed by backward
  std::vector<float> lnf, lnf_mean, lnf_rstd, logits, lse, losses;
  std::vector<float> dresidual, dnarrow, dwide;
  std::vector<float> next_logits;

  void reserve_blocks(const Shape& s, int n_layer) {
    const int64_t L = n_layer;
    const int64_t NC = s.N * s.C;
    for (auto* buffer : {&encoded, &projected}) grow(*buffer, NC);
    for (auto* buffer : {&ln1, &atty, &residual2, &ln2, &residual3}) grow(*buffer, L * NC);
    for (auto* buffer : {&ln1_mean, &ln1_rstd, &ln2_mean, &ln2_rstd}) grow(*buffer, L * s.N);
    grow(qkv, L * 3 * NC);
    grow(fch, L * 4 * NC);
    grow(fch_gelu, L * 4 * NC);
    grow(att, L * s.attention_size());
  }

  BlockActivations block(int l) {
    const Shape& s = shape;
    const int64_t NC = s.N * s.C;
    auto at = [l](std::vector<float>& buffer, int64_t size) { return buffer.data() + l * size; };
    return {at(ln1, NC),       at(ln1_mean, s.N), at(ln1_rstd, s.N),    at(qkv, 3 * NC),
            at(atty, NC),      at(att, s.attention_size()),
            at(residual2, NC), at(ln2, NC),       at(ln2_mean, s.N),    at(ln2_rstd, s.N),
            at(fch, 4 * NC),   at(fch_gelu, 4 * NC), at(residual3, NC)};
  }

  const float* block_input(int l) { return l == 0 ? encoded.data() : block(l - 1).residual3; }
};

Gpt2Cpu::Gpt2Cpu(const ModelConfig& config)
    : config_(validated(config)),
      layout_(config_),
      params_(layout_.num_parameters()),
      grads_(layout_.num_parameters()),
      acts_(std::make_unique<Activations>()) {}

Gpt2Cpu::~Gpt2Cpu() = default;

void init_gpt2_weights(std::span<float> params, const ModelConfig& config, const ParameterLayout& layout, uint64_t seed) {
  const float residual_std = kInitStd / std::sqrt(2.0f * static_cast<float>(config.n_layer));
  std::fill(params.begin(), params.end(), 0.0f);
  const auto& tensors = layout.tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    float* data = params.data() + t.offset;
    if (t.name == "ln1w" || t.name == "ln2w" || t.name == "lnfw") {
      std::fill(data, data + t.count, 1.0f);
    } else if (t.weight_decay) {  // the matrices and embeddings; biases stay 0
      const int64_t cols = t.shape.back();
      const int64_t rows = t.name == "wte" ? config.vocab_size : static_cast<int64_t>(t.count) / cols;
      const bool residual_projection = t.name == "attprojw" || t.name == "fcprojw";
      fill_normal(data, rows, cols, residual_projection ? residual_std : kInitStd, seed, kInitStreams + i);
    }
  }
}

void Gpt2Cpu::init_weights(uint64_t seed) { init_gpt2_weights(params(), config_, layout_, seed); }

void Gpt2Cpu::pad_buffers(size_t elements) {
  elements = std::max(elements, layout_.num_parameters());
  params_.resize(elements, 0.0f);
  grads_.resize(elements, 0.0f);
}

const float* Gpt2Cpu::forward_blocks(std::span<const int32_t> inputs, int B, int T) {
  check_token_batch(inputs, "inputs", B, T, config_);
  Activations& a = *acts_;
  a.ready_for_backward = false;
  a.shape = Shape{B, T, config_.n_embd, config_.n_head, static_cast<int64_t>(B) * T};
  a.reserve_blocks(a.shape, config_.n_layer);
  a.inputs.assign(inputs.begin(), inputs.end());
  const auto p = tensors_in(std::as_const(params_).data(), layout_, config_.n_layer);
  cpu::encoder_forward(a.encoded.data(), a.inputs.data(), p.wte, p.wpe, B, T, config_.n_embd);
  for (int l = 0; l < config_.n_layer; ++l) block_forward(a.block(l), a.block_input(l), p.blocks[l], a.projected.data(), a.shape);
  return a.block_input(config_.n_layer);
}

float Gpt2Cpu::forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T) {
  if (!targets.empty()) check_token_batch(targets, "targets", B, T, config_);
  const float* last = forward_blocks(inputs, B, T);
  Activations& a = *acts_;
  const int64_t N = a.shape.N;
  const int C = config_.n_embd;
  const int Vp = config_.padded_vocab_size;
  grow(a.lnf, N * C);
  for (auto* buffer : {&a.lnf_mean, &a.lnf_rstd, &a.lse, &a.losses}) grow(*buffer, N);
  grow(a.logits, N * Vp);
  const auto p = tensors_in(std::as_const(params_).data(), layout_, config_.n_layer);
  cpu::layernorm_forward(a.lnf.data(), a.lnf_mean.data(), a.lnf_rstd.data(), last, p.lnfw, p.lnfb, N, C);
  cpu::matmul_forward(a.logits.data(), a.lnf.data(), p.wte, nullptr, N, C, Vp);
  a.logits_rows = N;
  if (targets.empty()) return 0.0f;
  a.targets.assign(targets.begin(), targets.end());
  a.ready_for_backward = true;
  return static_cast<float>(cpu::softmax_cross_entropy_forward(a.lse.data(), a.losses.data(), a.logits.data(),
                                                               a.targets.data(), N, config_.vocab_size, Vp));
}

std::span<const float> Gpt2Cpu::logits() const {
  return {acts_->logits.data(), static_cast<size_t>(acts_->logits_rows) * static_cast<size_t>(config_.padded_vocab_size)};
}

void Gpt2Cpu::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

void Gpt2Cpu::backward(float grad_scale) {
  Activations& a = *acts_;
  if (!a.ready_for_backward) fail("Gpt2Cpu::backward needs a forward with targets just before it");
  a.ready_for_backward = false;
  a.logits_rows = 0;  // about to become their gradient
  const Shape& s = a.shape;
  const int C = s.C;
  const int Vp = config_.padded_vocab_size;
  for (auto* buffer : {&a.dresidual, &a.dnarrow}) grow(*buffer, s.N * C);
  grow(a.dwide, s.N * 4 * C);
  const Scratch d{a.dresidual.data(), a.dnarrow.data(), a.dwide.data()};
  const auto p = tensors_in(std::as_const(params_).data(), layout_, config_.n_layer);
  const auto g = tensors_in(grads_.data(), layout_, config_.n_layer);

  float* dlogits = a.logits.data();
  cpu::softmax_cross_entropy_backward(dlogits, a.lse.data(), a.targets.data(), s.N, config_.vocab_size, Vp,
                                      grad_scale / static_cast<float>(s.N));
  cpu::matmul_backward(d.dnarrow, g.wte, nullptr, dlogits, a.lnf.data(), p.wte, s.N, C, Vp);
  std::fill_n(d.dresidual, s.N * C, 0.0f);
  cpu::layernorm_backward(d.dresidual, g.lnfw, g.lnfb, d.dnarrow, a.block_input(config_.n_layer), p.lnfw,
                          a.lnf_mean.data(), a.lnf_rstd.data(), s.N, C);
  for (int l = config_.n_layer - 1; l >= 0; --l) block_backward(a.block(l), a.block_input(l), p.blocks[l], g.blocks[l], d, s);
  cpu::encoder_backward(g.wte, g.wpe, d.dresidual, a.inputs.data(), s.B, s.T, C);
}

std::span<const float> Gpt2Cpu::next_token_logits(std::span<const int32_t> inputs, int B, int T) {
  const float* last = forward_blocks(inputs, B, T);
  Activations& a = *acts_;
  const int C = config_.n_embd;
  const int V = config_.vocab_size;
  // The final LayerNorm and the head run on each sequence's last position only.
  float* last_positions = a.projected.data();
  for (int b = 0; b < B; ++b) {
    const float* row = last + (static_cast<int64_t>(b) * T + T - 1) * C;
    std::copy(row, row + C, last_positions + static_cast<int64_t>(b) * C);
  }
  for (auto* buffer : {&a.lnf_mean, &a.lnf_rstd}) grow(*buffer, B);
  grow(a.lnf, static_cast<int64_t>(B) * C);
  grow(a.next_logits, static_cast<int64_t>(B) * V);
  const auto p = tensors_in(std::as_const(params_).data(), layout_, config_.n_layer);
  cpu::layernorm_forward(a.lnf.data(), a.lnf_mean.data(), a.lnf_rstd.data(), last_positions, p.lnfw, p.lnfb, B, C);
  // The first V rows of wte are the real vocabulary: the padded ones are skipped.
  cpu::matmul_forward(a.next_logits.data(), a.lnf.data(), p.wte, nullptr, B, C, V);
  return {a.next_logits.data(), static_cast<size_t>(B) * static_cast<size_t>(V)};
}

}  // namespace emix
