// The trainer under faults: non-finite steps are skipped (and too many in a
// row stop the run after a checkpoint), loss and gradient-norm outliers are
// skipped, the wall-clock limit stops cleanly, a failed save (a file size
// limit, a real full disk, a checkpoint that does not verify) keeps the
// previous checkpoint, a full disk under the metrics file and a token id
// outside the vocabulary stop the run with a checkpoint of the last completed
// step, milestones survive pruning.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <map>
#include <regex>
#include <sstream>

#include "checkpoint/checkpoint.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "data/shard.hpp"
#include "optim/optimizer.hpp"
#include "reliability_scenarios.hpp"
#include "test_support.hpp"
#include "train/signals.hpp"
#include "train/trainer.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;

// The first stop signal only asks for a graceful stop (the process lives
// on); a second one, of the same or another of the three kinds, kills it
// the default way, for when the graceful save hangs. Real signals, raised in
// a forked child.
TEST(Reliability, ASecondStopSignalKillsAtOnce) {
  const std::pair<int, int> pairs[] = {{SIGTERM, SIGTERM}, {SIGUSR1, SIGINT}, {SIGINT, SIGTERM}};
  for (const auto& [first, second] : pairs) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      install_stop_signal_handlers();
      ::raise(first);
      if (stop_signal() != first) ::_exit(3);  // the first must be caught and recorded
      ::raise(second);
      ::_exit(4);  // the second must not return
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "signals " << first << ", " << second << ": exit status " << WEXITSTATUS(status);
    EXPECT_EQ(WTERMSIG(status), second);
  }
}

// The trainer's fault scenarios shared with the GPU suite
// (tests/reliability_scenarios.hpp, tests/cuda/test_cuda_reliability.cpp).
TEST(Reliability, NonFiniteStepsAreSkippedAndTrainingGoesOn) { test::check_non_finite_steps_are_skipped("cpu"); }
TEST(Reliability, LossSpikesAreSkippedAsOutliers) { test::check_loss_spikes_are_skipped("cpu"); }
TEST(Reliability, GradientNormSpikesAreSkippedAsOutliersWhenTheLossIsNormal) {
  test::check_gradient_norm_spikes_are_skipped("cpu");
}
TEST(Reliability, TooManyConsecutiveSkipsStopAfterACheckpoint) {
  test::check_consecutive_skips_stop_after_a_checkpoint("cpu");
}
TEST(Reliability, AFailedSaveKeepsThePreviousCheckpoint) { test::check_a_failed_save_keeps_the_previous_checkpoint("cpu"); }
TEST(Reliability, AStopRequestSavesTheLastCompletedStep) { test::check_a_stop_request_saves_and_returns("cpu"); }

TEST(Reliability, TheWallClockLimitStopsWithACheckpoint) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "adamw", "run");
  json["training"]["steps"] = 10000000;
  json["training"]["time_limit_minutes"] = 0.02;  // 1.2 s
  Config config = Config::from_json(json);
  Trainer trainer(config);
  EXPECT_FALSE(trainer.run());
  EXPECT_GT(trainer.step(), 0);
  auto latest = open_latest_checkpoint(config.checkpoint_dir());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), trainer.step());
}

TEST(Reliability, MilestonesSurvivePruning) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "adamw", "run");
  json["checkpoint"] = {{"interval", 2}, {"keep_last", 1}, {"milestone_interval", 5}};
  json["training"]["steps"] = 11;
  Config config = Config::from_json(json);
  Trainer(config).run();
  std::vector<std::string> names;
  for (const auto& path : list_checkpoints(config.checkpoint_dir())) names.push_back(path.filename().string());
  // Saved at 2, 4, 6, 8, 10 and 11; milestones are multiples of 5 among them.
  EXPECT_EQ(names, (std::vector<std::string>{"step_00000010", "step_00000011"}));
}

std::string quote(const fs::path& path) { return test::shell_quote(path.string()); }

// Writes `json` to `path`; returns `--config PATH` for emix train.
std::string config_option(const fs::path& path, const Json& json) {
  write_text_file_atomic(path, json.dump(2));
  return "--config " + quote(path);
}

