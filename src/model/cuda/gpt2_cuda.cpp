#include "model/cuda/gpt2_cuda.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <string_view>
#include <utility>

#include "core/error.hpp"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/classifier.cuh"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/encoder.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/global_norm.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/matmul.cuh"
#include "model/cuda/kernel_profile.hpp"
#include "model/gpt2_cpu.hpp"
#include "model/model_tensors.hpp"

namespace emix::cuda {
namespace {

template <typename T>
T* device_alloc(size_t count) {
  void* p = nullptr;
  EMIX_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

// One block's saved activations (rows N = B·T).
struct BlockActivations {
  bf16 *ln1, *qkv, *atty, *residual2, *ln2, *fch, *fch_gelu, *residual3;
  float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;
  void* attention_saved;
};

// Every activation buffer for micro-batches of B×T, carved out of one
// allocation.
struct ActivationBuffers {
  int32_t* inputs = nullptr;
  int32_t* targets = nullptr;
  bf16* encoded = nullptr;
  std::vector<BlockActivations> blocks;
  bf16* lnf = nullptr;
  float *lnf_mean = nullptr, *lnf_rstd = nullptr;
  bf16* logits = nullptr;  // [N, Vp], then d(loss)/d(logits)
  float* losses = nullptr;
  double* loss_sum = nullptr;
  // Scratch reused by every block.
  bf16* projected = nullptr;  // [N, C], a projection's output before its residual add
  bf16* dresidual = nullptr;  // [N, C]
  bf16* dnarrow = nullptr;    // [N, C]
  bf16* dwide = nullptr;      // [N, 4C]
  float* reduce_scratch = nullptr;
  float* norm_squared = nullptr;
  // With recomputation: the one buffer every block's GELU output (or
  // LayerNorm outputs) lives in, and statistics the recomputation writes.
  bf16* shared_gelu = nullptr;       // [N, 4C]
  bf16* shared_layernorm = nullptr;  // [N, C]
  float* recomputed_stats = nullptr; // [2N]
};

// Lays out `b` for B×T: calls assign(pointer, offset, bytes, name) for each
// buffer and returns the bytes the whole needs. The same walk sizes the
// allocation, fills in the pointers and prints the memory table.
template <typename Assign>
size_t plan_activations(ActivationBuffers& b, const ModelConfig& c, Recompute recompute, int B, int T, size_t attention_bytes,
                        Assign&& assign) {
  const bool shared_gelu = recompute != Recompute::none;
  const bool shared_layernorm = recompute == Recompute::gelu_layernorm;
  const size_t N = static_cast<size_t>(B) * T;
  const size_t C = c.n_embd;
  size_t offset = 0;
  auto take = [&](auto*& pointer, size_t count, const char* name) {
    using Element = std::remove_pointer_t<std::remove_reference_t<decltype(pointer)>>;
    constexpr size_t kAlign = 256;
    offset = (offset + kAlign - 1) / kAlign * kAlign;
    assign(pointer, offset, count * sizeof(Element), name);
    offset += count * sizeof(Element);
  };
  take(b.inputs, N, "inputs and targets");
  take(b.targets, N, "inputs and targets");
  take(b.encoded, N * C, "embeddings");
  if (shared_gelu) take(b.shared_gelu, 4 * N * C, "MLP (before and after GELU)");
  if (shared_layernorm) {
    take(b.shared_layernorm, N * C, "LayerNorm outputs");
    take(b.recomputed_stats, 2 * N, "LayerNorm statistics");
  }
  b.blocks.resize(static_cast<size_t>(c.n_layer));
  for (BlockActivations& x : b.blocks) {
    if (shared_layernorm) {
      x.ln1 = x.ln2 = b.shared_layernorm;
    } else {
      take(x.ln1, N * C, "LayerNorm outputs");
      take(x.ln2, N * C, "LayerNorm outputs");
    }
    take(x.ln1_mean, N, "LayerNorm statistics");
    take(x.ln1_rstd, N, "LayerNorm statistics");
    take(x.qkv, 3 * N * C, "qkv");
    take(x.atty, N * C, "attention outputs");
    char* saved = nullptr;
    take(saved, attention_bytes, "attention saved state");
    x.attention_saved = saved;
    take(x.residual2, N * C, "residual stream");
    take(x.ln2_mean, N, "LayerNorm statistics");
    take(x.ln2_rstd, N, "LayerNorm statistics");
    take(x.fch, 4 * N * C, "MLP (before and after GELU)");
    if (shared_gelu) {
      x.fch_gelu = b.shared_gelu;
    } else {
      take(x.fch_gelu, 4 * N * C, "MLP (before and after GELU)");
    }
    take(x.residual3, N * C, "residual stream");
  }
  take(b.lnf, N * C, "LayerNorm outputs");
  take(b.lnf_mean, N, "LayerNorm statistics");
  take(b.lnf_rstd, N, "LayerNorm statistics");
  take(b.logits, N * static_cast<size_t>(c.padded_vocab_size), "logits");
  take(b.losses, N, "scratch");
  take(b.loss_sum, 1, "scratch");
  take(b.projected, N * C, "scratch");
  take(b.dresidual, N * C, "activation gradients");
  take(b.dnarrow, N * C, "activation gradients");
  take(b.dwide, 4 * N * C, "activation gradients");
  take(b.reduce_scratch,
       std::max(layernorm_backward_scratch_floats(static_cast<int>(N), c.n_embd), global_norm_scratch_floats()), "scratch");
  take(b.norm_squared, 1, "scratch");
  return offset;
}

}  // namespace

// The activation buffers and the kernels' own state (handles, plans, scratch).
struct Gpt2Cuda::Activations : ActivationBuffers {
  int B = 0, T = 0;
  char* arena = nullptr;

