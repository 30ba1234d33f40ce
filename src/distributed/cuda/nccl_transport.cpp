// The NCCL backend (communicator.hpp): a Transport whose host byte
// movements are staged through device memory, so TransportCommunicator's
// sums and checks work unchanged, and the DeviceCollectives that data
// parallelism uses on the GPU buffers.
//
// libnccl.so.2 is loaded with dlopen (as libmpi is: the binary must start
// where NCCL is missing, and a single-GPU run never needs it); nccl.h from
// the CUDA toolkit gives the types and signatures only.
//
// One GPU per rank: the rank's local rank selects it, unless the node shows
// one GPU only (a launcher that sets CUDA_VISIBLE_DEVICES per rank).
//
// No wait is unbounded. NCCL has no timeouts of its own: a rank that dies
// leaves the others blocked inside a collective. So every call here runs on
// this transport's stream and returns only once it has completed (the
// gradients' reductions, queued during the backward, once
// finish_reductions() sees them complete), polling the stream and
// ncclCommGetAsyncError, and aborting the communicator after
// EMIX_NCCL_TIMEOUT seconds (default 900, which must cover the longest
// pause of one rank: rank 0 writing a checkpoint). Host memory is staged in
// pinned buffers, because a device-to-host copy into pageable memory blocks
// the calling thread until the work before it is done, where no timeout
// applies. ncclCommInitRank, which cannot be polled, runs under a watchdog
// with the rendezvous' timeout, together with a first all-gather and
// all-to-all: NCCL connects peers when they are first used, in host calls
// that block. Waiting for each other collective costs little: what follows
// it (the norm, the update, the next forward) needs its result.
#include <dlfcn.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/device_collectives.hpp"
#include "distributed/gradient_exchange.hpp"
#include "distributed/process_identity.hpp"
#include "distributed/rendezvous.hpp"
#include "distributed/transport.hpp"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.hpp"
#include "kernels/cuda/growing_buffer.cuh"
#include "kernels/cuda/sum_chunks.cuh"

