#pragma once
// Collectives on GPU buffers, for data parallelism of the CUDA backend
// (train/data_parallel.cpp). Two implementations, both in CUDA builds only:
//   * NCCL's (distributed/cuda/nccl_transport.cpp), which
//     Communicator::device_collectives() returns for the NCCL backend;
//   * host-staged ones (distributed/cuda/host_staged_collectives.cpp) over
//     any communicator that moves host memory (MPI): the device buffers go
//     through host memory, a bounded part at a time. Slow, but it runs
//     several ranks on one GPU, which NCCL refuses (the tests need it), and
//     on nodes without NCCL.
//
// Every pointer is device memory, and the work is ordered after what is
// queued on `stream` (a cudaStream_t) when the call is made. The buffers are
// padded to world × chunk elements, and the collectives work in place.
//
// The gradients' sum follows the host communicator's rule (communicator.hpp,
// "Determinism"): values are exchanged (data movement only), then each rank
// adds the ranks' bf16 values of its elements in fp32, in rank order, and
// rounds the sum to the nearest bf16 once. So the bits depend on the world
// size only, never on NCCL's choice of algorithm or on how the buffer was
// cut into ranges (gradient_exchange.hpp), and a run resumes bit-exactly.
#include <algorithm>
#include <cstddef>
#include <memory>
#include <span>

#include "distributed/shard_plan.hpp"
#include "model/gpt2_config.hpp"

namespace emix {

class Communicator;

// The batches of a gradient exchange take at most this much device memory
// for what is received (and as much again for what is sent): at most
// gradient_exchange_segment() elements per rank and batch.
inline constexpr size_t kGradientExchangeBytes = size_t{64} << 20;
inline size_t gradient_exchange_segment(int world) {
  return std::max<size_t>(1, kGradientExchangeBytes / 2 / static_cast<size_t>(world));
}
// The device memory of a gradient exchange over chunks of `chunk` bf16
// values: the blocks sent and received, and this rank's sums.
inline size_t gradient_exchange_bytes(size_t chunk, int world) {
  return 2 * (2 * static_cast<size_t>(world) + 1) * std::min(chunk, gradient_exchange_segment(world));
}

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;

  // `padded` holds plan.world × plan.chunk bf16 gradients. For each element
  // of `ranges` (disjoint, inside the padded buffer) that lies in chunk
  // rank(), its value becomes the sum over ranks of theirs; every other
  // element is left as it was. It may return before the sums are in place
  // (NCCL's are queued on the communicator's stream, so that the backward
  // goes on meanwhile): those ranges must not change until
  // finish_reductions().
  virtual void reduce_bf16(void* padded, const ShardPlan& plan, std::span<const ParamRange> ranges, void* stream) = 0;
  // Returns once every reduce_bf16 so far is complete (an error, never a
  // hang, if another rank stops).
  virtual void finish_reductions() = 0;
  // `padded` holds world × chunk_bytes; every rank's chunk rank() is copied
  // to the same chunk of every rank. Returns once done.
  virtual void all_gather(void* padded, size_t chunk_bytes, void* stream) = 0;
};

// The host-staged collectives over `comm` (which must outlive them); an
// emix::Error in builds without the CUDA backend, which registers them.
std::unique_ptr<DeviceCollectives> make_host_staged_collectives(Communicator& comm);
using HostStagedCollectivesFactory = std::unique_ptr<DeviceCollectives> (*)(Communicator& comm);
bool register_host_staged_collectives(HostStagedCollectivesFactory factory);

}  // namespace emix
