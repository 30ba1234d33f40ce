#pragma once
// The communication layer of multi-process (data-parallel) training.
//
// One process per rank; ranks exchange float buffers in host memory, and
// GPU buffers where the backend can (device_collectives()). Three backends
// behind one interface:
//
//   * LocalCommunicator (local_communicator.cpp): world size 1, no MPI.
//     Every collective is a copy (or nothing).
//   * MPI (mpi_communicator.cpp, a Transport: transport.hpp): Open MPI,
//     loaded at run time with dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL)
//     and the dozen MPI functions it needs resolved with dlsym. Open MPI's
//     predefined handles (MPI_COMM_WORLD, MPI_BYTE) are addresses of global
//     objects (ompi_mpi_comm_world, ompi_mpi_byte; see OMPI_PREDEFINED_GLOBAL
//     in mpi.h), so they are resolved with dlsym as well. Why dlopen and not
//     a link against libmpi: the emix binary must start on machines without
//     MPI (the GPU image has no Debian packages), so it must not need
//     libmpi.so at load time; `ldd build/emix` lists no libmpi. No MPI
//     header is needed to build either (the few ABI facts used are spelled
//     out in mpi_abi.hpp and checked against mpi.h by
//     tests/test_distributed.cpp when the headers are installed).
//     RTLD_GLOBAL is required: Open MPI's own plugins (mca_*.so) resolve
//     symbols of libmpi / libopen-pal from the global namespace.
//   * NCCL (distributed/cuda/nccl_transport.cpp, CUDA builds only, also a
//     Transport): runs whose model is on GPUs. libnccl.so.2 is loaded with
//     dlopen for the same reason as libmpi. Its unique id travels over MPI
//     under an MPI launcher, else over the rendezvous (rendezvous.hpp), so
//     GPU runs need no MPI at all.
//
// make_communicator() picks the backend from read_process_identity()
// (process_identity.hpp: the launcher's variables, innermost launcher
// first) and where the model lives. A world size above 1 selects NCCL for a
// GPU run; for a CPU run, MPI under an MPI launcher (mpirun, srun; failing
// to load libmpi.so.40 is an error that says so). Several CPU processes from
// a torchrun-style launcher (RANK/WORLD_SIZE) have no MPI runtime behind
// them: an error, never a silent single-process run. Otherwise the local
// backend. EMIX_COMM=local|mpi|nccl forces a backend (nccl also with one
// rank: it runs the multi-GPU code paths on one GPU). local_rank() comes from
// the identity; rank() and world_size() of MPI and NCCL from themselves.
//
// Determinism. MPI does not promise that MPI_Allreduce / MPI_Reduce_scatter
// with MPI_SUM give bit-identical results from run to run: the standard only
// "advises" implementations to be reproducible, and Open MPI chooses its
// algorithm (hence the order of floating-point additions) from message size,
// process count and placement. So no MPI reduction operation is used at all.
// Sums are computed by us:
//   reduce_scatter_sum: MPI_Alltoall moves chunk j of every rank to rank j;
//     rank j adds the N received chunks in rank order 0, 1, ..., N-1
//     (((x0 + x1) + x2) + ...), element by element.
//   all_gather: MPI_Allgather (pure data movement).
//   all_reduce_sum = reduce_scatter_sum of the zero-padded buffer, then
//     all_gather: every element is summed once, by one rank, in rank order.
//   double scalars: MPI_Allgather of every rank's values, summed in rank order
//     on every rank.
// Consequences: with the same world size the results are bit-identical from
// run to run (so a run and its resume are bit-exact), identical on every
// rank, and independent of the buffer's length, chunking and padding. With a
// different world size the order of additions (and so the last bits)
// differs. Data movement (alltoall, allgather, bcast) is exact whatever
// algorithm MPI picks.
//
// Failures. Collectives are called by all ranks in the same order. MPI
// errors use Open MPI's default handler (MPI_ERRORS_ARE_FATAL: the whole job
// is aborted, no rank waits forever). A rank that fails on its own (bad
// file, ...) should either make every rank agree (any() / check_all())
// or call abort(), which ends all ranks; a rank that simply exits non-zero
// also makes mpirun end the job.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace emix {

