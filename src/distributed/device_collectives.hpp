#pragma once
// Collectives on GPU buffers, for data parallelism of the CUDA backend
// (train/data_parallel.cpp). The NCCL transport provides them
// (distributed/cuda/nccl_transport.cpp); Communicator::device_collectives()
// is null for the others.
//
// Every pointer is device memory, every call is queued on `stream` (a
// cudaStream_t) and returns without waiting; the buffers are padded to
// world × chunk elements, and the collectives work in place.
//
// The gradients' sum follows the host communicator's rule (communicator.hpp,
// "Determinism"): chunks are exchanged (data movement only), then each rank
// adds the ranks' bf16 values of its chunk in fp32, in rank order, and
// rounds the sum to the nearest bf16 once. So the bits depend on the world
// size only, never on NCCL's choice of algorithm, and a run resumes bit-exactly.
#include <algorithm>
#include <cstddef>

namespace emix {

// The received chunks of the gradients take at most this much device memory:
// they travel in segments of gradient_exchange_segment() elements per rank.
inline constexpr size_t kGradientExchangeBytes = size_t{64} << 20;
inline size_t gradient_exchange_segment(int world) {
  return std::max<size_t>(1, kGradientExchangeBytes / 2 / static_cast<size_t>(world));
}
// The receive buffer for chunks of `chunk` bf16 values.
inline size_t gradient_exchange_bytes(size_t chunk, int world) {
  return 2 * static_cast<size_t>(world) * std::min(chunk, gradient_exchange_segment(world));
}

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;

  // `padded` holds world × chunk bf16 values; chunk rank() becomes the sum
  // over ranks of their chunk rank() (the other chunks are left as they were).
  virtual void reduce_scatter_sum_bf16(void* padded, size_t chunk, void* stream) = 0;
  // `padded` holds world × chunk_bytes; every rank's chunk rank() is copied
  // to the same chunk of every rank.
  virtual void all_gather(void* padded, size_t chunk_bytes, void* stream) = 0;
};

}  // namespace emix
