// The communication layer (src/distributed). Runs as a plain single-process
// test (the local backend: every collective behaves as world size 1), and
// under `mpirun -np N` (N = 2, 3, 4; see tests/distributed/CMakeLists.txt),
// where every rank runs every test and checks its own results. Only rank 0
// prints gtest's normal output; the other ranks print their failures,
// prefixed with "[rank r]".
//
// Extra arguments (after gtest's): --emix-fail=catch|unwind makes rank 1
// fail on its own while the other ranks wait in a collective; "catch"
// prints the error and calls Communicator::abort, "unwind" lets the
// exception leave the communicator's scope. Either must end the whole job
// with a non-zero status instead of hanging.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sys/wait.h>
#include <unistd.h>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/gradient_exchange.hpp"
#include "distributed/process_identity.hpp"
#include "distributed/mpi_abi.hpp"
#include "kernels/bf16_rounding.hpp"
#include "model/gpt2_config.hpp"
#include "test_support.hpp"

#ifdef EMIX_TEST_HAVE_MPI_H
// Only constants and types are used: no C++ bindings, no reference to libmpi.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <type_traits>
// The ABI facts the dlopen'ed backend relies on, against the real header.
static_assert(std::is_pointer_v<MPI_Comm> && std::is_pointer_v<MPI_Datatype>);
static_assert(emix::mpi_abi::kSuccess == MPI_SUCCESS);
static_assert(emix::mpi_abi::kThreadFunneled == MPI_THREAD_FUNNELED);
static_assert(emix::mpi_abi::kMaxErrorString == MPI_MAX_ERROR_STRING);
static_assert(OMPI_MAJOR_VERSION >= 3, "libmpi.so.40 is Open MPI 3.0 or later");
#endif

namespace emix {
namespace {

Communicator* g_comm = nullptr;

Communicator& comm() { return *g_comm; }

// Rank r's pseudo-random contribution: any rank can regenerate any rank's.
std::vector<float> random_values(int rank, size_t n, uint32_t salt) {
  std::mt19937 rng(1234u + 7919u * static_cast<uint32_t>(rank) + salt);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> values(n);
  for (float& v : values) v = dist(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 20) - 10);
  return values;
}

// The documented result: element-wise sum in rank order, ((x0 + x1) + x2)...
std::vector<float> rank_order_sum(int world, size_t n, uint32_t salt) {
  std::vector<float> sum = random_values(0, n, salt);
  for (int r = 1; r < world; ++r) {
    const std::vector<float> x = random_values(r, n, salt);
    for (size_t i = 0; i < n; ++i) sum[i] += x[i];
  }
  return sum;
}

std::vector<size_t> lengths() {
  const size_t n = static_cast<size_t>(comm().world_size());
  return {0, 1, n - 1 == 0 ? 2 : n - 1, n, n + 1, 1000, 1001, 4099, 100003};
}

TEST(Distributed, WorldMatchesLauncher) {
  const int expected = read_process_identity().world_size;
  EXPECT_EQ(comm().world_size(), expected);
  EXPECT_GE(comm().rank(), 0);
  EXPECT_LT(comm().rank(), comm().world_size());
  EXPECT_EQ(comm().backend(), expected > 1 ? "mpi" : "local");
  if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK")) {
    EXPECT_EQ(comm().rank(), std::atoi(r));
  }
  if (const char* l = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) {
    EXPECT_EQ(comm().local_rank(), std::atoi(l));
  }
}

TEST(Distributed, AllReduceSumEqualsClosedForm) {
  const int n = comm().world_size();
  const int r = comm().rank();
  for (size_t length : lengths()) {
    std::vector<float> data(length);
    // Small integers: every order of addition gives the exact sum.
    for (size_t i = 0; i < length; ++i) data[i] = static_cast<float>((r + 1) * static_cast<int>(i % 7 + 1));
    comm().all_reduce_sum(std::span<float>(data));
    for (size_t i = 0; i < length; ++i) {
      ASSERT_EQ(data[i], static_cast<float>(n * (n + 1) / 2 * static_cast<int>(i % 7 + 1))) << "length " << length << " i " << i;
    }
  }
}

TEST(Distributed, AllReduceSumIsRankOrderSumBitForBit) {
  const int n = comm().world_size();
  for (size_t length : lengths()) {
    std::vector<float> data = random_values(comm().rank(), length, 1);
    comm().all_reduce_sum(std::span<float>(data));
    EXPECT_TRUE(test::same_bits(data, rank_order_sum(n, length, 1))) << "length " << length;
  }
}

