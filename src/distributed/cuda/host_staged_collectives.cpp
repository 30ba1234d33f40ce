// DeviceCollectives for GPU ranks whose communicator moves host memory
// (MPI): the device buffers go through host memory and the communicator, a
// bounded part at a time (device_collectives.hpp says when this is used).
// Every byte crosses the host link twice and nothing overlaps the backward,
// so NCCL is far faster wherever it can run.
//
// The gradients' sum has NCCL's bits (NaN payloads aside):
// Communicator::reduce_scatter_sum_bf16 adds in fp32 in rank order and
// rounds with the function sum_bf16_chunks uses (kernels/bf16_rounding.hpp),
// over the same exchange plan (gradient_exchange.hpp).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

#include "distributed/communicator.hpp"
#include "distributed/device_collectives.hpp"
#include "distributed/gradient_exchange.hpp"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/growing_buffer.cuh"

namespace emix {
namespace {

class HostStagedCollectives final : public DeviceCollectives {
 public:
  explicit HostStagedCollectives(Communicator& comm)
      : comm_(comm), rank_(static_cast<size_t>(comm.rank())), world_(static_cast<size_t>(comm.world_size())) {}

  // Synchronous: the gradients are read once the caller's stream has
  // finished them, and the sums are in place on return.
  void reduce_bf16(void* padded, const ShardPlan& plan, std::span<const ParamRange> ranges, void* stream) override {
    EMIX_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    auto* grads = static_cast<uint16_t*>(padded);
    // Plain copies: the caller's stream is idle and the host queues nothing
    // on it until this returns.
    const PieceRead read = [grads](const ExchangePiece& piece, uint16_t* to) {
      EMIX_CUDA_CHECK(cudaMemcpy(to, grads + piece.begin, piece.length * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    };
    const PieceWrite write = [grads](const ExchangePiece& piece, const uint16_t* from) {
      EMIX_CUDA_CHECK(cudaMemcpy(grads + piece.begin, from, piece.length * sizeof(uint16_t), cudaMemcpyHostToDevice));
    };
    for (const ExchangeBatch& batch : plan_gradient_exchange(ranges, plan, gradient_exchange_segment(plan.world))) {
      exchange_batch_through_host(comm_, batch, read, write, scratch_);
    }
    // A copy from pageable memory may return before its data has reached
    // the device, and the model's stream (non-blocking) is not ordered
    // after it: wait for every copy before anything reads the sums.
    EMIX_CUDA_CHECK(cudaDeviceSynchronize());
  }

  void finish_reductions() override {}

  // The bytes travel as floats through Communicator::all_gather, which only
  // copies them (the chunks are whole floats: fp32 master weights, or bf16
  // chunks of a multiple of 2048 elements).
  void all_gather(void* padded, size_t chunk_bytes, void* stream) override {
    if (chunk_bytes % sizeof(float) != 0) {
      throw std::logic_error("host-staged all_gather: chunks of whole floats only");
    }
    auto* s = static_cast<cudaStream_t>(stream);
    auto* base = static_cast<std::byte*>(padded);
    const size_t chunk = chunk_bytes / sizeof(float);
    const size_t segment = std::max<size_t>(1, kGradientExchangeBytes / sizeof(float) / world_);
    for (size_t begin = 0; begin < chunk; begin += segment) {
      const size_t length = std::min(segment, chunk - begin);
      const size_t bytes = length * sizeof(float);
      auto* gathered = reinterpret_cast<float*>(pinned_.get((world_ + 1) * bytes, s));
      float* mine = gathered + world_ * length;
      EMIX_CUDA_CHECK(cudaMemcpyAsync(mine, base + rank_ * chunk_bytes + begin * sizeof(float), bytes,
                                      cudaMemcpyDeviceToHost, s));
      EMIX_CUDA_CHECK(cudaStreamSynchronize(s));
      comm_.all_gather(std::span<const float>(mine, length), std::span<float>(gathered, world_ * length));
      // Block r back into chunk r.
      EMIX_CUDA_CHECK(cudaMemcpy2DAsync(base + begin * sizeof(float), chunk_bytes, gathered, bytes, bytes, world_,
                                        cudaMemcpyHostToDevice, s));
    }
    EMIX_CUDA_CHECK(cudaStreamSynchronize(s));
  }

 private:
  Communicator& comm_;
  size_t rank_;
  size_t world_;
  std::vector<uint16_t> scratch_;  // a gradient batch's blocks and sums
  // An all-gather's segment of every rank, and this rank's. Each use is
  // over before the next begins (the host waits for the stream before it
  // writes), and growing it waits for the stream too.
  cuda::GrowingBuffer<std::byte, cuda::Memory::pinned_host> pinned_;
};

const bool host_staged_registered =
    register_host_staged_collectives([](Communicator& comm) -> std::unique_ptr<DeviceCollectives> {
      return std::make_unique<HostStagedCollectives>(comm);
    });

}  // namespace
}  // namespace emix