  Matmul matmul;
  std::unique_ptr<Attention> attention;
  EncoderBackward encoder_backward;
  KernelProfile profile;

  ~Activations() { cudaFree(arena); }

  void ensure(const ModelConfig& c, Recompute recompute, int B_, int T_) {
    if (B_ == B && T_ == T) return;
    const size_t attention_bytes = attention->saved_bytes(B_, T_, c.n_embd, c.n_head);
    ActivationBuffers& buffers = *this;
    const size_t bytes = plan_activations(buffers, c, recompute, B_, T_, attention_bytes, [](auto*&, size_t, size_t, const char*) {});
    EMIX_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    cudaFree(arena);
    arena = nullptr;
    B = T = 0;
    arena = device_alloc<char>(bytes);
    plan_activations(buffers, c, recompute, B_, T_, attention_bytes, [this](auto*& pointer, size_t offset, size_t, const char*) {
      pointer = reinterpret_cast<std::remove_reference_t<decltype(pointer)>>(arena + offset);
    });
    B = B_;
    T = T_;
  }
};

Gpt2Cuda::Gpt2Cuda(const ModelConfig& config, Gpt2CudaOptions options)
    : config_(config),
      layout_(config),
      options_(options),
      gradient_groups_(gradient_groups_in_backward_order(layout_, config.n_layer)) {
  config_.validate();
  if (config_.n_embd % 8 != 0) fail("model.n_embd = {}: the CUDA backend needs a multiple of 8", config_.n_embd);
  if (config_.padded_vocab_size % 8 != 0) {
    fail("model.padded_vocab_size = {}: the CUDA backend needs a multiple of 8 (128 is best)", config_.padded_vocab_size);
  }
  EMIX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  const size_t P = layout_.num_parameters();
  master_ = device_alloc<float>(P);
  params_ = device_alloc<bf16>(P);
  grads_ = device_alloc<bf16>(P);
  padded_size_ = P;
  acts_ = std::make_unique<Activations>();
  acts_->attention = options_.attention == AttentionKind::cudnn ? make_cudnn_attention(options_.deterministic)
                                                                : make_reference_attention();
}

Gpt2Cuda::~Gpt2Cuda() {
  acts_.reset();
  cudaFree(master_);
  cudaFree(params_);
  cudaFree(grads_);
  cudaStreamDestroy(stream_);
}

namespace {

// `buffer` (of `count` elements) reallocated to `padded` elements, zeros after the first `count`.
template <typename T>
void pad_device_buffer(T*& buffer, size_t count, size_t padded, cudaStream_t stream) {
  T* larger = device_alloc<T>(padded);
  EMIX_CUDA_CHECK(cudaMemcpyAsync(larger, buffer, count * sizeof(T), cudaMemcpyDeviceToDevice, stream));
  EMIX_CUDA_CHECK(cudaMemsetAsync(larger + count, 0, (padded - count) * sizeof(T), stream));
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  EMIX_CUDA_CHECK(cudaFree(buffer));
  buffer = larger;
}

}  // namespace

void Gpt2Cuda::pad_buffers(size_t padded) {
  const size_t P = layout_.num_parameters();
  if (padded < P) fail("pad_buffers: {} elements for {} parameters", padded, P);
  if (padded == padded_size_) return;  // briefly twice each buffer's memory, once at startup
  pad_device_buffer(master_, P, padded, stream_);
  pad_device_buffer(params_, P, padded, stream_);
  pad_device_buffer(grads_, P, padded, stream_);
  padded_size_ = padded;
}

void Gpt2Cuda::init_weights(uint64_t seed) {
  std::vector<float> host(layout_.num_parameters());
  init_gpt2_weights(host, config_, layout_, seed);
  set_weights(host);
}

void Gpt2Cuda::set_weights(std::span<const float> host) {
  if (host.size() != layout_.num_parameters()) {
    fail("weights hold {} values, the model has {} parameters", host.size(), layout_.num_parameters());
  }
  EMIX_CUDA_CHECK(cudaMemcpyAsync(master_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream_));
  refresh_bf16_weights();
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Gpt2Cuda::get_weights(std::span<float> host) const {
  if (host.size() != layout_.num_parameters()) {
    fail("weights hold {} values, the model has {} parameters", host.size(), layout_.num_parameters());
  }
  EMIX_CUDA_CHECK(cudaMemcpyAsync(host.data(), master_, host.size_bytes(), cudaMemcpyDeviceToHost, stream_));
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Gpt2Cuda::refresh_bf16_weights() { convert_to_bf16(params_, master_, layout_.num_parameters(), stream_); }

void Gpt2Cuda::round_weights_stochastically(uint64_t seed, uint64_t step) {
  convert_to_bf16_stochastic(params_, master_, layout_.num_parameters(), seed, step, 0, stream_);
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Gpt2Cuda::zero_grad() {
  EMIX_CUDA_CHECK(cudaMemsetAsync(grads_, 0, layout_.num_parameters() * sizeof(bf16), stream_));
}

float Gpt2Cuda::forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T) {
  return run_forward(inputs, targets, B, T, 0.0f, /*write_grad=*/false);
}

void Gpt2Cuda::report_gradients_of_next_backward(GradientsReady ready) {
  gradients_ready_ = std::move(ready);
}

float Gpt2Cuda::forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                                 float grad_scale) {
  // Taken for this call only, even if the forward throws: a later call must
  // not report (its micro-batch would not be the step's last).
  const GradientsReady ready = std::exchange(gradients_ready_, nullptr);
  float loss = run_forward(inputs, targets, B, T, grad_scale, /*write_grad=*/true);
  run_backward(inputs, B, T, ready);
  return loss;
}

float Gpt2Cuda::run_forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                            float grad_scale, bool write_grad) {
  check_token_batch(inputs, "inputs", B, T, config_);
  check_token_batch(targets, "targets", B, T, config_);
  Activations& a = *acts_;
  a.ensure(config_, options_.recompute, B, T);
  const int C = config_.n_embd, NH = config_.n_head, V = config_.vocab_size, Vp = config_.padded_vocab_size;
  const int N = B * T;
  cudaStream_t s = stream_;
  EMIX_CUDA_CHECK(cudaMemcpyAsync(a.inputs, inputs.data(), inputs.size_bytes(), cudaMemcpyHostToDevice, s));
  EMIX_CUDA_CHECK(cudaMemcpyAsync(a.targets, targets.data(), targets.size_bytes(), cudaMemcpyHostToDevice, s));
  const auto w = tensors_in(static_cast<const bf16*>(params_), layout_, config_.n_layer);

  a.profile.begin(s);
  encoder_forward(a.encoded, a.inputs, w.wte, w.wpe, B, T, C, s);
  a.profile.mark("embedding", s);
  layernorm_forward(a.blocks[0].ln1, a.blocks[0].ln1_mean, a.blocks[0].ln1_rstd, a.encoded, w.blocks[0].ln1w,
                    w.blocks[0].ln1b, N, C, s);
  a.profile.mark("LayerNorm", s);
  for (int l = 0; l < config_.n_layer; ++l) {
    const BlockActivations& x = a.blocks[static_cast<size_t>(l)];
    const BlockTensors<const bf16>& p = w.blocks[static_cast<size_t>(l)];
    const bf16* residual = l == 0 ? a.encoded : a.blocks[static_cast<size_t>(l) - 1].residual3;
    a.matmul.forward(x.qkv, x.ln1, p.qkvw, p.qkvb, N, C, 3 * C, nullptr, s);
    a.profile.mark("matmul", s);
    a.attention->forward(x.atty, x.attention_saved, x.qkv, B, T, C, NH, s);
    a.profile.mark("attention", s);
    a.matmul.forward(a.projected, x.atty, p.attprojw, p.attprojb, N, C, C, nullptr, s);
    a.profile.mark("matmul", s);
    residual_layernorm_forward(x.residual2, x.ln2, x.ln2_mean, x.ln2_rstd, residual, a.projected, p.ln2w, p.ln2b, N, C, s);
    a.profile.mark("LayerNorm", s);
    a.matmul.forward(x.fch_gelu, x.ln2, p.fcw, p.fcb, N, C, 4 * C, x.fch, s);
    a.profile.mark("matmul (with GELU)", s);
    a.matmul.forward(a.projected, x.fch_gelu, p.fcprojw, p.fcprojb, N, 4 * C, C, nullptr, s);
    a.profile.mark("matmul", s);
    // The next LayerNorm (the next block's ln1, or lnf) takes this block's output.
    const bool last = l + 1 == config_.n_layer;
    const BlockActivations* next = last ? nullptr : &a.blocks[static_cast<size_t>(l) + 1];
    residual_layernorm_forward(x.residual3, last ? a.lnf : next->ln1, last ? a.lnf_mean : next->ln1_mean,
                               last ? a.lnf_rstd : next->ln1_rstd, x.residual2, a.projected,
                               last ? w.lnfw : w.blocks[static_cast<size_t>(l) + 1].ln1w,
                               last ? w.lnfb : w.blocks[static_cast<size_t>(l) + 1].ln1b, N, C, s);
    a.profile.mark("LayerNorm", s);
  }
  a.matmul.forward(a.logits, a.lnf, w.wte, nullptr, N, C, Vp, nullptr, s);
  a.profile.mark("output head matmul", s);
  softmax_cross_entropy(a.logits, a.losses, a.targets, N, V, Vp, grad_scale / static_cast<float>(N), write_grad, s);
  sum_losses(a.loss_sum, a.losses, N, s);
  a.profile.mark("softmax cross-entropy", s);
  double loss_sum = 0.0;
  EMIX_CUDA_CHECK(cudaMemcpyAsync(&loss_sum, a.loss_sum, sizeof loss_sum, cudaMemcpyDeviceToHost, s));
  EMIX_CUDA_CHECK(cudaStreamSynchronize(s));
  return static_cast<float>(loss_sum / N);
}

void Gpt2Cuda::run_backward(std::span<const int32_t> inputs, int B, int T, const GradientsReady& ready) {
  Activations& a = *acts_;
  const int C = config_.n_embd, NH = config_.n_head, Vp = config_.padded_vocab_size;
  const int N = B * T;
  cudaStream_t s = stream_;
  const auto w = tensors_in(static_cast<const bf16*>(params_), layout_, config_.n_layer);
  const auto g = tensors_in(grads_, layout_, config_.n_layer);
  const BlockActivations& last = a.blocks.back();
  // The groups in order, each once its gradients' kernels are queued.
  size_t next_group = 0;
  auto report_next_group = [&] {
    if (ready) ready(gradient_groups_[next_group]);
    ++next_group;
  };

  // The output head: dlnf = dlogits·wte, dwte += dlogitsᵀ·lnf.
  a.profile.begin(s);
  a.matmul.backward(a.dnarrow, g.wte, nullptr, a.logits, a.lnf, w.wte, N, C, Vp, nullptr, s);
  a.profile.mark("output head matmul", s);
  EMIX_CUDA_CHECK(cudaMemsetAsync(a.dresidual, 0, static_cast<size_t>(N) * C * sizeof(bf16), s));
  a.profile.mark("LayerNorm", s);
  layernorm_backward(a.dresidual, g.lnfw, g.lnfb, a.reduce_scratch, a.dnarrow, last.residual3, w.lnfw, a.lnf_mean,
                     a.lnf_rstd, N, C, s);
  a.profile.mark("LayerNorm", s);
  report_next_group();  // lnfw, lnfb
  for (int l = config_.n_layer - 1; l >= 0; --l) {
    const BlockActivations& x = a.blocks[static_cast<size_t>(l)];
    const BlockTensors<const bf16>& p = w.blocks[static_cast<size_t>(l)];
    const BlockTensors<bf16>& d = g.blocks[static_cast<size_t>(l)];
    const bf16* residual = l == 0 ? a.encoded : a.blocks[static_cast<size_t>(l) - 1].residual3;
    // a.dresidual holds d(loss)/d(residual3); the MLP branch first.
    if (options_.recompute != Recompute::none) {
      gelu_forward(x.fch_gelu, x.fch, static_cast<size_t>(N) * 4 * C, s);
      a.profile.mark("recomputation", s);
    }
    if (options_.recompute == Recompute::gelu_layernorm) {
      layernorm_forward(x.ln2, a.recomputed_stats, a.recomputed_stats + N, x.residual2, p.ln2w, p.ln2b, N, C, s);
      a.profile.mark("recomputation", s);
    }
    a.matmul.backward(a.dwide, d.fcprojw, d.fcprojb, a.dresidual, x.fch_gelu, p.fcprojw, N, 4 * C, C, x.fch, s);
    a.profile.mark("matmul (with GELU)", s);
    a.matmul.backward(a.dnarrow, d.fcw, d.fcb, a.dwide, x.ln2, p.fcw, N, C, 4 * C, nullptr, s);
    a.profile.mark("matmul", s);
    layernorm_backward(a.dresidual, d.ln2w, d.ln2b, a.reduce_scratch, a.dnarrow, x.residual2, p.ln2w, x.ln2_mean,
                       x.ln2_rstd, N, C, s);
    a.profile.mark("LayerNorm", s);
    // Now d(loss)/d(residual2): the attention branch.
    a.matmul.backward(a.dnarrow, d.attprojw, d.attprojb, a.dresidual, x.atty, p.attprojw, N, C, C, nullptr, s);
    a.profile.mark("matmul", s);
    a.attention->backward(a.dwide, a.dnarrow, x.qkv, x.atty, x.attention_saved, B, T, C, NH, s);
    a.profile.mark("attention", s);
    if (options_.recompute == Recompute::gelu_layernorm) {
      layernorm_forward(x.ln1, a.recomputed_stats, a.recomputed_stats + N, residual, p.ln1w, p.ln1b, N, C, s);
      a.profile.mark("recomputation", s);
    }
    a.matmul.backward(a.dnarrow, d.qkvw, d.qkvb, a.dwide, x.ln1, p.qkvw, N, C, 3 * C, nullptr, s);
    a.profile.mark("matmul", s);
    layernorm_backward(a.dresidual, d.ln1w, d.ln1b, a.reduce_scratch, a.dnarrow, residual, p.ln1w, x.ln1_mean,
                       x.ln1_rstd, N, C, s);
    a.profile.mark("LayerNorm", s);
    report_next_group();  // block l
  }
  a.encoder_backward.run(g.wte, g.wpe, a.dresidual, inputs.data(), B, T, C, s);
  a.profile.mark("embedding", s);
  report_next_group();  // wte, wpe
  EMIX_CUDA_CHECK(cudaStreamSynchronize(s));
}

double Gpt2Cuda::grad_norm() { return std::sqrt(grad_norm_squared(0, layout_.num_parameters())); }

double Gpt2Cuda::grad_norm_squared(size_t begin, size_t count) {
  Activations& a = *acts_;
  if (a.norm_squared == nullptr) fail("grad_norm before any forward_backward");
  if (begin + count > layout_.num_parameters()) fail("grad_norm_squared: [{}, {}) is past the parameters", begin, begin + count);
  if (count == 0) return 0.0;
  global_norm_squared(a.norm_squared, grads_ + begin, count, a.reduce_scratch, /*accumulate=*/false, stream_);
  float squared = 0.0f;
  EMIX_CUDA_CHECK(cudaMemcpyAsync(&squared, a.norm_squared, sizeof squared, cudaMemcpyDeviceToHost, stream_));
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return static_cast<double>(squared);
}

void Gpt2Cuda::enable_kernel_profile(bool on) { acts_->profile.enable(on); }

std::vector<std::pair<std::string, double>> Gpt2Cuda::kernel_times() { return acts_->profile.collect(); }

std::vector<MemoryItem> Gpt2Cuda::memory_table(int B, int T) const {
  const size_t P = layout_.num_parameters();
  std::vector<MemoryItem> table = {{"master weights (fp32)", P * sizeof(float)},
                                   {"weights (bf16)", P * sizeof(bf16)},
                                   {"gradients (bf16)", P * sizeof(bf16)},
                                   {"attention scratch", acts_->attention->scratch_bytes(B, T, config_.n_embd,
                                                                                          config_.n_head)}};
  ActivationBuffers planner;
  const size_t attention_bytes = acts_->attention->saved_bytes(B, T, config_.n_embd, config_.n_head);
  plan_activations(planner, config_, options_.recompute, B, T, attention_bytes, [&](auto*&, size_t, size_t bytes, const char* name) {
    auto it = std::find_if(table.begin(), table.end(), [&](const MemoryItem& m) { return m.name == name; });
    if (it == table.end()) {
      table.push_back({name, bytes});
    } else {
      it->bytes += bytes;
    }
  });
  return table;
}

}  // namespace emix::cuda
