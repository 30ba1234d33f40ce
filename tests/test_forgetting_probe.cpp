// The forgetting probe (training.forgetting_probe_step, the paper's Fig. 4):
// the probe step trains on the held-out batch instead of its own, and that
// batch's loss is logged just before and every interval steps after.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/file_io.hpp"
#include "test_support.hpp"
#include "train/trainer.hpp"

namespace emix {
namespace {

constexpr int kProbeStep = 5;

Json probe_config(const test::TempDir& dir, const std::string& run, int probe_step) {
  Json config = test::tiny_run_config(dir, "ademamix", run);
  config["training"]["forgetting_probe_step"] = probe_step;
  config["training"]["forgetting_probe_interval"] = 2;
  return config;
}

// step → probe loss, from the run's metrics.jsonl.
std::map<int64_t, double> probe_losses(const Config& config) {
  std::map<int64_t, double> losses;
  std::istringstream lines(read_text_file(config.run_dir() / "metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    Json record = Json::parse(line);
    if (record.contains("probe_loss")) losses[record.at("step").get<int64_t>()] = record.at("probe_loss").get<double>();
  }
  return losses;
}

TEST(ForgettingProbe, InjectsTheBatchOnceAndLogsItsLoss) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  const Config probed = Config::from_json(probe_config(dir, "probed", kProbeStep));
  const Config plain = Config::from_json(probe_config(dir, "plain", 0));
  Trainer with_probe(probed);
  ASSERT_TRUE(with_probe.run());
  Trainer without(plain);
  ASSERT_TRUE(without.run());

  const auto losses = probe_losses(probed);
  std::vector<int64_t> steps;
  for (const auto& [step, loss] : losses) steps.push_back(step);
  EXPECT_EQ(steps, (std::vector<int64_t>{4, 5, 7, 9, 11, 13}));
  EXPECT_LT(losses.at(5), losses.at(4)) << "training on the probe batch must lower its loss";
  EXPECT_TRUE(probe_losses(plain).empty());

  // scripts/plot --probe draws the curve, and says so when a run has none.
  const std::filesystem::path png = dir.path() / "probe.png";
  const std::string plot = (test::source_dir() / "scripts" / "plot").string() + " --probe ";
  EXPECT_EQ(std::system((plot + probed.run_dir().string() + " -o " + png.string() + " >/dev/null 2>&1").c_str()), 0);
  EXPECT_GT(std::filesystem::exists(png) ? std::filesystem::file_size(png) : 0, 10000u);
  EXPECT_NE(std::system((plot + plain.run_dir().string() + " -o " + png.string() + " >/dev/null 2>&1").c_str()), 0);

  // The same run up to the probe step, another one from it on.
  for (int s = 0; s < kProbeStep - 1; ++s) EXPECT_EQ(with_probe.history()[s].loss, without.history()[s].loss) << "step " << s + 1;
  EXPECT_NE(with_probe.history()[kProbeStep - 1].loss, without.history()[kProbeStep - 1].loss);
}

// The control run measures the same batch at the same steps without training
// on it: it is the run without the probe, plus the measurements.
TEST(ForgettingProbe, TheControlRunNeverTrainsOnTheBatch) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Json control_config = probe_config(dir, "control", kProbeStep);
  control_config["training"]["forgetting_probe_inject"] = false;
  const Config control = Config::from_json(control_config);
  Trainer with_control(control);
  ASSERT_TRUE(with_control.run());
  Trainer without(Config::from_json(probe_config(dir, "plain", 0)));
  ASSERT_TRUE(without.run());
  EXPECT_EQ(probe_losses(control).size(), 6u);
  std::span<const float> a = with_control.backend().weights();
  std::span<const float> b = without.backend().weights();
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
}

TEST(ForgettingProbe, AProbeStepPastTheRunIsAnError) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  EXPECT_THROW(Trainer(Config::from_json(probe_config(dir, "late", 14))), Error);
  Json bad = probe_config(dir, "bad", 3);
  bad["training"]["forgetting_probe_interval"] = 0;
  EXPECT_THROW(Config::from_json(bad), Error);
}

}  // namespace
}  // namespace emix
