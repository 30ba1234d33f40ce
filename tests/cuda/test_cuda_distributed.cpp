// The NCCL communicator and the GPU's data-parallel path on one GPU: the
// gradients' rank-order sum kernel against its host definition, and
// training through NCCL with one rank (EMIX_COMM=nccl: every collective of
// stages 0 and 1 runs, as a copy) against the plain single-GPU run, bit for
// bit. Several GPU ranks need several GPUs (NCCL refuses two ranks on one).
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_test_support.hpp"
#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/process_identity.hpp"
#include "kernels/cuda/sum_chunks.cuh"
#include "test_support.hpp"
#include "train/trainer.hpp"

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

}  // namespace
}  // namespace emix
