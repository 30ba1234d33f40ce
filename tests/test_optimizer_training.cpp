// Every optimizer, and AdEMAMix with each m2 storage, trains the tiny test
// model about as well as AdamW: 40 steps at each one's default
// hyperparameters but lr 1e-2 (warmup and cosine decay), final training loss
// within 25 % of AdamW's and well below the start. A generous bound: it
// catches an update that is wrong (diverges, stalls, or learns much more
// slowly), not small differences between optimizers. Measured losses are
// printed.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>

#include "config/config.hpp"
#include "test_support.hpp"
#include "train/trainer.hpp"

namespace emix {
namespace {

float final_loss(const test::TempDir& dir, const test::OptimizerVariant& v, float* first_loss) {
  Json json = test::tiny_run_config(dir, v.name, v.label, v.overrides);
  json["training"]["steps"] = 40;
  json["optimizer"]["lr"] = 1e-2;
  json["checkpoint"]["interval"] = 0;
  Trainer trainer(Config::from_json(json));
  EXPECT_TRUE(trainer.run());
  *first_loss = trainer.history().front().loss;
  return trainer.history().back().loss;
}

TEST(OptimizerTraining, EveryOptimizerTrainsAboutAsWellAsAdamw) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  std::map<std::string, float> losses;
  float first = 0.0f;
  for (const test::OptimizerVariant& v : test::optimizer_variants()) losses[v.label] = final_loss(dir, v, &first);
  const float adamw = losses.at("adamw");
  for (const auto& [label, loss] : losses) {
    std::printf("[  MEASURE ] %-22s loss %.4f after 40 steps (start %.4f)\n", label.c_str(), loss, first);
    EXPECT_LT(loss, 1.25f * adamw) << label;
    EXPECT_LT(loss, 0.8f * first) << label;
  }
}

}  // namespace
}  // namespace emix
