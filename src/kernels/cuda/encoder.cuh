#pragma once
// GPT-2's input embedding on the GPU: out[b,t,:] = wte[inputs[b,t],:] + wpe[t,:].
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

// inputs are B·T token ids on the device.
void encoder_forward(bf16* out, const int32_t* inputs, const bf16* wte, const bf16* wpe, int B, int T, int C,
                     cudaStream_t stream);

// dwte[inputs[b,t],:] += dout[b,t,:] and dwpe[t,:] += dout[b,t,:], summed in
// a fixed order (no atomics): the same bits on every run. Positions sharing a
// token are grouped on the host from `host_inputs` (the same B·T ids as
// `inputs`), so the call copies a small index table to the device; it keeps
// its scratch space between calls.
class EncoderBackward {
 public:
  EncoderBackward() = default;
  ~EncoderBackward();
  EncoderBackward(const EncoderBackward&) = delete;
  EncoderBackward& operator=(const EncoderBackward&) = delete;

  void run(bf16* dwte, bf16* dwpe, const bf16* dout, const int32_t* host_inputs, int B, int T, int C,
           cudaStream_t stream);

 private:
  struct Scratch;
  Scratch* scratch_ = nullptr;
};

}  // namespace emix::cuda