// `--set logging.run_dir=DIR` for emix train.
std::string run_dir_option(const fs::path& dir) { return " --set " + test::shell_quote("logging.run_dir=" + dir.string()); }

// The files of one checkpoint of the run `json` describes, written under
// `scratch`, and their sizes in bytes.
std::map<std::string, uint64_t> checkpoint_file_sizes(Json json, const fs::path& scratch) {
  json["logging"]["run_dir"] = scratch.string();
  json["checkpoint"]["dir"] = "";
  Trainer trainer(Config::from_json(json));
  std::map<std::string, uint64_t> sizes;
  for (const auto& entry : fs::directory_iterator(trainer.save_checkpoint())) {
    sizes[entry.path().filename().string()] = entry.file_size();
  }
  return sizes;
}

uint64_t checkpoint_bytes(const Json& json, const fs::path& scratch) {
  uint64_t bytes = 0;
  for (const auto& [name, size] : checkpoint_file_sizes(json, scratch)) bytes += size;
  return bytes;
}

// The 4 KiB pages a tmpfs gives a file of `bytes` bytes.
uint64_t pages(uint64_t bytes) { return (bytes + 4095) / 4096; }

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void expect_no_partial_checkpoint(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) EXPECT_FALSE(entry.path().string().ends_with(".tmp")) << entry.path();
}

// The run directory on a real disk (a tmpfs) with room for one checkpoint
// and the logs but not for a second checkpoint: every save after the first
// runs out of space. Periodic ones are survived, the final one fails the
// run; the first checkpoint stays whole and resumes elsewhere.
TEST(Reliability, AFullDiskFailsTheSavesButKeepsTheLastCheckpoint) {
  test::TempDir dir;
  const fs::path disk = dir / "disk";
  if (std::string why = test::why_no_private_tmpfs(disk); !why.empty()) GTEST_SKIP() << why;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "adamw", "disk/run");
  json["training"]["steps"] = 8;
  json["checkpoint"] = {{"interval", 2}, {"keep_last", 1}};
  const uint64_t disk_kib = (checkpoint_bytes(json, dir / "sizing") + 4095) / 4096 * 4 + 64;
  const std::string train = test::emix_command("train " + config_option(dir / "run.json", json));
  const fs::path saved = dir / "saved";
  test::ShellResult run = test::run_on_small_disk(disk, disk_kib, train, disk / "run", saved);

  EXPECT_EQ(run.exit_code, 1) << run.output;
  // The free-space check warns before the saves that cannot fit.
  EXPECT_TRUE(contains(run.output, "bytes free, a checkpoint needs about")) << run.output;
  EXPECT_TRUE(contains(run.output, "checkpoint at step 4 failed, the previous ones are kept")) << run.output;
  EXPECT_TRUE(contains(run.output, "step_00000008.tmp/rank_00000.bin: write failed after")) << run.output;
  EXPECT_TRUE(contains(run.output, "No space left on device")) << run.output;
  const fs::path checkpoints = saved / "checkpoints";
  auto kept = list_checkpoints(checkpoints);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(Checkpoint::open(kept[0]).step(), 2);
  expect_no_partial_checkpoint(checkpoints);

  test::ShellResult resumed = test::run_shell(train + run_dir_option(saved) + " --resume latest");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "restored " + kept[0].string() + " (step 2)")) << resumed.output;
  auto latest = open_latest_checkpoint(checkpoints);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), 8);
}

