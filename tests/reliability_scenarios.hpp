#pragma once
// The trainer's fault scenarios, written once and run on every backend: the
// CPU suite (tests/test_reliability.cpp) and the GPU suite
// (tests/cuda/test_cuda_reliability.cpp) call each with their device. A
// scenario edits weights through ModelBackend::weights() and then calls
// weights_changed(), which a GPU needs to take them (the CPU's weights()
// is the live buffer already).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.hpp"
#include "core/error.hpp"
#include "test_support.hpp"
#include "train/signals.hpp"
#include "train/trainer.hpp"

namespace emix::test {

inline Json scenario_config(const TempDir& dir, const std::string& optimizer, const std::string& device) {
  write_tiny_shards(dir.path());
  Json json = tiny_run_config(dir, optimizer, "run");
  json["device"] = device;
  return json;
}

// 40 steps, a step an outlier when its loss or gradient norm is 6 standard
// deviations off the last 20.
inline Json outlier_config(const TempDir& dir, const std::string& device) {
  Json json = scenario_config(dir, "adamw", device);
  json["training"]["steps"] = 40;
  json["training"]["outlier_zscore"] = 6.0;
  json["training"]["outlier_window"] = 20;
  return json;
}

// Multiplies every element of the named tensor by `factor`, in `weights`.
inline void scale_tensor(Trainer& trainer, std::span<float> weights, const std::string& name, float factor) {
  const TensorInfo& tensor = trainer.backend().layout().find(name);
  for (size_t i = tensor.offset; i < tensor.offset + tensor.count; ++i) weights[i] *= factor;
}

// Replaces the weights with `values` (the number of updates they have had:
// the trainer's step).
inline void restore_weights(Trainer& trainer, const std::vector<float>& values) {
  std::span<float> weights = trainer.backend().weights();
  std::copy(values.begin(), values.end(), weights.begin());
  trainer.backend().weights_changed(trainer.step());
}

// A NaN in one parameter makes the loss and every gradient non-finite (the
// output head is tied to wte) for two steps, then it is repaired: both steps
// are skipped and training goes on. Had the bad gradients reached the
// optimizer, its state (and so every later update) would be NaN.
inline void check_non_finite_steps_are_skipped(const std::string& device) {
  TempDir dir;
  Trainer trainer(Config::from_json(scenario_config(dir, "ademamix", device)));
  std::span<float> weights = trainer.backend().weights();
  const std::vector<float> original(weights.begin(), weights.end());
  weights[trainer.backend().layout().find("wte").offset + 7] = NAN;
  trainer.backend().weights_changed(0);
  trainer.run(2);
  restore_weights(trainer, original);
  ASSERT_TRUE(trainer.run());
  const auto& history = trainer.history();
  ASSERT_EQ(history.size(), 13u);
  for (size_t i = 0; i < history.size(); ++i) EXPECT_EQ(history[i].skipped, i < 2) << "step " << i + 1;
  for (float p : trainer.backend().weights()) ASSERT_TRUE(std::isfinite(p));
  EXPECT_LT(history.back().loss, history[2].loss);
}

// The output head blown up for one step: a finite but huge loss spike,
// skipped as an outlier of the running window.
inline void check_loss_spikes_are_skipped(const std::string& device) {
  TempDir dir;
  Trainer trainer(Config::from_json(outlier_config(dir, device)));
  trainer.run(30);
  std::span<float> weights = trainer.backend().weights();
  const std::vector<float> saved(weights.begin(), weights.end());
  scale_tensor(trainer, weights, "wte", 40.0f);
  trainer.backend().weights_changed(trainer.step());
  trainer.run(31);
  restore_weights(trainer, saved);
  ASSERT_TRUE(trainer.run());
  const auto& history = trainer.history();
  for (size_t i = 0; i < history.size(); ++i) EXPECT_EQ(history[i].skipped, i == 30) << "step " << i + 1;
  EXPECT_TRUE(std::isfinite(history[30].loss));
}

// The gradient norm alone spikes: layer norm 1's gain and bias are scaled by
// 2^-16 and the QKV weights that read its output by 2^16 in every block.
// The function the model computes is unchanged (power-of-two scaling is
// exact, in bf16 as in fp32), so the loss is exactly what it would have
// been, but the gain's gradient is 65536 times larger.
inline void check_gradient_norm_spikes_are_skipped(const std::string& device) {
  TempDir dir;
  Trainer trainer(Config::from_json(outlier_config(dir, device)));
  trainer.run(30);
  const float val_loss = trainer.evaluate();
  std::span<float> weights = trainer.backend().weights();
  const std::vector<float> saved(weights.begin(), weights.end());
  scale_tensor(trainer, weights, "ln1w", 0x1p-16f);
  scale_tensor(trainer, weights, "ln1b", 0x1p-16f);
  scale_tensor(trainer, weights, "qkvw", 0x1p16f);
  trainer.backend().weights_changed(trainer.step());
  ASSERT_EQ(trainer.evaluate(), val_loss);  // the same function
  trainer.run(31);
  restore_weights(trainer, saved);
  ASSERT_TRUE(trainer.run());
  const auto& history = trainer.history();
  for (size_t i = 0; i < history.size(); ++i) EXPECT_EQ(history[i].skipped, i == 30) << "step " << i + 1;
  float highest_loss = 0.0f;
  double highest_norm = 0.0;
  for (size_t i = 10; i < 30; ++i) {
    highest_loss = std::max(highest_loss, history[i].loss);
    highest_norm = std::max(highest_norm, history[i].grad_norm);
  }
  EXPECT_LE(history[30].loss, highest_loss);              // a normal loss...
  EXPECT_GT(history[30].grad_norm, 10.0 * highest_norm);  // ...and a gradient norm spike
}

// Every step non-finite: the run stops after max_consecutive_skips of them,
// with a checkpoint of where it stopped.
inline void check_consecutive_skips_stop_after_a_checkpoint(const std::string& device) {
  TempDir dir;
  Json json = scenario_config(dir, "adamw", device);
  json["training"]["max_consecutive_skips"] = 3;
  Config config = Config::from_json(json);
  Trainer trainer(config);
  for (float& p : trainer.backend().weights()) p = NAN;
  trainer.backend().weights_changed(0);
  try {
    trainer.run();
    FAIL() << "expected the run to stop";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 consecutive steps"), std::string::npos) << e.what();
  }
  EXPECT_EQ(trainer.step(), 3);
  auto latest = open_latest_checkpoint(config.checkpoint_dir());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), 3);
}

