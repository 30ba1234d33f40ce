#pragma once
// What a communicator backend must provide: a handful of blocking byte
// movements between the ranks (no arithmetic). TransportCommunicator
// (transport_communicator.cpp) builds the whole Communicator interface on
// them, sums included, so every backend adds in the same order and gives the
// same bits (see "Determinism" in communicator.hpp). The backends:
//   * MPI (mpi_communicator.cpp): host memory, MPI_Alltoall / _Allgather / _Bcast;
//   * NCCL (distributed/cuda/nccl_transport.cpp, CUDA builds): host memory
//     staged through a device buffer, grouped ncclSend/ncclRecv,
//     ncclAllGather, ncclBroadcast; it also moves device buffers
//     (device_collectives.hpp).
#include <cstddef>
#include <memory>
#include <string>

namespace emix {

class Communicator;
class DeviceCollectives;

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;
  // "mpi", "nccl": the communicator's backend() name.
  virtual std::string name() const = 0;

  // Host memory, blocking, collective (every rank calls with the same
  // `bytes`). Buffers do not overlap.
  // Block r of send (`bytes` each, world_size() blocks) goes to rank r;
  // block r of recv comes from rank r.
  virtual void all_to_all(const std::byte* send, std::byte* recv, size_t bytes) = 0;
  // Block r of recv (world_size() blocks of `bytes`) is rank r's send.
  virtual void all_gather(const std::byte* send, std::byte* recv, size_t bytes) = 0;
  virtual void broadcast(std::byte* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the job with `code`.
  [[noreturn]] virtual void abort(int code) = 0;

  // Collectives on device buffers, where this transport has them.
  virtual DeviceCollectives* device_collectives() { return nullptr; }
};

// The Communicator over `transport`, which it owns. Messages are split into
// segments of at most 64 MiB per call (EMIX_COMM_SEGMENT_BYTES changes it,
// for tests): it bounds the scratch memory (about 3 x this) and keeps MPI's
// int counts far from overflowing. Sums do not depend on it.
std::unique_ptr<Communicator> make_transport_communicator(std::unique_ptr<Transport> transport);

// Loads libmpi.so.40 (or $EMIX_LIBMPI) and initializes MPI
// (MPI_THREAD_FUNNELED) unless it is already; finalizes it on destruction
// if it initialized it.
std::unique_ptr<Transport> make_mpi_transport();

}  // namespace emix