TEST(Distributed, AllReduceIsDeterministic) {
  const size_t length = 100003;
  const std::vector<float> input = random_values(comm().rank(), length, 2);
  std::vector<float> first = input;
  std::vector<float> second = input;
  comm().all_reduce_sum(std::span<float>(first));
  comm().all_reduce_sum(std::span<float>(second));
  EXPECT_TRUE(test::same_bits(first, second));
  // Identical on every rank: rank 0's result, broadcast, has the same bits.
  std::vector<float> root = first;
  comm().broadcast(std::span<float>(root), 0);
  EXPECT_TRUE(test::same_bits(first, root));
}

TEST(Distributed, AllReduceMean) {
  const int n = comm().world_size();
  std::vector<float> data(1001);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(comm().rank() * 2 + static_cast<int>(i));
  comm().all_reduce_mean(std::span<float>(data));
  for (size_t i = 0; i < data.size(); ++i) {
    // mean of 2r + i over r = (n - 1) + i, exact in float
    ASSERT_EQ(data[i], static_cast<float>(n - 1 + static_cast<int>(i))) << i;
  }
}

TEST(Distributed, ReduceScatterThenAllGatherEqualsAllReduce) {
  const int n = comm().world_size();
  const int r = comm().rank();
  for (size_t length : lengths()) {
    const size_t chunk = Communicator::chunk_size(length, n);
    ASSERT_GE(chunk * n, length);
    ASSERT_LT(chunk * n, length + n);
    // The buffer padded with zeros to n * chunk, as ZeRO sharding will do.
    std::vector<float> padded(chunk * n, 0.0f);
    const std::vector<float> values = random_values(r, length, 3);
    std::copy(values.begin(), values.end(), padded.begin());
    std::vector<float> shard(chunk);
    comm().reduce_scatter_sum(padded, shard);
    const std::vector<float> expected = rank_order_sum(n, length, 3);
    for (size_t i = 0; i < chunk; ++i) {
      const size_t global = static_cast<size_t>(r) * chunk + i;
      const float want = global < length ? expected[global] : 0.0f;
      ASSERT_EQ(std::memcmp(&shard[i], &want, sizeof(float)), 0) << "length " << length << " element " << global;
    }
    std::vector<float> gathered(chunk * n, -1.0f);
    comm().all_gather(shard, gathered);
    std::vector<float> reduced = values;
    comm().all_reduce_sum(std::span<float>(reduced));
    EXPECT_TRUE(test::same_bits(std::span<const float>(gathered).first(length), reduced)) << "length " << length;
    for (size_t i = length; i < gathered.size(); ++i) EXPECT_EQ(gathered[i], 0.0f);
  }
}

TEST(Distributed, AllGatherInPlace) {
  const int n = comm().world_size();
  const size_t chunk = 37;
  std::vector<float> buffer(chunk * n, 0.0f);
  for (size_t i = 0; i < chunk; ++i) buffer[comm().rank() * chunk + i] = static_cast<float>(comm().rank() * 1000 + i);
  comm().all_gather(std::span<const float>(buffer).subspan(comm().rank() * chunk, chunk), buffer);
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < chunk; ++i) ASSERT_EQ(buffer[r * chunk + i], static_cast<float>(r * 1000 + i));
  }
}

// Into this rank's own chunk of the input, over several segments
// (EMIX_COMM_SEGMENT_BYTES is small in the np3_small_segments entry).
TEST(Distributed, ReduceScatterInPlace) {
  const int n = comm().world_size();
  const size_t chunk = 3001;
  const std::vector<float> values = random_values(comm().rank(), chunk * n, 5);
  std::vector<float> buffer = values;
  std::vector<float> separate(chunk);
  comm().reduce_scatter_sum(values, separate);
  std::span<float> mine = std::span<float>(buffer).subspan(comm().rank() * chunk, chunk);
  comm().reduce_scatter_sum(buffer, mine);
  EXPECT_TRUE(test::same_bits(mine, separate));
}

// Rank r's bf16 contribution, as bit patterns: mixed magnitudes, so that
// the order of the additions shows, and a few special values.
std::vector<uint16_t> bf16_values(int rank, size_t n, uint32_t salt) {
  const std::vector<float> values = random_values(rank, n, salt);
  std::vector<uint16_t> bits(n);
  for (size_t i = 0; i < n; ++i) bits[i] = bf16_bits_nearest_even(i % 5 == 0 ? values[i] * 4096.0f : values[i]);
  if (n > 3) {
    bits[1] = 0x8000;                        // -0 on every rank: the sum stays -0
    bits[2] = rank == 0 ? 0x7F80 : bits[2];  // +inf from rank 0
  }
  return bits;
}