// Files may not grow past 16 KiB after a good checkpoint at step 2: the
// ~95 KB checkpoint data file fails to write, as on a full disk (EFBIG
// instead of ENOSPC). The save at step 3 fails and is survived, the one at
// step 4 fails the run; the checkpoint of step 2 is kept and no temporary
// file is left.
inline void check_a_failed_save_keeps_the_previous_checkpoint(const std::string& device) {
  TempDir dir;
  Json json = scenario_config(dir, "ademamix", device);
  json["checkpoint"]["interval"] = 3;
  Config config = Config::from_json(json);
  Trainer trainer(config);
  trainer.run(2);

  std::signal(SIGXFSZ, SIG_IGN);
  rlimit saved{};
  getrlimit(RLIMIT_FSIZE, &saved);
  rlimit limit = saved;
  limit.rlim_cur = 16 * 1024;
  setrlimit(RLIMIT_FSIZE, &limit);
  std::string message;
  try {
    trainer.run(4);
  } catch (const Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);

  EXPECT_NE(message.find("rank_00000.bin"), std::string::npos) << message;
  EXPECT_EQ(trainer.step(), 4);
  auto kept = list_checkpoints(config.checkpoint_dir());
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(Checkpoint::open(kept[0]).step(), 2);
  for (const auto& entry : std::filesystem::directory_iterator(config.checkpoint_dir())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  }
}

// A stop request (what SIGTERM, SIGUSR1 or SIGINT make), here pending when
// run() starts: no step is started, a checkpoint of the last completed one is
// saved, and run() returns "not finished".
inline void check_a_stop_request_saves_and_returns(const std::string& device) {
  TempDir dir;
  Config config = Config::from_json(scenario_config(dir, "ademamix", device));
  Trainer trainer(config);
  trainer.run(3);
  request_stop();
  const bool finished = trainer.run();
  clear_stop_request();
  EXPECT_FALSE(finished);
  EXPECT_EQ(trainer.step(), 3);
  auto latest = open_latest_checkpoint(config.checkpoint_dir());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), 3);
}

}  // namespace emix::test
