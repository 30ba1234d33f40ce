// Exact resume: for every registered optimizer, N straight steps and
// k steps + checkpoint + resume + N−k steps give bit-identical parameters
// and losses, across epoch boundaries and with gradient accumulation.
#include <gtest/gtest.h>

#include <cstring>

#include "checkpoint/checkpoint.hpp"
#include "core/error.hpp"
#include "optim/optimizer.hpp"
#include "test_support.hpp"
#include "core/file_io.hpp"
#include "train/metrics.hpp"
#include "train/trainer.hpp"

namespace emix {
namespace {

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

TEST(Resume, IsBitExactForEveryOptimizer) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  for (const test::OptimizerVariant& v : test::optimizer_variants()) {
    SCOPED_TRACE(v.label);
    Config config = Config::from_json(test::tiny_run_config(dir, v.name, v.label + "_straight", v.overrides));
    Trainer straight(config);
    ASSERT_TRUE(straight.run());

    const test::ResumedRun resumed = test::run_stopped_and_resumed(
        Config::from_json(test::tiny_run_config(dir, v.name, v.label + "_resumed", v.overrides)), /*stop_at_step=*/7);
    const std::vector<StepRecord>& records = resumed.history;

    ASSERT_EQ(records.size(), straight.history().size());
    for (size_t i = 0; i < records.size(); ++i) {
      EXPECT_EQ(records[i].step, straight.history()[i].step);
      EXPECT_EQ(std::memcmp(&records[i].loss, &straight.history()[i].loss, sizeof(float)), 0) << "step " << i + 1;
      EXPECT_EQ(records[i].grad_norm, straight.history()[i].grad_norm) << "step " << i + 1;
    }
    EXPECT_TRUE(bitwise_equal(resumed.trainer->backend().weights(), straight.backend().weights()));
    EXPECT_LT(straight.history().back().loss, straight.history().front().loss);
  }
}

// On resume from step 2 the metrics file keeps the records up to step 2 and
// drops the rest: later steps, a line torn by a crash, and records whose
// step is not an integer (no cast of 1e300 to an integer).
TEST(Resume, MetricsPastTheCheckpointAndOddLinesAreDropped) {
  test::TempDir dir;
  const std::filesystem::path path = dir / "metrics.jsonl";
  write_text_file_atomic(path, "{\"step\":1,\"loss\":5}\n{\"step\":2,\"loss\":4}\n{\"step\":3,\"loss\":3}\n"
                               "{\"step\":1e300}\n{\"step\":\"2\"}\n[2]\n{\"step\":4,\"lo");
  {
    MetricsLog metrics(path, 2);
    metrics.write(Json{{"step", 3}, {"loss", 2.5}});
  }
  EXPECT_EQ(read_text_file(path), "{\"step\":1,\"loss\":5}\n{\"step\":2,\"loss\":4}\n{\"loss\":2.5,\"step\":3}\n");
}

TEST(Resume, RefusesACheckpointOfAnotherShapeOrOptimizer) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Config config = Config::from_json(test::tiny_run_config(dir, "adamw", "run"));
  Trainer(config).run(2);
  auto checkpoint = open_latest_checkpoint(config.checkpoint_dir());
  ASSERT_TRUE(checkpoint.has_value());

  Json other_shape = test::tiny_run_config(dir, "adamw", "run");
  other_shape["model"]["n_embd"] = 32;
  try {
    Trainer trainer(Config::from_json(other_shape), &*checkpoint);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_embd"), std::string::npos) << e.what();
  }
  try {
    Trainer trainer(Config::from_json(test::tiny_run_config(dir, "ademamix", "run")), &*checkpoint);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'adamw'"), std::string::npos) << e.what();
  }
}

TEST(Resume, CheckpointsAreWrittenAtIntervalsAndPruned) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "ademamix", "run");
  json["checkpoint"]["interval"] = 3;
  Config config = Config::from_json(json);
  Trainer(config).run();
  auto kept = list_checkpoints(config.checkpoint_dir());
  ASSERT_EQ(kept.size(), 2u);  // keep_last = 2 of steps 3, 6, 9, 12, 13
  EXPECT_EQ(kept[0].filename(), "step_00000012");
  EXPECT_EQ(kept[1].filename(), "step_00000013");
  EXPECT_TRUE(std::filesystem::exists(config.run_dir() / "metrics.jsonl"));
  EXPECT_TRUE(std::filesystem::exists(config.run_dir() / "config.json"));
}

}  // namespace
}  // namespace emix