namespace emix {
namespace {

using cuda::bf16;

// The NCCL functions used, with nccl.h's signatures.
struct NcclApi {
  decltype(&ncclGetVersion) GetVersion;
  decltype(&ncclGetUniqueId) GetUniqueId;
  decltype(&ncclCommInitRank) CommInitRank;
  decltype(&ncclCommDestroy) CommDestroy;
  decltype(&ncclCommAbort) CommAbort;
  decltype(&ncclCommGetAsyncError) CommGetAsyncError;
  decltype(&ncclGetErrorString) GetErrorString;
  decltype(&ncclGetLastError) GetLastError;
  decltype(&ncclAllGather) AllGather;
  decltype(&ncclBroadcast) Broadcast;
  decltype(&ncclSend) Send;
  decltype(&ncclRecv) Recv;
  decltype(&ncclGroupStart) GroupStart;
  decltype(&ncclGroupEnd) GroupEnd;
};

const NcclApi& load_nccl() {
  static const NcclApi api = [] {
    const char* override_path = std::getenv("EMIX_LIBNCCL");
    const std::string path = override_path != nullptr && *override_path != '\0' ? override_path : "libnccl.so.2";
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      const char* why = dlerror();
      fail("the NCCL backend (GPU runs on several ranks) needs NCCL's {} but it cannot be loaded ({}); install NCCL "
           "(NVIDIA's libnccl2 package, or pip's nvidia-nccl-cu13) or set EMIX_LIBNCCL to the library's path",
           path, why != nullptr ? why : "unknown error");
    }
    NcclApi loaded{};
    auto resolve = [&](auto& slot, const char* name) {
      void* symbol = dlsym(library, name);
      if (symbol == nullptr) fail("{}: symbol {} not found: is this NCCL 2.x?", path, name);
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(symbol);
    };
    resolve(loaded.GetVersion, "ncclGetVersion");
    resolve(loaded.GetUniqueId, "ncclGetUniqueId");
    resolve(loaded.CommInitRank, "ncclCommInitRank");
    resolve(loaded.CommDestroy, "ncclCommDestroy");
    resolve(loaded.CommAbort, "ncclCommAbort");
    resolve(loaded.CommGetAsyncError, "ncclCommGetAsyncError");
    resolve(loaded.GetErrorString, "ncclGetErrorString");
    resolve(loaded.GetLastError, "ncclGetLastError");
    resolve(loaded.AllGather, "ncclAllGather");
    resolve(loaded.Broadcast, "ncclBroadcast");
    resolve(loaded.Send, "ncclSend");
    resolve(loaded.Recv, "ncclRecv");
    resolve(loaded.GroupStart, "ncclGroupStart");
    resolve(loaded.GroupEnd, "ncclGroupEnd");
    return loaded;
  }();
  return api;
}

std::chrono::seconds collective_timeout_from_environment() {
  const char* value = std::getenv("EMIX_NCCL_TIMEOUT");
  if (value == nullptr || *value == '\0') return std::chrono::seconds(900);
  char* end = nullptr;
  const long long seconds = std::strtoll(value, &end, 10);
  if (end == value || *end != '\0' || seconds < 1) fail("EMIX_NCCL_TIMEOUT={} is not a number of seconds >= 1", value);
  return std::chrono::seconds(seconds);
}

// Ends the process with `message` unless destroyed within `timeout`: for a
// call that blocks without a timeout of its own.
class Watchdog {
 public:
  Watchdog(std::chrono::milliseconds timeout, std::string message)
      : thread_([this, timeout, message = std::move(message)] {
          std::unique_lock lock(mutex_);
          if (!done_changed_.wait_for(lock, timeout, [this] { return done_; })) {
            std::fprintf(stderr, "emix: %s\n", message.c_str());
            std::fflush(stderr);
            std::_Exit(1);
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    done_changed_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable done_changed_;
  bool done_ = false;
  std::thread thread_;  // last: it starts once the members above exist
};

class NcclTransport final : public Transport, public DeviceCollectives {
 public:
  explicit NcclTransport(const ProcessIdentity& identity)
      : api_(load_nccl()),
        rank_(identity.rank),
        world_(identity.world_size),
        local_rank_(identity.local_rank),
        timeout_(collective_timeout_from_environment()) {
    require_blocking_communicators();
    cuda::select_device_for_local_rank(local_rank_);
    try {
      EMIX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      EMIX_CUDA_CHECK(cudaEventCreateWithFlags(&caller_ready_, cudaEventDisableTiming));
      const RendezvousOptions options = rendezvous_options_from_environment();
      const ncclUniqueId id = exchange_unique_id(identity, options);
      const Watchdog watchdog(options.timeout,
                              fmt::format("rank {} of {}: NCCL's initialization did not complete within {} s: a rank "
                                          "did not start or cannot reach the others (EMIX_RENDEZVOUS_TIMEOUT sets the "
                                          "limit)",
                                          rank_, world_,
                                          std::chrono::duration_cast<std::chrono::seconds>(options.timeout).count()));
      check(api_.CommInitRank(&comm_, world_, id, rank_), "ncclCommInitRank");
      connect_peers();
    } catch (...) {
      release_cuda_objects();
      throw;
    }
  }

  // Destroyed while an exception unwinds the stack (this rank leaves the
  // collectives): the communicator is aborted rather than destroyed, which
  // would wait for work the other ranks will never match; an MPI bootstrap
  // then aborts the job (MpiTransport's destructor).
  ~NcclTransport() override {
    if (comm_ != nullptr) {
      if (std::uncaught_exceptions() > 0) {
        api_.CommAbort(comm_);
      } else {
        api_.CommDestroy(comm_);
      }
    }
    release_cuda_objects();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "nccl"; }
  DeviceCollectives* device_collectives() override { return this; }

  // Host bytes go: caller → pinned → device, and back the same way once
  // the stream is done (the caller's memory is written only after wait()).
  void all_to_all(const std::byte* send, std::byte* recv, size_t bytes) override {
    finish_queued_reductions();
    const size_t total = bytes * static_cast<size_t>(world_);
    std::byte* staged_send = staging_.get(2 * total, stream_);
    std::byte* staged_recv = staged_send + total;
    std::byte* pinned = stage_in(send, total, total);
    EMIX_CUDA_CHECK(cudaMemcpyAsync(staged_send, pinned, total, cudaMemcpyHostToDevice, stream_));
    exchange_blocks(staged_send, bytes, staged_recv, bytes);
    stage_out(staged_recv, recv, total, "an all-to-all");
  }

  void all_gather(const std::byte* send, std::byte* recv, size_t bytes) override {
    finish_queued_reductions();
    const size_t total = bytes * static_cast<size_t>(world_);
    std::byte* staged = staging_.get(total, stream_);
    std::byte* pinned = stage_in(send, bytes, total);
    EMIX_CUDA_CHECK(cudaMemcpyAsync(staged + rank_ * bytes, pinned, bytes, cudaMemcpyHostToDevice, stream_));
    gather_in_place(staged, bytes);
    stage_out(staged, recv, total, "an all-gather");
  }

  void broadcast(std::byte* data, size_t bytes, int root) override {
    finish_queued_reductions();
    std::byte* staged = staging_.get(bytes, stream_);
    std::byte* pinned = stage_in(data, bytes, bytes);
    EMIX_CUDA_CHECK(cudaMemcpyAsync(staged, pinned, bytes, cudaMemcpyHostToDevice, stream_));
    check(api_.Broadcast(staged, staged, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    stage_out(staged, data, bytes, "a broadcast");
  }

  void barrier() override {
    std::vector<std::byte> flags(static_cast<size_t>(world_));
    const std::byte mine{1};
    all_gather(&mine, flags.data(), 1);
  }

  [[noreturn]] void abort(int code) override {
    if (comm_ != nullptr) api_.CommAbort(comm_);
    comm_ = nullptr;
    if (bootstrap_) bootstrap_->abort(code);
    std::_Exit(code);
  }

  // Queued on stream_ without waiting, batch by batch (gradient_exchange.hpp):
  // each rank packs its pieces for every owner into blocks and sends each
  // owner its block (its length only: a group often lies in a few owners'
  // chunks), each owner adds them in rank order and unpacks its sums. The
  // exchange buffer takes its largest size at the first call, so it never
  // grows (which would wait for the stream) while batches are in flight.
  void reduce_bf16(void* padded, const ShardPlan& plan, std::span<const ParamRange> ranges,
                   void* caller_stream) override {
    auto* grads = static_cast<bf16*>(padded);
    const size_t segment = gradient_exchange_segment(world_);
    const size_t world = static_cast<size_t>(world_);
    bf16* buffer = exchange_.get((2 * world + 1) * std::min(segment, plan.chunk), stream_);
    follow(caller_stream);
    reductions_queued_ = true;
    for (const ExchangeBatch& batch : plan_gradient_exchange(ranges, plan, segment)) {
      bf16* send = buffer;
      bf16* received = buffer + world * batch.block;
      bf16* sums = buffer + 2 * world * batch.block;
      for (size_t owner = 0; owner < world; ++owner) {
        for (const ExchangePiece& piece : batch.pieces[owner]) {
          copy_bf16(send + owner * batch.block + piece.offset, grads + piece.begin, piece.length);
        }
      }
      std::vector<size_t> send_bytes(world);
      for (size_t owner = 0; owner < world; ++owner) send_bytes[owner] = batch.lengths[owner] * sizeof(bf16);
      const size_t mine = batch.lengths[static_cast<size_t>(rank_)];
      exchange_blocks(reinterpret_cast<const std::byte*>(send), batch.block * sizeof(bf16), send_bytes,
                      reinterpret_cast<std::byte*>(received), mine * sizeof(bf16));
      if (mine == 0) continue;
      cuda::sum_bf16_chunks(sums, received, world_, mine, stream_);
      for (const ExchangePiece& piece : batch.pieces[static_cast<size_t>(rank_)]) {
        copy_bf16(grads + piece.begin, sums + piece.offset, piece.length);
      }
    }
  }

  void finish_reductions() override {
    wait("the gradients' reduce-scatter");
    reductions_queued_ = false;
  }

  void all_gather(void* padded, size_t chunk_bytes, void* caller_stream) override {
    follow(caller_stream);
    gather_in_place(static_cast<std::byte*>(padded), chunk_bytes);
    wait("an all-gather of device buffers");
  }

 private:
  // Rank 0's id to every rank: over MPI under an MPI launcher (kept as the
  // bootstrap, which mpirun expects to be finalized at the end), else over
  // the rendezvous (TCP or a shared file).
  ncclUniqueId exchange_unique_id(const ProcessIdentity& identity, const RendezvousOptions& options) {
    ncclUniqueId id{};
    if (rank_ == 0) check(api_.GetUniqueId(&id), "ncclGetUniqueId");
    if (world_ == 1) return id;
    std::span<std::byte> bytes = std::as_writable_bytes(std::span<ncclUniqueId>(&id, 1));
    if (identity.mpi_launcher) {
      bootstrap_ = make_mpi_transport();
      bootstrap_->broadcast(bytes.data(), bytes.size(), 0);
      return id;
    }
    const std::vector<std::byte> blob = rendezvous_broadcast(identity, bytes, options);
    if (blob.size() != bytes.size()) fail("rendezvous: NCCL's id arrived with {} bytes, not {}", blob.size(), bytes.size());
    std::memcpy(&id, blob.data(), sizeof id);
    return id;
  }

  // A host collective (the step's losses, gathered between the backward and
  // the gradients' norm) first waits for the gradients' reductions queued
  // during the backward: it would otherwise wait for them without a bound
  // (growing a buffer synchronizes the stream), and blame itself for their
  // failure. Nothing is lost: the caller waits for them next anyway.
  void finish_queued_reductions() {
    if (reductions_queued_) finish_reductions();
  }

  // `bytes` of host memory copied into the pinned buffer (which the
  // stream's earlier work no longer uses: every call ends with wait()),
  // grown now to the `capacity` stage_out will need: growing later would
  // wait for the stream without a bound.
  std::byte* stage_in(const std::byte* host, size_t bytes, size_t capacity) {
    std::byte* pinned = pinned_.get(std::max(bytes, capacity), stream_);
    std::memcpy(pinned, host, bytes);
    return pinned;
  }

  // device → pinned → host, once the stream is done.
  void stage_out(const std::byte* device, std::byte* host, size_t bytes, const char* what) {
    std::byte* pinned = pinned_.get(bytes, stream_);
    EMIX_CUDA_CHECK(cudaMemcpyAsync(pinned, device, bytes, cudaMemcpyDeviceToHost, stream_));
    wait(what);
    std::memcpy(host, pinned, bytes);
  }

  // NCCL_COMM_BLOCKING=0 would make every call return ncclInProgress, which
  // this transport does not poll for.
  static void require_blocking_communicators() {
    const char* blocking = std::getenv("NCCL_COMM_BLOCKING");
    if (blocking != nullptr && std::string(blocking) == "0") {
      fail("NCCL_COMM_BLOCKING=0: emix needs NCCL's blocking communicators (it bounds its waits itself); unset it");
    }
  }

  // A first all-gather and all-to-all, so that NCCL connects every pair of
  // ranks now, under the initialization's watchdog.
  void connect_peers() {
    barrier();
    std::vector<std::byte> send(static_cast<size_t>(world_)), recv(static_cast<size_t>(world_));
    all_to_all(send.data(), recv.data(), 1);
  }

  void release_cuda_objects() {
    if (caller_ready_ != nullptr) cudaEventDestroy(caller_ready_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    caller_ready_ = nullptr;
    stream_ = nullptr;
  }

  // Block r of send (blocks `send_stride` bytes apart) to rank r, and rank
  // r's block into block r of recv (`bytes` apart); this rank's own block by
  // a device copy. Queued on stream_. The group is ended even when a call in
  // it fails, so that no group stays open.
  void exchange_blocks(const std::byte* send, size_t send_stride, std::byte* recv, size_t bytes) {
    exchange_blocks(send, send_stride, std::vector<size_t>(static_cast<size_t>(world_), bytes), recv, bytes);
  }

  // Block r of `send` (send_bytes[r] bytes, at send_stride apart) goes to
  // rank r, and each rank's block for this one (recv_bytes: every rank
  // computed the same send_bytes) lands at recv + r × recv_bytes. Empty
  // blocks are not sent: both sides know it.
  void exchange_blocks(const std::byte* send, size_t send_stride, const std::vector<size_t>& send_bytes,
                       std::byte* recv, size_t recv_bytes) {
    check(api_.GroupStart(), "ncclGroupStart");
    ncclResult_t queued = ncclSuccess;
    for (int r = 0; r < world_ && queued == ncclSuccess; ++r) {
      if (r == rank_) continue;
      const size_t to_send = send_bytes[static_cast<size_t>(r)];
      if (to_send > 0) queued = api_.Send(send + r * send_stride, to_send, ncclUint8, r, comm_, stream_);
      if (queued == ncclSuccess && recv_bytes > 0) {
        queued = api_.Recv(recv + r * recv_bytes, recv_bytes, ncclUint8, r, comm_, stream_);
      }
    }
    const ncclResult_t ended = api_.GroupEnd();
    check(queued, "ncclSend/ncclRecv");
    check(ended, "ncclGroupEnd");
    if (recv_bytes > 0) {
      EMIX_CUDA_CHECK(cudaMemcpyAsync(recv + rank_ * recv_bytes, send + rank_ * send_stride, recv_bytes,
                                      cudaMemcpyDeviceToDevice, stream_));
    }
  }

  void copy_bf16(bf16* to, const bf16* from, size_t count) {
    EMIX_CUDA_CHECK(cudaMemcpyAsync(to, from, count * sizeof(bf16), cudaMemcpyDeviceToDevice, stream_));
  }

  // base holds world × bytes; every rank's block rank() to every rank.
  void gather_in_place(std::byte* base, size_t bytes) {
    check(api_.AllGather(base + rank_ * bytes, base, bytes, ncclUint8, comm_, stream_), "ncclAllGather");
  }

  // stream_ starts after the work queued so far on the caller's stream.
  void follow(void* caller_stream) {
    auto* caller = static_cast<cudaStream_t>(caller_stream);
    EMIX_CUDA_CHECK(cudaEventRecord(caller_ready_, caller));
    EMIX_CUDA_CHECK(cudaStreamWaitEvent(stream_, caller_ready_, 0));
  }

  // Until stream_ has completed: see the header comment.
  void wait(const char* what) {
    using Clock = std::chrono::steady_clock;
    const Clock::time_point start = Clock::now();
    for (;;) {
      const cudaError_t status = cudaStreamQuery(stream_);
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady) EMIX_CUDA_CHECK(status);
      ncclResult_t async = ncclSuccess;
      check(api_.CommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      if (async != ncclSuccess && async != ncclInProgress) {
        abort_and_fail("{} failed: {}", what, api_.GetErrorString(async));
      }
      const Clock::duration waited = Clock::now() - start;
      if (waited > timeout_) {
        abort_and_fail("{} did not complete within {} s: another rank stopped or hangs (EMIX_NCCL_TIMEOUT sets the limit)",
                       what, timeout_.count());
      }
      // Spin for the first millisecond (most collectives end sooner), then poll gently.
      if (waited < std::chrono::milliseconds(1)) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }

  template <typename... Args>
  [[noreturn]] void abort_and_fail(fmt::format_string<Args...> format, Args&&... args) {
    api_.CommAbort(comm_);
    comm_ = nullptr;
    fail("rank {} of {}: NCCL: {}", rank_, world_, fmt::format(format, std::forward<Args>(args)...));
  }

  void check(ncclResult_t result, const char* what) const {
    if (result == ncclSuccess) return;
    const char* detail = comm_ != nullptr ? api_.GetLastError(comm_) : nullptr;
    fail("rank {} of {}: {} failed: {}{}{}", rank_, world_, what, api_.GetErrorString(result),
         detail != nullptr && *detail != '\0' ? ": " : "", detail != nullptr ? detail : "");
  }

  const NcclApi& api_;
  int rank_;
  int world_;
  int local_rank_;
  std::chrono::seconds timeout_;
  std::unique_ptr<Transport> bootstrap_;  // MPI, under an MPI launcher
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t caller_ready_ = nullptr;
  cuda::GrowingBuffer<std::byte> staging_;  // host bytes on their way, on the device
  cuda::GrowingBuffer<std::byte, cuda::Memory::pinned_host> pinned_;  // and on the host
  cuda::GrowingBuffer<bf16> exchange_;      // gradient batches: blocks sent, received, and sums
  bool reductions_queued_ = false;          // reduce_bf16 since the last finish_reductions
};

std::unique_ptr<Communicator> make_nccl_communicator(const ProcessIdentity& identity) {
  return make_transport_communicator(std::make_unique<NcclTransport>(identity));
}

const bool nccl_registered = register_nccl_communicator(&make_nccl_communicator);

}  // namespace
}  // namespace emix
