// The MPI backend: Open MPI's libmpi.so.40 loaded with dlopen (see
// communicator.hpp for why, and for the determinism of the sums, which are
// computed here in rank order rather than by MPI reduction operations).
#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <type_traits>
#include <vector>

#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/process_identity.hpp"
#include "distributed/mpi_abi.hpp"

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

// Bytes moved per MPI call at most (64 MiB; EMIX_COMM_SEGMENT_BYTES changes it,
// for tests). It bounds the scratch memory (about 3 x this) and keeps MPI's int
// counts (in bytes) far from overflowing. Sums do not depend on it.
size_t segment_bytes_from_environment() {
  const char* value = std::getenv("EMIX_COMM_SEGMENT_BYTES");
  if (value == nullptr || *value == '\0') return size_t{64} << 20;
  char* end = nullptr;
  const unsigned long long bytes = std::strtoull(value, &end, 10);
  if (end == value || *end != '\0' || bytes < 16 || bytes > (size_t{1} << 30)) {
    fail("EMIX_COMM_SEGMENT_BYTES={} is not a byte count in [16, 2^30]", value);
  }
  return static_cast<size_t>(bytes);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() : api_(load_mpi()) {
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
    segment_bytes_ = segment_bytes_from_environment();
  }

  // Destroyed while an exception unwinds the stack: this rank leaves the
  // collectives, and MPI_Finalize would wait for ranks that are waiting for
  // it; so the whole job is aborted instead. Catch errors before the
  // communicator goes out of scope to print them first.
  ~MpiCommunicator() override {
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
  std::string backend() const override { return "mpi"; }

  void all_reduce_sum(std::span<float> data) override { all_reduce(data); }
  void all_reduce_sum(std::span<double> data) override { all_reduce(data); }

  void reduce_scatter_sum(std::span<const float> input, std::span<float> output) override {
    const size_t chunk = output.size();
    if (input.size() != chunk * static_cast<size_t>(world_)) {
      fail("reduce_scatter_sum: input has {} elements, expected world size {} x chunk {}", input.size(), world_,
           chunk);
    }
    const size_t segment = segment_elements<float>();
    for (size_t begin = 0; begin < chunk; begin += segment) {
      const size_t length = std::min(segment, chunk - begin);
      // Every rank's segment is copied out before this rank's is written:
      // output may be chunk rank() of input.
      auto send = scratch<float>(send_scratch_, length * world_);
      for (int r = 0; r < world_; ++r) {
        std::copy_n(input.data() + r * chunk + begin, length, send.data() + r * length);
      }
      reduce_scatter_block(std::span<const float>(send), output.subspan(begin, length));
    }
  }

  void all_gather(std::span<const float> input, std::span<float> output) override {
    const size_t chunk = input.size();
    if (output.size() != chunk * static_cast<size_t>(world_)) {
      fail("all_gather: output has {} elements, expected world size {} x chunk {}", output.size(), world_, chunk);
    }
    const size_t segment = segment_elements<float>();
    for (size_t begin = 0; begin < chunk; begin += segment) {
      const size_t length = std::min(segment, chunk - begin);
      auto mine = scratch<float>(send_scratch_, length);
      std::copy_n(input.data() + begin, length, mine.data());  // input may alias output
      auto gathered = scratch<float>(recv_scratch_, length * world_);
      check(api_.Allgather(mine.data(), bytes<float>(length), api_.byte, gathered.data(), bytes<float>(length),
                           api_.byte, api_.comm_world),
            "MPI_Allgather");
      for (int r = 0; r < world_; ++r) {
        std::copy_n(gathered.data() + r * length, length, output.data() + r * chunk + begin);
      }
    }
  }

  void broadcast(std::span<float> data, int root) override {
    broadcast_bytes(std::as_writable_bytes(data), root);
  }

  void broadcast_bytes(std::span<std::byte> data, int root) override {
    if (root < 0 || root >= world_) fail("broadcast: root {} is not a rank (world size {})", root, world_);
    for (size_t begin = 0; begin < data.size(); begin += segment_bytes_) {
      const size_t length = std::min(segment_bytes_, data.size() - begin);
      check(api_.Bcast(data.data() + begin, static_cast<int>(length), api_.byte, root, api_.comm_world),
            "MPI_Bcast");
    }
  }

  void barrier() override { check(api_.Barrier(api_.comm_world), "MPI_Barrier"); }

  bool any(bool flag) override {
    std::vector<unsigned char> flags(static_cast<size_t>(world_));
    const unsigned char mine = flag ? 1 : 0;
    check(api_.Allgather(&mine, 1, api_.byte, flags.data(), 1, api_.byte, api_.comm_world), "MPI_Allgather");
    return std::any_of(flags.begin(), flags.end(), [](unsigned char f) { return f != 0; });
  }

  [[noreturn]] void abort(int code) override {
    api_.Abort(api_.comm_world, code);
    std::_Exit(code);  // MPI_Abort does not return; in case it does
  }

 private:
  template <typename T>
  size_t segment_elements() const {
    return std::max<size_t>(1, segment_bytes_ / sizeof(T) / static_cast<size_t>(world_));
  }

  template <typename T>
  static int bytes(size_t elements) {
    const size_t n = elements * sizeof(T);
    if (n > static_cast<size_t>(INT_MAX)) fail("MPI message of {} bytes is too large", n);
    return static_cast<int>(n);
  }

  // A view of `elements` elements of type T over a reusable byte buffer.
  template <typename T>
  static std::span<T> scratch(std::vector<std::byte>& buffer, size_t elements) {
    const size_t needed = elements * sizeof(T) + alignof(std::max_align_t);
    if (buffer.size() < needed) buffer.resize(needed);
    void* base = buffer.data();
    size_t space = buffer.size();
    void* aligned = std::align(alignof(T), elements * sizeof(T), base, space);
    return {static_cast<T*>(aligned), elements};
  }

  // send holds world x length elements (block r for rank r); output gets the
  // sum over ranks of this rank's blocks, added in rank order.
  template <typename T>
  void reduce_scatter_block(std::span<const T> send, std::span<T> output) {
    const size_t length = output.size();
    auto received = scratch<T>(recv_scratch_, length * world_);
    check(api_.Alltoall(send.data(), bytes<T>(length), api_.byte, received.data(), bytes<T>(length), api_.byte,
                        api_.comm_world),
          "MPI_Alltoall");
    std::copy_n(received.data(), length, output.data());
    for (int r = 1; r < world_; ++r) {
      const T* block = received.data() + r * length;
      for (size_t i = 0; i < length; ++i) output[i] += block[i];
    }
  }

  // In place sum over ranks: windows of at most world x segment elements,
  // each zero-padded to world x chunk, reduce-scattered, then all-gathered.
  template <typename T>
  void all_reduce(std::span<T> data) {
    const size_t window = segment_elements<T>() * static_cast<size_t>(world_);
    for (size_t begin = 0; begin < data.size(); begin += window) {
      const size_t length = std::min(window, data.size() - begin);
      const size_t chunk = chunk_size(length, world_);
      auto send = scratch<T>(send_scratch_, chunk * world_);
      std::copy_n(data.data() + begin, length, send.data());
      std::fill(send.begin() + length, send.end(), T(0));
      std::vector<T>& mine = sum_scratch<T>();
      mine.resize(chunk);
      reduce_scatter_block(std::span<const T>(send), std::span<T>(mine));
      auto gathered = scratch<T>(recv_scratch_, chunk * world_);
      check(api_.Allgather(mine.data(), bytes<T>(chunk), api_.byte, gathered.data(), bytes<T>(chunk), api_.byte,
                           api_.comm_world),
            "MPI_Allgather");
      std::copy_n(gathered.data(), length, data.data() + begin);
    }
  }

  template <typename T>
  std::vector<T>& sum_scratch() {
    if constexpr (std::is_same_v<T, float>) {
      return float_sum_;
    } else {
      return double_sum_;
    }
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
  size_t segment_bytes_ = 0;
  std::vector<std::byte> send_scratch_;
  std::vector<std::byte> recv_scratch_;
  std::vector<float> float_sum_;
  std::vector<double> double_sum_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace emix