// The checkpoint directory on a disk with room for the first checkpoint and
// the second one's data file, but not for its manifest.json: the commit
// fails cleanly (no partial checkpoint, the first one kept) and the run
// resumes from the first.
TEST(Reliability, AFullDiskWhileCommittingAManifestKeepsThePreviousCheckpoint) {
  test::TempDir dir;
  const fs::path disk = dir / "disk";
  if (std::string why = test::why_no_private_tmpfs(disk); !why.empty()) GTEST_SKIP() << why;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "adamw", "run");
  json["training"]["steps"] = 4;
  json["checkpoint"] = {{"dir", (disk / "checkpoints").string()}, {"interval", 2}, {"keep_last", 1}};
  const auto sizes = checkpoint_file_sizes(json, dir / "sizing");
  ASSERT_EQ(sizes.size(), 2u) << "rank_00000.bin and manifest.json";
  const uint64_t kib = 4 * (2 * pages(sizes.at("rank_00000.bin")) + pages(sizes.at("manifest.json")));
  const std::string train = test::emix_command("train " + config_option(dir / "run.json", json));
  const fs::path saved = dir / "saved";
  test::ShellResult run = test::run_on_small_disk(disk, kib, train, disk / "checkpoints", saved);

  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_TRUE(contains(run.output, "step_00000004.tmp/manifest.json")) << run.output;
  EXPECT_TRUE(contains(run.output, "No space left on device")) << run.output;
  auto kept = list_checkpoints(saved);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(Checkpoint::open(kept[0]).step(), 2);
  expect_no_partial_checkpoint(saved);

  test::ShellResult resumed = test::run_shell(train + " --set " + test::shell_quote("checkpoint.dir=" + saved.string()) +
                                              " --resume latest");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(open_latest_checkpoint(saved)->step(), 4);
}

// The run directory on a disk that is already full: the run stops before
// its first step with an error naming config.json (the first file it must
// write whole), and leaves no temporary file behind.
TEST(Reliability, AFullDiskAtStartStopsBeforeTheFirstStep) {
  test::TempDir dir;
  const fs::path disk = dir / "disk";
  if (std::string why = test::why_no_private_tmpfs(disk); !why.empty()) GTEST_SKIP() << why;
  test::write_tiny_shards(dir.path());
  const Json json = test::tiny_run_config(dir, "adamw", "disk/run");
  const std::string fill = "dd if=/dev/zero of=" + quote(disk / "filler") + " bs=4k count=64 2>/dev/null; ";
  const std::string train = test::emix_command("train " + config_option(dir / "run.json", json));
  const fs::path saved = dir / "saved";
  test::ShellResult run = test::run_on_small_disk(disk, 64, fill + train, disk / "run", saved);

  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_TRUE(contains(run.output, "run/config.json.tmp: write failed after 0 bytes: No space left on device")) << run.output;
  EXPECT_FALSE(fs::exists(saved / "metrics.jsonl")) << "no step was trained";
  EXPECT_FALSE(fs::exists(saved / "config.json.tmp"));
  EXPECT_FALSE(fs::exists(saved / "checkpoints"));
}

// The run directory on a tiny tmpfs that fills up while metrics.jsonl grows
// (checkpoints go to a disk with room): the run stops at the step whose
// record could not be written, with a checkpoint of that step, and resumes.
TEST(Reliability, AFullDiskUnderTheMetricsFileStopsWithACheckpoint) {
  test::TempDir dir;
  const fs::path disk = dir / "disk";
  if (std::string why = test::why_no_private_tmpfs(disk); !why.empty()) GTEST_SKIP() << why;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "adamw", "disk/run");
  const int64_t steps = 60;
  json["training"]["steps"] = steps;
  json["checkpoint"] = {{"dir", (dir / "checkpoints").string()}, {"keep_last", 1}};
  const std::string train = test::emix_command("train " + config_option(dir / "run.json", json));
  const fs::path saved = dir / "saved";
  test::ShellResult run = test::run_on_small_disk(disk, 16, train, disk / "run", saved);

  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_TRUE(contains(run.output, "metrics.jsonl: write failed after")) << run.output;
  EXPECT_TRUE(contains(run.output, "No space left on device")) << run.output;
  std::smatch stop;
  ASSERT_TRUE(std::regex_search(run.output, stop, std::regex("stopping after step (\\d+): "))) << run.output;
  const int64_t stopped_at = std::stoll(stop[1]);
  EXPECT_LT(stopped_at, steps);
  auto latest = open_latest_checkpoint(dir / "checkpoints");
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), stopped_at);
  EXPECT_TRUE(contains(run.output, latest->path().string() + " holds step " + std::to_string(stopped_at))) << run.output;

  test::ShellResult resumed = test::run_shell(train + run_dir_option(saved) + " --resume latest");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "(step " + std::to_string(stopped_at) + ")")) << resumed.output;
  // A line the full disk cut short is gone; the resumed run's records follow.
  std::istringstream lines(read_text_file(saved / "metrics.jsonl"));
  int64_t last_step = 0;
  for (std::string line; std::getline(lines, line);) {
    Json record = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(record.is_discarded()) << line;
    last_step = record.at("step").get<int64_t>();
  }
  EXPECT_EQ(last_step, steps);
}

