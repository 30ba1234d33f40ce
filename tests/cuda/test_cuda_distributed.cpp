// The GPU's data-parallel path: the gradients' rank-order sum kernel
// against its host definition; the collectives' grouped reduction against
// the host's bf16 reduce-scatter; training through NCCL with one rank
// (EMIX_COMM=nccl: every collective of stages 0 and 1 runs, as a copy)
// against the plain single-GPU run, bit for bit; and, launched under
// `mpirun -np 2` with EMIX_COMM=mpi (scripts/gpu_check.sh), two ranks sharing
// one GPU through the host-staged collectives (NCCL refuses two ranks on one
// GPU; several GPUs run the NCCL path the same way).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cuda/cuda_test_support.hpp"
#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/device_collectives.hpp"
#include "distributed/gradient_exchange.hpp"
#include "distributed/process_identity.hpp"
#include "distributed/shard_plan.hpp"
#include "kernels/cuda/sum_chunks.cuh"
#include "model/gpt2_config.hpp"
#include "test_support.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;

namespace emix {
namespace {

TEST(CudaDistributed, SumOfBf16ChunksAddsInRankOrderInFp32) {
  EMIX_REQUIRE_GPU();
  for (int world : {1, 2, 3, 5}) {
    const size_t length = 10007;
    // Values of mixed magnitudes, so that the order of the additions shows.
    std::vector<float> values = test::random_floats(world * length, 17 + world, 1.0f);
    for (size_t i = 0; i < values.size(); i += 3) values[i] *= 4096.0f;
    const std::vector<cuda::bf16> chunks = test::to_bf16(values);
    std::vector<cuda::bf16> expected(length);
    for (size_t i = 0; i < length; ++i) {
      float sum = test::to_float(chunks[i]);
      for (int r = 1; r < world; ++r) sum += test::to_float(chunks[r * length + i]);
      expected[i] = test::to_bf16(sum);
    }
    test::DeviceBuffer<cuda::bf16> device_chunks(chunks);
    test::DeviceBuffer<cuda::bf16> out(length);
    out.poison();
    cuda::sum_bf16_chunks(out.get(), device_chunks.get(), world, length, nullptr);
    const std::vector<cuda::bf16> got = out.download();
    EXPECT_EQ(std::memcmp(got.data(), expected.data(), length * sizeof(cuda::bf16)), 0) << "world " << world;
  }
}

// The NCCL communicator of one rank (EMIX_COMM=nccl, restored after), or
// null with the reason where NCCL cannot be loaded.
std::unique_ptr<Communicator> one_rank_nccl(std::string* why_not) {
  const char* previous = std::getenv("EMIX_COMM");
  const std::string saved = previous != nullptr ? previous : "";
  setenv("EMIX_COMM", "nccl", 1);
  std::unique_ptr<Communicator> comm;
  try {
    comm = make_communicator(/*gpu_run=*/true);
  } catch (const Error& e) {
    *why_not = e.what();
  }
  if (previous != nullptr) {
    setenv("EMIX_COMM", saved.c_str(), 1);
  } else {
    unsetenv("EMIX_COMM");
  }
  return comm;
}

Json nccl_test_config(const test::TempDir& dir, const std::string& optimizer, const std::string& run, int zero_stage) {
  Json json = test::tiny_run_config(dir, optimizer, run);
  json["device"] = "cuda";
  json["cuda"]["attention"] = "reference";
  json["training"]["zero_stage"] = zero_stage;
  return json;
}

// Schedule-free converts its weights at evaluations (a gather of its own);
// MARS adds a norm over the shards; AdEMAMix is why any of this exists.
TEST(CudaDistributed, NcclWithOneRankTrainsAsOneGpuBitForBit) {
  EMIX_REQUIRE_GPU();
  if (read_process_identity().world_size != 1) GTEST_SKIP() << "runs as one process, not under a multi-rank launcher";
  std::string why_not;
  if (one_rank_nccl(&why_not) == nullptr) {
    // Only a missing library is a reason to skip (gpu_check.sh finds it);
    // any other failure of the communicator is one.
    ASSERT_NE(why_not.find("cannot be loaded"), std::string::npos) << why_not;
    GTEST_SKIP() << why_not;
  }
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  for (const std::string& optimizer : {std::string("adamw"), std::string("ademamix"), std::string("mars"),
                                       std::string("schedule_free_adamw")}) {
    Trainer plain(Config::from_json(nccl_test_config(dir, optimizer, optimizer + "_plain", 0)));
    ASSERT_TRUE(plain.run());
    for (int stage : {0, 1}) {
      SCOPED_TRACE(optimizer + ", zero_stage " + std::to_string(stage));
      const std::string run = optimizer + "_nccl" + std::to_string(stage);
      std::unique_ptr<Communicator> comm = one_rank_nccl(&why_not);
      ASSERT_NE(comm, nullptr) << why_not;
      ASSERT_EQ(comm->backend(), "nccl");
      ASSERT_NE(comm->device_collectives(), nullptr);
      Trainer nccl(Config::from_json(nccl_test_config(dir, optimizer, run, stage)), nullptr, comm.get());
      ASSERT_TRUE(nccl.run());
      ASSERT_EQ(nccl.history().size(), plain.history().size());
      for (size_t i = 0; i < plain.history().size(); ++i) {
        EXPECT_EQ(nccl.history()[i].loss, plain.history()[i].loss) << "step " << i + 1;
        EXPECT_EQ(nccl.history()[i].grad_norm, plain.history()[i].grad_norm) << "step " << i + 1;
      }
      EXPECT_TRUE(test::same_bits(nccl.backend().weights(), plain.backend().weights()));

      const test::ResumedRun resumed = test::run_stopped_and_resumed(
          Config::from_json(nccl_test_config(dir, optimizer, run + "_resumed", stage)), /*stop_at_step=*/5, comm.get());
      EXPECT_TRUE(test::same_bits(resumed.trainer->backend().weights(), plain.backend().weights()));
    }
  }
}

// The MPI communicator of a test process started by mpirun, kept until the
// process ends (MPI is initialized once per process); null with one process.
Communicator* launcher_communicator() {
  static const std::unique_ptr<Communicator> comm =
      read_process_identity().world_size > 1 ? make_communicator(/*gpu_run=*/false) : nullptr;
  return comm.get();
}

// A directory every rank sees: rank 0 creates it and sends its path.
fs::path shared_directory(Communicator& comm, std::unique_ptr<test::TempDir>& owned) {
  if (comm.rank() == 0) owned = std::make_unique<test::TempDir>();
  std::vector<char> bytes(4096, '\0');
  if (owned) {
    const std::string path = owned->path().string();
    std::copy(path.begin(), path.end(), bytes.begin());
  }
  comm.broadcast_bytes(std::as_writable_bytes(std::span<char>(bytes)), 0);
  const fs::path path(bytes.data());
  if (comm.rank() == 0) test::write_tiny_shards(path);
  comm.barrier();
  return path;
}

// The collectives on GPU buffers, driven as data parallelism drives them
// (every group of the backward but the embeddings, then what is left, then
// the wait), against Communicator::reduce_scatter_sum_bf16 on the host, bit
// for bit: this rank's chunk holds the sums, everything else is untouched.
// Under mpirun (EMIX_COMM=mpi) the host-staged collectives; in one process
// NCCL's, with one rank (each sum is then one value, so this checks how the
// pieces are packed and unpacked).
TEST(CudaDistributed, DeviceReductionInGroupsIsTheBf16ReduceScatter) {
  EMIX_REQUIRE_GPU();
  Communicator* comm = launcher_communicator();
  std::unique_ptr<Communicator> nccl;
  std::unique_ptr<DeviceCollectives> staged;
  DeviceCollectives* collectives = nullptr;
  if (comm != nullptr) {
    staged = make_host_staged_collectives(*comm);
    collectives = staged.get();
  } else {
    std::string why_not;
    nccl = one_rank_nccl(&why_not);
    if (nccl == nullptr) {
      ASSERT_NE(why_not.find("cannot be loaded"), std::string::npos) << why_not;
      GTEST_SKIP() << why_not;
    }
    comm = nccl.get();
    collectives = comm->device_collectives();
  }
  const ModelConfig model{64, 64, 3, 16, 2, 8};
  const ParameterLayout layout(model);
  const ShardPlan plan = ShardPlan::make(layout.num_parameters(), comm->world_size(), comm->rank(), 16);
  // Mixed magnitudes, so that the order of the additions shows; the padding zero.
  std::vector<float> values = test::random_floats(plan.padded_total(), 29 + comm->rank(), 1.0f);
  for (size_t i = 0; i < values.size(); i += 3) values[i] *= 4096.0f;
  std::fill(values.begin() + static_cast<std::ptrdiff_t>(plan.total), values.end(), 0.0f);
  const std::vector<cuda::bf16> before = test::to_bf16(values);
  std::vector<uint16_t> before_bits(before.size());
  std::memcpy(before_bits.data(), before.data(), before_bits.size() * sizeof(uint16_t));
  std::vector<uint16_t> sums(plan.chunk);
  comm->reduce_scatter_sum_bf16(before_bits, sums);

  test::DeviceBuffer<cuda::bf16> grads(before);
  cudaStream_t stream = nullptr;  // non-blocking, as the model's
  EMIX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const auto groups = gradient_groups_in_backward_order(layout, model.n_layer);
  std::vector<ParamRange> reported;
  for (size_t g = 0; g + 1 < groups.size(); ++g) {
    collectives->reduce_bf16(grads.get(), plan, groups[g], stream);
    reported.insert(reported.end(), groups[g].begin(), groups[g].end());
  }
  collectives->reduce_bf16(grads.get(), plan, ranges_not_in(reported, plan.total), stream);
  collectives->finish_reductions();
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  EMIX_CUDA_CHECK(cudaStreamDestroy(stream));
  const std::vector<cuda::bf16> after = grads.download();
  std::vector<uint16_t> after_bits(after.size());
  std::memcpy(after_bits.data(), after.data(), after_bits.size() * sizeof(uint16_t));
  test::expect_only_own_chunk_summed(after_bits, before_bits, sums, plan);
}

// Several ranks on one GPU through MPI (the host-staged collectives): the
// two stages give the same bits, every rank ends with the same weights, a
// resume is bit-exact, and the run follows the single-GPU run (the bf16
// gradients are summed across ranks in another order, so to a tolerance).
TEST(CudaDistributed, RanksSharingOneGpuThroughMpiTrainAsOneGpu) {
  EMIX_REQUIRE_GPU();
  if (read_process_identity().world_size == 1) {
    GTEST_SKIP() << "needs several ranks: EMIX_COMM=mpi mpirun -np 2 test_cuda --gtest_filter='CudaDistributed.*'";
  }
  Communicator& comm = *launcher_communicator();
  ASSERT_EQ(comm.device_collectives(), nullptr) << "this test is for a host communicator (EMIX_COMM=mpi)";
  std::unique_ptr<test::TempDir> owned;
  const fs::path shared = shared_directory(comm, owned);
  test::TempDir mine;
  test::write_tiny_shards(mine.path());
  for (const std::string& optimizer : {std::string("ademamix"), std::string("mars")}) {
    Trainer single(Config::from_json(nccl_test_config(mine, optimizer, optimizer + "_single", 0)));
    ASSERT_TRUE(single.run());
    std::vector<std::vector<float>> stage_weights;
    for (int stage : {0, 1}) {
      SCOPED_TRACE(optimizer + ", zero_stage " + std::to_string(stage));
      Json config = nccl_test_config(mine, optimizer, "", stage);
      config["data"]["train_shards"] = (shared / "tiny_train_*.bin").string();
      config["data"]["val_shards"] = (shared / "tiny_val_*.bin").string();
      config["logging"]["run_dir"] = (shared / (optimizer + "_mpi" + std::to_string(stage))).string();
      Trainer ranks(Config::from_json(config), nullptr, &comm);
      ASSERT_TRUE(ranks.run());
      std::span<const float> weights = ranks.backend().weights();
      stage_weights.emplace_back(weights.begin(), weights.end());
      std::vector<float> leader = stage_weights.back();
      comm.broadcast(leader, 0);
      EXPECT_TRUE(test::same_bits(stage_weights.back(), leader)) << "rank " << comm.rank() << " differs from rank 0";
      ASSERT_EQ(ranks.history().size(), single.history().size());
      for (size_t i = 0; i < single.history().size(); ++i) {
        EXPECT_NEAR(ranks.history()[i].loss, single.history()[i].loss, 0.02 * single.history()[i].loss) << "step " << i + 1;
      }
      double largest = 0.0;
      std::span<const float> reference = single.backend().weights();
      for (size_t i = 0; i < reference.size(); ++i) {
        largest = std::max(largest, std::fabs(static_cast<double>(stage_weights.back()[i]) - reference[i]));
      }
      std::printf("[rank %d] %s stage %d on %d ranks against one GPU: largest |Δweight| %.3g, last loss %.6f vs %.6f\n",
                  comm.rank(), optimizer.c_str(), stage, comm.world_size(), largest, ranks.history().back().loss,
                  single.history().back().loss);

      config["logging"]["run_dir"] = (shared / (optimizer + "_mpi_resumed" + std::to_string(stage))).string();
      const test::ResumedRun resumed = test::run_stopped_and_resumed(Config::from_json(config), /*stop_at_step=*/5, &comm);
      EXPECT_TRUE(test::same_bits(resumed.trainer->backend().weights(), stage_weights.back()));
    }
    EXPECT_TRUE(test::same_bits(stage_weights[0], stage_weights[1])) << "stages 0 and 1 differ";
  }
  comm.barrier();
}

}  // namespace
}  // namespace emix
