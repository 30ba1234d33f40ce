// The MPI backend: Open MPI's libmpi.so.40 loaded with dlopen (see
// communicator.hpp for why), as a Transport (transport.hpp): data movement
// only, the sums are TransportCommunicator's, in rank order, rather than MPI
// reduction operations.
#include <dlfcn.h>

#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <type_traits>

#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/process_identity.hpp"
#include "distributed/mpi_abi.hpp"
#include "distributed/transport.hpp"

namespace emix {
namespace {

using mpi_abi::CommHandle;
using mpi_abi::DatatypeHandle;

// The MPI functions used, with Open MPI's C signatures.
struct MpiApi {
  int (*Initialized)(int*);
  int (*Finalized)(int*);
  int (*Init_thread)(int*, char***, int, int*);
  int (*Finalize)();
  int (*Comm_rank)(CommHandle, int*);
  int (*Comm_size)(CommHandle, int*);
  int (*Alltoall)(const void*, int, DatatypeHandle, void*, int, DatatypeHandle, CommHandle);
  int (*Allgather)(const void*, int, DatatypeHandle, void*, int, DatatypeHandle, CommHandle);
  int (*Bcast)(void*, int, DatatypeHandle, int, CommHandle);
  int (*Barrier)(CommHandle);
  int (*Abort)(CommHandle, int);
  int (*Error_string)(int, char*, int*);
  CommHandle comm_world;
  DatatypeHandle byte;
};

// Loads the library once per process (it is never unloaded: MPI cannot be
// initialized twice anyway).
const MpiApi& load_mpi() {
  static const MpiApi api = [] {
    const char* override_path = std::getenv("EMIX_LIBMPI");
    const std::string path = override_path != nullptr && *override_path != '\0' ? override_path
                                                                                 : mpi_abi::kDefaultLibrary;
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr) {
      const char* why = dlerror();
      const ProcessIdentity identity = read_process_identity();
      const std::string launched = identity.world_size > 1
                                       ? fmt::format("launched as {} = {}/{}, ", identity.source, identity.rank, identity.world_size)
                                       : std::string();
      fail("{}the MPI backend needs Open MPI's {} but it cannot be loaded ({}); install Open MPI "
           "(Debian: openmpi-bin libopenmpi-dev) or set EMIX_LIBMPI to the library's path",
           launched, path, why != nullptr ? why : "unknown error");
    }
    MpiApi loaded{};
    auto resolve = [&](auto& slot, const char* name) {
      void* symbol = dlsym(library, name);
      if (symbol == nullptr) fail("{}: symbol {} not found: is this Open MPI's libmpi?", path, name);
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(symbol);
    };
    resolve(loaded.Initialized, "MPI_Initialized");
    resolve(loaded.Finalized, "MPI_Finalized");
    resolve(loaded.Init_thread, "MPI_Init_thread");
    resolve(loaded.Finalize, "MPI_Finalize");
    resolve(loaded.Comm_rank, "MPI_Comm_rank");
    resolve(loaded.Comm_size, "MPI_Comm_size");
    resolve(loaded.Alltoall, "MPI_Alltoall");
    resolve(loaded.Allgather, "MPI_Allgather");
    resolve(loaded.Bcast, "MPI_Bcast");
    resolve(loaded.Barrier, "MPI_Barrier");
    resolve(loaded.Abort, "MPI_Abort");
    resolve(loaded.Error_string, "MPI_Error_string");
    resolve(loaded.comm_world, mpi_abi::kCommWorldSymbol);
    resolve(loaded.byte, mpi_abi::kByteSymbol);
    return loaded;
  }();
  return api;
}

class MpiTransport final : public Transport {
 public:
  MpiTransport() : api_(load_mpi()) {
    int initialized = 0;
    check(api_.Initialized(&initialized), "MPI_Initialized");
    if (!initialized) {
      int provided = 0;
      check(api_.Init_thread(nullptr, nullptr, mpi_abi::kThreadFunneled, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    }
    check(api_.Comm_rank(api_.comm_world, &rank_), "MPI_Comm_rank");
    check(api_.Comm_size(api_.comm_world, &world_), "MPI_Comm_size");
    local_rank_ = read_process_identity().local_rank;
  }

  // Destroyed while an exception unwinds the stack: this rank leaves the
  // collectives, and MPI_Finalize would wait for ranks that are waiting for
  // it; so the whole job is aborted instead. Catch errors before the
  // communicator goes out of scope to print them first.
  ~MpiTransport() override {
    if (std::uncaught_exceptions() > 0 && world_ > 1) {
      std::fprintf(stderr, "emix: rank %d of %d: an exception escaped while the communicator was in use; aborting all ranks\n",
                   rank_, world_);
      std::fflush(stderr);
      api_.Abort(api_.comm_world, 1);
    }
    if (!owns_mpi_) return;
    int finalized = 0;
    api_.Finalized(&finalized);
    if (!finalized) api_.Finalize();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "mpi"; }

  void all_to_all(const std::byte* send, std::byte* recv, size_t bytes) override {
    check(api_.Alltoall(send, count(bytes), api_.byte, recv, count(bytes), api_.byte, api_.comm_world), "MPI_Alltoall");
  }
  void all_gather(const std::byte* send, std::byte* recv, size_t bytes) override {
    check(api_.Allgather(send, count(bytes), api_.byte, recv, count(bytes), api_.byte, api_.comm_world),
          "MPI_Allgather");
  }
  void broadcast(std::byte* data, size_t bytes, int root) override {
    check(api_.Bcast(data, count(bytes), api_.byte, root, api_.comm_world), "MPI_Bcast");
  }
  void barrier() override { check(api_.Barrier(api_.comm_world), "MPI_Barrier"); }

  [[noreturn]] void abort(int code) override {
    api_.Abort(api_.comm_world, code);
    std::_Exit(code);  // MPI_Abort does not return; in case it does
  }

 private:
  static int count(size_t bytes) {
    if (bytes > static_cast<size_t>(INT_MAX)) fail("MPI message of {} bytes is too large", bytes);
    return static_cast<int>(bytes);
  }

  void check(int code, const char* what) const {
    if (code == mpi_abi::kSuccess) return;
    char message[mpi_abi::kMaxErrorString + 1] = {};
    int length = 0;
    if (api_.Error_string(code, message, &length) != mpi_abi::kSuccess) std::snprintf(message, sizeof message, "?");
    fail("rank {}: {} failed with error {}: {}", rank_, what, code, message);
  }

  const MpiApi& api_;
  int rank_ = 0;
  int world_ = 1;
  int local_rank_ = 0;
  bool owns_mpi_ = false;
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport() { return std::make_unique<MpiTransport>(); }

std::unique_ptr<Communicator> make_mpi_communicator() { return make_transport_communicator(make_mpi_transport()); }

}  // namespace emix