class DeviceCollectives;
struct ProcessIdentity;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Rank among the processes of this node (selects the GPU).
  virtual int local_rank() const = 0;
  // "local", "mpi" or "nccl".
  virtual std::string backend() const = 0;
  // Collectives on GPU buffers (NCCL); null for the other backends.
  virtual DeviceCollectives* device_collectives() { return nullptr; }

  // In place: data becomes the element-wise sum over ranks. Every rank
  // passes the same length.
  virtual void all_reduce_sum(std::span<float> data) = 0;
  // all_reduce_sum, then divided by world_size (a multiplication by
  // 1/world_size when that is exact, a division otherwise; deterministic).
  void all_reduce_mean(std::span<float> data);
  // input has world_size() * output.size() elements (chunk = output.size());
  // output = sum over ranks of input[rank() * chunk, (rank() + 1) * chunk).
  // input and output may overlap only if output is exactly chunk rank() of
  // input (ZeRO's gradients reduced in place).
  virtual void reduce_scatter_sum(std::span<const float> input, std::span<float> output) = 0;
  // output has world_size() * input.size() elements; chunk r of output is
  // rank r's input. input and output may overlap only if input is exactly
  // chunk rank() of output.
  virtual void all_gather(std::span<const float> input, std::span<float> output) = 0;
  // The gradients' sum of GPU ranks (DeviceCollectives, device_collectives.hpp)
  // on host bf16 bit patterns, for a communicator that moves host memory:
  // as reduce_scatter_sum, but the sums are added in fp32 in rank order (as
  // reduce_scatter_sum adds floats) and rounded once to the nearest bf16,
  // ties to even: the bits sum_bf16_chunks gives on a GPU, except NaNs'
  // payloads (a NaN sum makes the norm non-finite and the step is skipped).
  // input and output may not overlap.
  void reduce_scatter_sum_bf16(std::span<const uint16_t> input, std::span<uint16_t> output);
  // data of rank `root` is copied to every rank.
  virtual void broadcast(std::span<float> data, int root) = 0;
  virtual void broadcast_bytes(std::span<std::byte> data, int root) = 0;
  virtual void barrier() = 0;

  // Scalars (loss sums, squared gradient norms): element-wise sum over
  // ranks in double, in rank order, identical on every rank.
  virtual void all_reduce_sum(std::span<double> data) = 0;
  double all_reduce_sum(double value);
  // Small double tables (losses per micro-batch, norm block sums, file
  // sizes): output has world_size() * input.size() elements and chunk r of
  // output is rank r's input, the same on every rank. Built on
  // all_reduce_sum over a zero-filled table, in which each element's sum
  // is one value plus zeros: exact (only a -0.0 comes back as +0.0).
  void all_gather(std::span<const double> input, std::span<double> output);
  // true on every rank if `flag` is true on any rank (e.g. a stop request
  // that reached one rank only).
  virtual bool any(bool flag) = 0;
  // Collective: if `ok` is false on any rank, every rank throws emix::CollectiveError
  // naming the failed ranks and rank-local `what` of this rank (just `what`
  // when there is one process).
  void check_all(bool ok, const std::string& what);

  // Ends every rank of the job with `code` (MPI_Abort); the local backend
  // calls std::_Exit.
  [[noreturn]] virtual void abort(int code) = 0;

  // Padded chunk length for splitting n elements evenly over world ranks:
  // ceil(n / world). A buffer of n elements is reduce-scattered as
  // world * chunk elements, the tail zero-padded.
  static size_t chunk_size(size_t n, int world) { return (n + static_cast<size_t>(world) - 1) / static_cast<size_t>(world); }
};

std::unique_ptr<Communicator> make_local_communicator();
// Over make_mpi_transport() (transport.hpp).
std::unique_ptr<Communicator> make_mpi_communicator();
// See the header comment; gpu_run: the model lives on GPUs.
std::unique_ptr<Communicator> make_communicator(bool gpu_run = false);

// The NCCL backend, which CUDA builds register (selecting this rank's GPU
// comes with it).
using NcclCommunicatorFactory = std::unique_ptr<Communicator> (*)(const ProcessIdentity& identity);
bool register_nccl_communicator(NcclCommunicatorFactory factory);

}  // namespace emix