// The GPU's rule (sum_bf16_chunks): chunk rank()'s values added in fp32
// from rank 0 up, rounded once to the nearest bf16; over several segments
// in the small-segments entry.
TEST(Distributed, Bf16ReduceScatterAddsInFp32InRankOrder) {
  const int n = comm().world_size();
  const size_t rank = static_cast<size_t>(comm().rank());
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{4099}}) {
    std::vector<std::vector<uint16_t>> all;
    for (int r = 0; r < n; ++r) all.push_back(bf16_values(r, chunk * static_cast<size_t>(n), 11));
    std::vector<uint16_t> mine(chunk);
    comm().reduce_scatter_sum_bf16(all[rank], mine);
    for (size_t i = 0; i < chunk; ++i) {
      const size_t global = rank * chunk + i;
      float sum = bf16_bits_to_float(all[0][global]);
      for (int r = 1; r < n; ++r) sum += bf16_bits_to_float(all[static_cast<size_t>(r)][global]);
      ASSERT_EQ(mine[i], bf16_bits_nearest_even(sum)) << "chunk " << chunk << " element " << global;
    }
    if (chunk > 3 && rank == 0) {
      EXPECT_EQ(mine[1], 0x8000);
      EXPECT_EQ(mine[2], 0x7F80);
    }
  }
}

// The gradients of a model sent group by group, in the backward's order
// and in small batches (gradient_exchange.hpp), give each owner the bits of
// the whole buffer's bf16 reduce-scatter, and leave the rest of every
// rank's buffer alone.
TEST(Distributed, GradientExchangeInGroupsIsTheBf16ReduceScatter) {
  const int n = comm().world_size();
  const ModelConfig model{64, 64, 3, 16, 2, 8};
  const ParameterLayout layout(model);
  const ShardPlan plan = ShardPlan::make(layout.num_parameters(), n, comm().rank(), 16);
  std::vector<std::vector<uint16_t>> all;
  for (int r = 0; r < n; ++r) {
    all.push_back(bf16_values(r, plan.padded_total(), 13));
    std::fill(all.back().begin() + static_cast<std::ptrdiff_t>(plan.total), all.back().end(), 0);  // the padding
  }
  const std::vector<uint16_t>& before = all[static_cast<size_t>(comm().rank())];
  std::vector<uint16_t> whole(plan.chunk);
  comm().reduce_scatter_sum_bf16(before, whole);

  std::vector<uint16_t> grads = before;
  const PieceRead read = [&](const ExchangePiece& piece, uint16_t* to) {
    std::copy_n(grads.data() + piece.begin, piece.length, to);
  };
  const PieceWrite write = [&](const ExchangePiece& piece, const uint16_t* from) {
    std::copy_n(from, piece.length, grads.data() + piece.begin);
  };
  std::vector<uint16_t> scratch;
  for (const auto& group : gradient_groups_in_backward_order(layout, model.n_layer)) {
    for (const ExchangeBatch& batch : plan_gradient_exchange(group, plan, /*segment=*/37)) {
      exchange_batch_through_host(comm(), batch, read, write, scratch);
    }
  }
  test::expect_only_own_chunk_summed(grads, before, whole, plan);
}

TEST(Distributed, SizeMismatchIsAnErrorOnEveryRank) {
  const int n = comm().world_size();
  std::vector<float> input(5 * n + 1);
  std::vector<float> output(5);
  EXPECT_THROW(comm().reduce_scatter_sum(input, output), Error);
  std::vector<float> gathered(5 * n + 1);
  EXPECT_THROW(comm().all_gather(output, gathered), Error);
  std::vector<float> data(3);
  EXPECT_THROW(comm().broadcast(std::span<float>(data), n), Error);
}

TEST(Distributed, BroadcastFromEveryRoot) {
  const int n = comm().world_size();
  for (int root = 0; root < n; ++root) {
    std::vector<float> data = random_values(comm().rank(), 4099, 4);
    comm().broadcast(std::span<float>(data), root);
    EXPECT_TRUE(test::same_bits(data, random_values(root, 4099, 4))) << "root " << root;
  }
  std::string text = comm().rank() == 0 ? std::string("run-2026-11-24") : std::string(14, '?');
  comm().broadcast_bytes(std::as_writable_bytes(std::span<char>(text)), 0);
  EXPECT_EQ(text, "run-2026-11-24");
}