// A token id outside the vocabulary deep in a shard: the step that would
// read it stops the run before using any of its batch, with a checkpoint of
// the step before; once the data is fixed, the run resumes from there and
// ends exactly where a run on the fixed data from the start ends.
TEST(Reliability, AnOutOfVocabularyIdMidRunStopsWithACheckpointOfTheLastGoodStep) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());  // for the validation shard
  // 40 windows of 8 tokens, read in file order, 4 per step: token 179 is
  // in window 22 only, which step 6 reads.
  std::vector<uint16_t> tokens(8 * 40 + 1);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 3 + i / 7) % test::kTinyVocab);
  const size_t bad = 179;
  const uint16_t good_id = tokens[bad];
  tokens[bad] = test::kTinyVocab;
  const fs::path shard = dir / "oov_train.bin";
  write_shard(shard, tokens);
  Json json = test::tiny_run_config(dir, "adamw", "run");
  json["data"]["train_shards"] = shard.string();
  json["data"]["shuffle"] = false;
  json["training"]["steps"] = 10;
  json["checkpoint"]["interval"] = 2;
  const std::string train = test::emix_command("train " + config_option(dir / "run.json", json));

  test::ShellResult run = test::run_shell(train);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  const std::string vocab = std::to_string(test::kTinyVocab);
  const std::string where = shard.string() + ": token id " + vocab + " at token " + std::to_string(bad) + " (byte offset " +
                            std::to_string(kShardHeaderBytes + 2 * bad) + ") is not below the vocabulary size " + vocab;
  EXPECT_TRUE(contains(run.output, "stopping after step 5: " + where)) << run.output;
  EXPECT_TRUE(contains(run.output, "resume with --resume latest")) << run.output;
  const fs::path checkpoints = dir / "run" / "checkpoints";
  auto latest = open_latest_checkpoint(checkpoints);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), 5);

  tokens[bad] = good_id;  // the user fixes the data
  write_shard(shard, tokens);
  test::ShellResult resumed = test::run_shell(train + " --resume latest");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "(step 5)")) << resumed.output;
  test::ShellResult straight = test::run_shell(train + run_dir_option(dir / "straight"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  auto read_params = [](const fs::path& checkpoints_dir) {
    auto checkpoint = open_latest_checkpoint(checkpoints_dir);
    EXPECT_TRUE(checkpoint.has_value() && checkpoint->step() == 10) << checkpoints_dir;
    std::vector<float> params(checkpoint ? checkpoint->tensor_count("params") : 0);
    if (checkpoint) checkpoint->read_tensor("params", params);
    return params;
  };
  EXPECT_EQ(read_params(checkpoints), read_params(dir / "straight" / "checkpoints"));
}

// `emix tokenize` writing its shards to a 16 KiB disk: 60 kB of text is
// about 15,000 tokens (30 kB), which cannot fit. The error names the file
// and the reason, and the disk holds no temporary file and no shard that
// does not read back whole (here: no file at all, as the training shard is
// the first written).
TEST(Reliability, TokenizingOntoAFullDiskLeavesOnlyWholeShards) {
  test::TempDir dir;
  const fs::path disk = dir / "disk";
  if (std::string why = test::why_no_private_tmpfs(disk); !why.empty()) GTEST_SKIP() << why;
  const fs::path text = dir / "shakespeare.txt";
  write_text_file_atomic(text, read_text_file(test::golden_dir() / ".." / "data" / "tinyshakespeare.txt").substr(0, 60000));
  const std::string tokenize = test::emix_command("tokenize --input " + quote(text) + " --output-dir " + quote(disk / "run") +
                                    " --name tiny --val-tokens 2048 --tokenizer-dir " + quote(test::tokenizer_dir()));
  test::ShellResult run = test::run_on_small_disk(disk, 16, tokenize, disk / "run", dir / "saved");

  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_TRUE(contains(run.output, "tiny_train_000000.bin")) << run.output;
  EXPECT_TRUE(contains(run.output, "No space left on device")) << run.output;
  for (const auto& entry : fs::directory_iterator(dir / "saved")) {
    ASSERT_EQ(entry.path().extension(), ".bin") << entry.path();
    EXPECT_EQ(read_shard_tokens(entry.path()).size(), read_shard_token_count(entry.path())) << entry.path();
  }
}

// A save whose files are written but whose read-back does not verify (one
// byte flipped in between by EMIX_FAULT_CORRUPT_SAVE_AT_STEP, as a faulty
// disk would): the run fails naming the file, the corrupt checkpoint never
// appears, and the older one (keep_last 1) is neither pruned nor passed
// over by --resume latest.
TEST(Reliability, ACheckpointThatFailsVerificationNeverReplacesTheOlderOne) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Json json = test::tiny_run_config(dir, "adamw", "run");
  json["training"]["steps"] = 7;
  json["checkpoint"] = {{"interval", 3}, {"keep_last", 1}};
  const std::string train = test::emix_command("train " + config_option(dir / "run.json", json));

  test::ShellResult run = test::run_shell("EMIX_FAULT_CORRUPT_SAVE_AT_STEP=7 " + train);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_TRUE(contains(run.output, "checkpoint of step 7 discarded: it did not verify when read back after writing")) << run.output;
  EXPECT_TRUE(contains(run.output, "step_00000007.tmp/rank_00000.bin: checksum mismatch in section")) << run.output;
  const fs::path checkpoints = dir / "run" / "checkpoints";
  auto kept = list_checkpoints(checkpoints);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].filename(), "step_00000006");
  expect_no_partial_checkpoint(checkpoints);

  test::ShellResult resumed = test::run_shell(train + " --resume latest");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "restored " + kept[0].string() + " (step 6)")) << resumed.output;
  auto latest = open_latest_checkpoint(checkpoints);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), 7);
}

}  // namespace
}  // namespace emix

