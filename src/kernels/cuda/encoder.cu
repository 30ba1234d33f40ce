// GPT-2's input embedding on the GPU, bf16.
// Forward: out[b,t,:] = wte[inputs[b,t],:] + wpe[t,:]; one thread per
// (position, 8-channel chunk), each a 16-byte load of both rows and a
// 16-byte store, added in fp32.
// Backward, deterministic (no atomics): the host groups the B·T positions by
// token (a counting sort of host_inputs) into an index table; one block per
// distinct token sums its positions' dout rows in position order in fp32 and
// adds the sum to that token's dwte row, and one block per t sums
// dout[b,t,:] over b in order into dwpe[t,:]. Threads of a block split the
// channels, 8 per thread.
#include <algorithm>
#include <vector>

#include "kernels/cuda/encoder.cuh"
#include "kernels/cuda/growing_buffer.cuh"

namespace emix::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kBackwardThreads = 128;
using Pack = Packed<bf16>;

void check_shape(int C, const char* who) {
  if (C % Pack::kSize != 0) fail_cuda(cudaErrorInvalidValue, who, __FILE__, __LINE__);
}

__global__ void encoder_forward_kernel(bf16* out, const int32_t* inputs, const bf16* wte, const bf16* wpe, int N, int T,
                                       int C) {
  const int packs_per_row = C / Pack::kSize;
  const size_t index = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= static_cast<size_t>(N) * packs_per_row) return;
  const int n = static_cast<int>(index / packs_per_row);
  const int c = static_cast<int>(index % packs_per_row) * Pack::kSize;
  const int t = n % T;
  const Pack token = Pack::load_readonly(wte + static_cast<size_t>(inputs[n]) * C + c);
  const Pack position = Pack::load_readonly(wpe + static_cast<size_t>(t) * C + c);
  Pack sum;
  for (int k = 0; k < Pack::kSize; ++k)
    sum[k] = __float2bfloat16(__bfloat162float(token[k]) + __bfloat162float(position[k]));
  sum.store(out + static_cast<size_t>(n) * C + c);
}

// row[c..c+8) += sum, read-modify-write in bf16.
__device__ void add_to_row(bf16* row, const float (&sum)[Pack::kSize]) {
  Pack current = Pack::load(row);
  for (int k = 0; k < Pack::kSize; ++k) current[k] = __float2bfloat16(__bfloat162float(current[k]) + sum[k]);
  current.store(row);
}

// Block g: the positions positions[offsets[g] .. offsets[g+1]) all hold
// token tokens[g], in ascending order.
__global__ void encoder_backward_wte_kernel(bf16* dwte, const bf16* dout, const int32_t* tokens,
                                            const int32_t* offsets, const int32_t* positions, int C) {
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * Pack::kSize;
  if (c >= C) return;
  const int group = blockIdx.x;
  float sum[Pack::kSize] = {};
  for (int i = offsets[group]; i < offsets[group + 1]; ++i) {
    const Pack d = Pack::load_readonly(dout + static_cast<size_t>(positions[i]) * C + c);
    for (int k = 0; k < Pack::kSize; ++k) sum[k] += __bfloat162float(d[k]);
  }
  add_to_row(dwte + static_cast<size_t>(tokens[group]) * C + c, sum);
}

// Block t: dwpe[t,:] += Σ_b dout[b,t,:], b in order.
__global__ void encoder_backward_wpe_kernel(bf16* dwpe, const bf16* dout, int B, int T, int C) {
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * Pack::kSize;
  if (c >= C) return;
  const int t = blockIdx.x;
  float sum[Pack::kSize] = {};
  for (int b = 0; b < B; ++b) {
    const Pack d = Pack::load_readonly(dout + (static_cast<size_t>(b) * T + t) * C + c);
    for (int k = 0; k < Pack::kSize; ++k) sum[k] += __bfloat162float(d[k]);
  }
  add_to_row(dwpe + static_cast<size_t>(t) * C + c, sum);
}

}  // namespace

