#pragma once
// Causal multi-head self-attention on the GPU. qkv is [B,T,3C] (q, k, v;
// head h owns channels h·hs … (h+1)·hs − 1 of each), out is [B,T,C]; the
// math is the CPU backend's (kernels/cpu/attention.hpp), softmax in fp32.
//
// Two implementations behind one interface: our own (QKᵀ and att·V as
// cuBLASLt strided-batched bf16 products, our causal softmax kernels, keeping
// the probabilities [B,NH,T,T]; bitwise deterministic), which is the
// fallback and the test reference; and cuDNN 9's fused flash attention
// (attention_cudnn.cpp), which keeps only the per-row log-sum-exp.
#include <cstddef>
#include <memory>

#include "kernels/cuda/common.cuh"

namespace emix::cuda {

class Attention {
 public:
  virtual ~Attention() = default;
  // Bytes of saved state (per call, for B,T,C,NH) the forward keeps for the
  // backward, and of scratch the object itself holds.
  virtual size_t saved_bytes(int B, int T, int C, int NH) const = 0;
  // Bytes of scratch the object allocates for calls of this shape and keeps
  // between them (for the startup memory table). cuDNN's is an estimate:
  // its plans' own workspace is known only once they are built on a device.
  virtual size_t scratch_bytes(int B, int T, int C, int NH) const = 0;
  // out [B,T,C] from qkv; `saved` (saved_bytes) is kept for the backward.
  virtual void forward(bf16* out, void* saved, const bf16* qkv, int B, int T, int C, int NH, cudaStream_t stream) = 0;
  // dqkv [B,T,3C] (overwritten) from dout, given the forward's inputs,
  // output and saved state.
  virtual void backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const void* saved, int B, int T,
                        int C, int NH, cudaStream_t stream) = 0;
};

// Our own attention (the reference).
std::unique_ptr<Attention> make_reference_attention();
// cuDNN's flash attention; throws emix::Error naming what cuDNN refused when
// it does not support the shape or the device. `deterministic` picks cuDNN's
// bitwise reproducible backward (dQ summed in a fixed order, through a
// workspace of about B·NH·T·T bf16 values) over its faster one, which adds
// dQ with atomics; the forward is the same either way.
std::unique_ptr<Attention> make_cudnn_attention(bool deterministic);

}  // namespace emix::cuda