namespace emix {
namespace {

// AdEMAMix on one element that gets a gradient for 10 steps, then exactly
// zero for 20,000 (an embedding row of a token that stops appearing). The
// largest per-step update after the gradient stopped, and the total drift.
struct ZeroGradientRun {
  double largest_update_after_stop = 0.0;
  double drift = 0.0;
};

ZeroGradientRun run_rare_row(const Json& guard) {
  Json hyperparameters = {{"lr", 1e-3}, {"beta3", 0.9999}, {"alpha", 8.0}, {"weight_decay", 0.0}};
  hyperparameters.update(guard);
  const OptimizerSpec& spec = find_optimizer("ademamix");
  auto optimizer = spec.create(spec.normalize(hyperparameters), 1, {ParamSegment{0, 1, false}});
  float param = 0.0f;
  ZeroGradientRun result;
  for (int64_t step = 1; step <= 20010; ++step) {
    float grad = step <= 10 ? 1.0f : 0.0f;
    float before = param;
    optimizer->step(std::span(&param, 1), std::span<const float>(&grad, 1), StepInfo{step, 1e-3f});
    if (step > 10) result.largest_update_after_stop = std::max(result.largest_update_after_stop, std::fabs(double(param) - before));
  }
  result.drift = std::fabs(param);
  return result;
}

TEST(Reliability, AdemamixZeroGradientGuardStopsTheRunawayOfRareRows) {
  ZeroGradientRun plain = run_rare_row(Json::object());
  ZeroGradientRun guarded = run_rare_row({{"zero_grad_m2_beta", 0.999}});
  // Without the guard the update keeps growing long after the last gradient
  // (m2 decays slower than √ν) and the parameter runs away; with it, the
  // largest update is the one right after the gradient stopped.
  EXPECT_GT(plain.largest_update_after_stop, 100 * 1e-3);
  EXPECT_GT(plain.drift, 100.0);
  EXPECT_LT(guarded.largest_update_after_stop, 1e-3);
  EXPECT_LT(guarded.drift, 1.0);
}

}  // namespace
}  // namespace emix