void encoder_forward(bf16* out, const int32_t* inputs, const bf16* wte, const bf16* wpe, int B, int T, int C,
                     cudaStream_t stream) {
  check_shape(C, "encoder_forward: C must be a multiple of 8");
  const size_t threads = static_cast<size_t>(B) * T * (C / Pack::kSize);
  if (threads == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div(threads, static_cast<size_t>(kThreads)));
  encoder_forward_kernel<<<blocks, kThreads, 0, stream>>>(out, inputs, wte, wpe, B * T, T, C);
  EMIX_CUDA_CHECK_LAUNCH();
}

// The index table, [positions (N) | tokens (G) | offsets (G+1)] int32s for
// N positions and G distinct tokens, is built in pinned host memory, copied
// to the device on the stream, and read by the kernels. `table_in_use` is
// recorded after the kernels: the next call waits on it before rewriting
// either copy of the table.
struct EncoderBackward::Scratch {
  GrowingBuffer<int32_t, Memory::pinned_host> host_table;
  GrowingBuffer<int32_t> device_table;
  std::vector<int32_t> cursor;  // per token id: its count, then where its next position goes
  cudaEvent_t table_in_use = nullptr;

  Scratch() { EMIX_CUDA_CHECK(cudaEventCreateWithFlags(&table_in_use, cudaEventDisableTiming)); }
  ~Scratch() {
    cudaEventSynchronize(table_in_use);
    cudaEventDestroy(table_in_use);
  }
};

EncoderBackward::~EncoderBackward() { delete scratch_; }

void EncoderBackward::run(bf16* dwte, bf16* dwpe, const bf16* dout, const int32_t* host_inputs, int B, int T, int C,
                          cudaStream_t stream) {
  check_shape(C, "EncoderBackward::run: C must be a multiple of 8");
  const int N = B * T;
  if (N == 0 || C == 0) return;
  if (scratch_ == nullptr) scratch_ = new Scratch();
  Scratch& s = *scratch_;

  int32_t max_token = 0;
  for (int n = 0; n < N; ++n) {
    if (host_inputs[n] < 0) fail_cuda(cudaErrorInvalidValue, "EncoderBackward::run: negative token id", __FILE__, __LINE__);
    max_token = std::max(max_token, host_inputs[n]);
  }
  s.cursor.assign(static_cast<size_t>(max_token) + 1, 0);
  for (int n = 0; n < N; ++n) ++s.cursor[host_inputs[n]];
  int groups = 0;
  for (int32_t count : s.cursor) groups += count > 0;

  // The previous call's kernels must be done with the table before it changes.
  EMIX_CUDA_CHECK(cudaEventSynchronize(s.table_in_use));
  const size_t table_ints = static_cast<size_t>(N) + 2 * static_cast<size_t>(groups) + 1;
  int32_t* host_table = s.host_table.get(table_ints, stream);
  int32_t* device_table = s.device_table.get(table_ints, stream);
  int32_t* positions = host_table;
  int32_t* tokens = positions + N;
  int32_t* offsets = tokens + groups;
  int group = 0;
  int32_t offset = 0;
  for (int32_t token = 0; token <= max_token; ++token) {
    const int32_t count = s.cursor[token];
    if (count == 0) continue;
    tokens[group] = token;
    offsets[group] = offset;
    s.cursor[token] = offset;
    offset += count;
    ++group;
  }
  offsets[groups] = N;
  for (int n = 0; n < N; ++n) positions[s.cursor[host_inputs[n]]++] = n;

  EMIX_CUDA_CHECK(
      cudaMemcpyAsync(device_table, host_table, table_ints * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  const int32_t* device_positions = device_table;
  const int32_t* device_tokens = device_positions + N;
  const int32_t* device_offsets = device_tokens + groups;

  const unsigned channel_blocks = static_cast<unsigned>(ceil_div(C / Pack::kSize, kBackwardThreads));
  encoder_backward_wte_kernel<<<dim3(groups, channel_blocks), kBackwardThreads, 0, stream>>>(
      dwte, dout, device_tokens, device_offsets, device_positions, C);
  EMIX_CUDA_CHECK_LAUNCH();
  encoder_backward_wpe_kernel<<<dim3(T, channel_blocks), kBackwardThreads, 0, stream>>>(dwpe, dout, B, T, C);
  EMIX_CUDA_CHECK_LAUNCH();
  EMIX_CUDA_CHECK(cudaEventRecord(s.table_in_use, stream));
}

}  // namespace emix::cuda