TEST(Distributed, BarrierWaitsForTheSlowestRank) {
  using clock = std::chrono::steady_clock;
  comm().barrier();
  const auto start = clock::now();
  if (comm().rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  comm().barrier();
  const double waited = std::chrono::duration<double>(clock::now() - start).count();
  EXPECT_GE(waited, 0.25);
}

TEST(Distributed, AnyAgreesOnAStopRequest) {
  const int n = comm().world_size();
  EXPECT_FALSE(comm().any(false));
  EXPECT_TRUE(comm().any(true));
  for (int asking = 0; asking < n; ++asking) EXPECT_TRUE(comm().any(comm().rank() == asking)) << asking;
}

TEST(Distributed, DoubleScalarsSumInRankOrder) {
  const int n = comm().world_size();
  const double mine = 0.1 * (comm().rank() + 1) + 1e-17 * comm().rank();
  double expected = 0.1;
  for (int r = 1; r < n; ++r) expected += 0.1 * (r + 1) + 1e-17 * r;
  const double sum = comm().all_reduce_sum(mine);
  EXPECT_EQ(std::memcmp(&sum, &expected, sizeof sum), 0) << sum << " vs " << expected;
  std::vector<double> pair = {1.0 * comm().rank(), 2.0};
  comm().all_reduce_sum(std::span<double>(pair));
  EXPECT_EQ(pair[0], n * (n - 1) / 2.0);
  EXPECT_EQ(pair[1], 2.0 * n);
}

// Doubles come back exactly (odd bit patterns, 2^53-sized integers, NaN,
// infinities), each rank's in its chunk, on every rank.
TEST(Distributed, DoubleTablesAreGatheredExactly) {
  const int n = comm().world_size();
  auto values_of = [](int rank) {
    return std::vector<double>{0.1 * (rank + 1) + 1e-17, 9007199254740991.0 - rank, rank == 1 ? NAN : -1e308,
                               rank == 0 ? INFINITY : 3.5};
  };
  std::vector<double> gathered(4 * static_cast<size_t>(n));
  comm().all_gather(values_of(comm().rank()), gathered);
  for (int r = 0; r < n; ++r) {
    const std::vector<double> expected = values_of(r);
    EXPECT_EQ(std::memcmp(gathered.data() + 4 * r, expected.data(), 4 * sizeof(double)), 0) << "chunk of rank " << r;
  }
  std::vector<double> wrong(4 * static_cast<size_t>(n) + 1);
  EXPECT_THROW(comm().all_gather(values_of(comm().rank()), wrong), Error);
}

TEST(Distributed, CheckAllMakesEveryRankThrow) {
  const int n = comm().world_size();
  EXPECT_NO_THROW(comm().check_all(true, "fine"));
  const int failing = n - 1;
  try {
    comm().check_all(comm().rank() != failing, "shard 3 is corrupt");
    ADD_FAILURE() << "check_all did not throw";
  } catch (const Error& error) {
    const std::string message = error.what();
    if (comm().rank() == failing) {
      EXPECT_NE(message.find("shard 3 is corrupt"), std::string::npos) << message;
    } else {
      EXPECT_NE(message.find("rank(s) " + std::to_string(failing) + " failed"), std::string::npos) << message;
    }
  }
}

TEST(Distributed, LocalBackendIsWorldSizeOne) {
  auto local = make_local_communicator();
  EXPECT_EQ(local->world_size(), 1);
  EXPECT_EQ(local->rank(), 0);
  EXPECT_EQ(local->backend(), "local");
  std::vector<float> data = {1.5f, -2.0f, 3.25f};
  const std::vector<float> original = data;
  local->all_reduce_sum(std::span<float>(data));
  EXPECT_EQ(data, original);
  local->all_reduce_mean(std::span<float>(data));
  EXPECT_EQ(data, original);
  std::vector<float> out(3);
  local->reduce_scatter_sum(data, out);
  EXPECT_EQ(out, original);
  std::fill(out.begin(), out.end(), 0.0f);
  local->all_gather(data, out);
  EXPECT_EQ(out, original);
  local->broadcast(std::span<float>(data), 0);
  EXPECT_THROW(local->broadcast(std::span<float>(data), 1), Error);
  local->barrier();
  EXPECT_TRUE(local->any(true));
  EXPECT_FALSE(local->any(false));
  EXPECT_EQ(local->all_reduce_sum(2.5), 2.5);
  EXPECT_THROW(local->check_all(false, "bad"), Error);
  std::vector<float> odd(4);
  EXPECT_THROW(local->reduce_scatter_sum(odd, out), Error);
}

// Environment handling of make_communicator(), in a child process so that
// this process's environment and MPI state are untouched.
int child_status(const std::vector<std::pair<const char*, const char*>>& env, void (*body)()) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    for (const char* name : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK",
                             "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
                             "SLURM_LOCALID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "EMIX_COMM", "EMIX_LIBMPI",
                             "EMIX_LIBNCCL"}) {
      unsetenv(name);
    }
    for (const auto& [name, value] : env) setenv(name, value, 1);
    try {
      body();
      std::_Exit(0);
    } catch (const Error&) {
      std::_Exit(3);
    } catch (...) {
      std::_Exit(4);
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST(Distributed, FactoryReadsTheLauncherEnvironment) {
  if (comm().world_size() > 1 && comm().rank() != 0) GTEST_SKIP() << "checked on rank 0";
  auto expect_local = [] {
    if (make_communicator()->backend() != "local") std::_Exit(5);
  };
  EXPECT_EQ(child_status({}, expect_local), 0);
  EXPECT_EQ(child_status({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "1"}}, expect_local), 0);
  // A batch script (no SLURM_STEP_ID): one process whatever SLURM_NTASKS says.
  EXPECT_EQ(child_status({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}}, expect_local), 0);
  EXPECT_EQ(child_status({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"}}, expect_local), 0);
  // torchrun-style multi-process launch: a clear error, not a silent solo run;
  // also when torchrun runs inside an srun step, whose Slurm variables
  // describe the outer tasks.
  EXPECT_EQ(child_status({{"RANK", "0"}, {"WORLD_SIZE", "2"}}, [] { make_communicator(); }), 3);
  EXPECT_EQ(child_status({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}, {"RANK", "0"},
                          {"WORLD_SIZE", "2"}},
                         [] { make_communicator(); }),
            3);
  // Launched with 2 ranks but libmpi cannot be loaded: a clear error. (Only
  // where this process has not loaded libmpi already.)
  if (comm().backend() == "local") {
    EXPECT_EQ(child_status({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                            {"EMIX_LIBMPI", "/nonexistent/libmpi.so.40"}},
                           [] { make_communicator(); }),
              3);
  }
  EXPECT_EQ(child_status({{"EMIX_COMM", "bogus"}}, [] { make_communicator(); }), 3);
  // A GPU run: one process needs no NCCL; several (any launcher) or
  // EMIX_COMM=nccl do, and a missing NCCL (or a build without CUDA) is an error.
  EXPECT_EQ(child_status({}, [] {
              if (make_communicator(/*gpu_run=*/true)->backend() != "local") std::_Exit(5);
            }),
            0);
  const std::pair<const char*, const char*> no_nccl = {"EMIX_LIBNCCL", "/nonexistent/libnccl.so.2"};
  EXPECT_EQ(child_status({{"RANK", "0"}, {"WORLD_SIZE", "2"}, no_nccl}, [] { make_communicator(true); }), 3);
  EXPECT_EQ(child_status({{"EMIX_COMM", "nccl"}, no_nccl}, [] { make_communicator(true); }), 3);
  EXPECT_EQ(child_status({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "two"}}, [] { make_communicator(); }),
            3);
  auto local_rank_is_3 = [] {
    if (make_local_communicator()->local_rank() != 3) std::_Exit(5);
  };
  EXPECT_EQ(child_status({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_STEP_ID", "0"}, {"SLURM_LOCALID", "3"}},
                         local_rank_is_3),
            0);
}

}  // namespace
}  // namespace emix

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  std::string fail_mode;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--emix-fail=", 0) == 0) fail_mode = arg.substr(12);
  }
  try {
    auto comm = emix::make_communicator();
    emix::g_comm = comm.get();
    if (!fail_mode.empty()) {
      // Rank 1 fails on its own while the others wait in a collective.
      auto fail_rank_1 = [&] {
        if (comm->rank() == 1) emix::fail("deliberate failure on rank 1");
        comm->barrier();
      };
      if (fail_mode == "unwind") {
        fail_rank_1();  // escapes the communicator's scope: its destructor aborts the job
      } else {
        try {
          fail_rank_1();
        } catch (const emix::Error& error) {
          std::fprintf(stderr, "[rank %d] error: %s\n", comm->rank(), error.what());
          comm->abort(2);
        }
      }
      return 0;
    }
    return emix::test::run_all_tests_on_every_rank(*comm);
  } catch (const emix::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
