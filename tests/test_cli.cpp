// The `emix` executable end to end, as a user runs it: tokenize real text,
// train, stop with SIGINT, resume, generate; and bad input (flags, configs,
// checkpoints) gives a one-line error and a non-zero exit, never a crash.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>

#include "checkpoint/checkpoint.hpp"
#include "config/json_reader.hpp"
#include "core/file_io.hpp"
#include "test_support.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;

using Result = test::ShellResult;

std::string quote(const std::string& s) { return test::shell_quote(s); }

Result run(const std::string& arguments) { return test::run_shell(test::emix_command(arguments)); }

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(fs::exists(test::tokenizer_dir() / "encoder.json")) << "run scripts/fetch_tokenizer.sh first";
    // 60 kB of Tiny Shakespeare is plenty for a few steps of a tiny model.
    std::string text = read_text_file(test::golden_dir() / ".." / "data" / "tinyshakespeare.txt").substr(0, 60000);
    write_text_file_atomic(dir_->path() / "shakespeare.txt", text);
    Result r = run("tokenize --input " + quote((dir_->path() / "shakespeare.txt").string()) + " --output-dir " +
                   quote((dir_->path() / "shards").string()) + " --name tiny --val-tokens 2048 --tokenizer-dir " +
                   quote(test::tokenizer_dir().string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }

  static fs::path write_config(const std::string& run, Json changes = Json::object()) {
    Json config = {
        {"model", {{"n_layer", 1}, {"n_embd", 32}, {"n_head", 2}, {"block_size", 32}}},
        {"data", {{"train_shards", (dir_->path() / "shards" / "tiny_train_*.bin").string()},
                  {"val_shards", (dir_->path() / "shards" / "tiny_val_*.bin").string()},
                  {"tokenizer_dir", test::tokenizer_dir().string()}}},
        {"optimizer", {{"name", "ademamix"}, {"lr", 1e-3}, {"beta3", 0.999}, {"alpha", 5.0}}},
        {"schedule", {{"name", "cosine"}, {"warmup_steps", 2}}},
        {"training", {{"batch_size", 4}, {"seq_len", 32}, {"steps", 6}, {"eval_interval", 3}, {"eval_batches", 2}}},
        {"logging", {{"run_dir", (dir_->path() / run).string()}, {"interval", 1}, {"sample_tokens", 8}}},
    };
    config.merge_patch(changes);
    fs::path path = dir_->path() / (run + ".json");
    write_text_file_atomic(path, config.dump(2));
    return path;
  }

  static test::TempDir* dir_;
};
test::TempDir* CliTest::dir_ = new test::TempDir();

TEST_F(CliTest, TrainsResumesAndGenerates) {
  fs::path config = write_config("run");
  Result r = run("train --config " + quote(config.string()) + " --set training.steps=4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step 1/4 | loss"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tok/s"), std::string::npos);
  EXPECT_NE(r.output.find("validation loss"), std::string::npos);
  EXPECT_NE(r.output.find("checkpoint saved"), std::string::npos);
  EXPECT_NE(r.output.find("sample ("), std::string::npos);

  r = run("train --config " + quote(config.string()) + " --resume latest");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming at step 4/6"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 6/6"), std::string::npos) << r.output;
  auto latest = open_latest_checkpoint(dir_->path() / "run" / "checkpoints");
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step(), 6);

  r = run("generate " + quote((dir_->path() / "run").string()) + " --tokens 5 --prompt 'ROMEO:'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ROMEO:"), std::string::npos) << r.output;

  // scripts/plot draws the run's curves.
  fs::path png = dir_->path() / "loss.png";
  std::string plot = quote((test::source_dir() / "scripts" / "plot").string()) + " " + quote((dir_->path() / "run").string()) +
                     " -o " + quote(png.string()) + " 2>&1";
  EXPECT_EQ(std::system(plot.c_str()), 0);
  EXPECT_GT(fs::exists(png) ? fs::file_size(png) : 0, 10000u);

  // The metrics file has one record per step and the validation passes.
  std::ifstream metrics(dir_->path() / "run" / "metrics.jsonl");
  int steps = 0;
  int evals = 0;
  for (std::string line; std::getline(metrics, line);) {
    Json record = Json::parse(line);
    (record.contains("val_loss") ? evals : steps) += 1;
  }
  EXPECT_EQ(steps, 6);
  EXPECT_GE(evals, 2);
}

// Starts `emix train --config config [--resume latest]` with stderr to `log`.
pid_t start_training(const fs::path& config, const fs::path& log, bool resume) {
  pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen(log.c_str(), "a", stderr);
    if (resume) {
      ::execl(EMIX_BINARY, EMIX_BINARY, "train", "--config", config.c_str(), "--resume", "latest", static_cast<char*>(nullptr));
    } else {
      ::execl(EMIX_BINARY, EMIX_BINARY, "train", "--config", config.c_str(), static_cast<char*>(nullptr));
    }
    ::_exit(127);
  }
  return pid;
}

void wait_for_metrics(const fs::path& metrics, uintmax_t bytes) {
  for (int i = 0; i < 600 && (!fs::exists(metrics) || fs::file_size(metrics) < bytes); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

TEST_F(CliTest, StopSignalsSaveACheckpointAndExitCleanly) {
  for (int signal : {SIGINT, SIGTERM, SIGUSR1}) {
    std::string run = "signal_" + std::to_string(signal);
    fs::path config = write_config(run, {{"training", {{"steps", 100000}}}, {"logging", {{"sample_tokens", 0}}}});
    fs::path log = dir_->path() / (run + ".out");
    pid_t pid = start_training(config, log, false);
    wait_for_metrics(dir_->path() / run / "metrics.jsonl", 200);
    ::kill(pid, signal);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status)) << signal << ": " << read_text_file(log);
    EXPECT_EQ(WEXITSTATUS(status), 0) << read_text_file(log);
    EXPECT_NE(read_text_file(log).find("stop requested (signal " + std::to_string(signal) + ")"), std::string::npos);
    auto latest = open_latest_checkpoint(dir_->path() / run / "checkpoints");
    ASSERT_TRUE(latest.has_value());
    EXPECT_GE(latest->step(), 1);
  }
}

std::vector<float> final_params(const fs::path& run_dir) {
  auto latest = open_latest_checkpoint(run_dir / "checkpoints");
  EXPECT_TRUE(latest.has_value());
  std::vector<float> params(latest->tensor_count("params"));
  latest->read_tensor("params", params);
  return params;
}

TEST_F(CliTest, SigkillAtRandomMomentsLosesNothingButTheCurrentSteps) {
  // A checkpoint every step, so kills often land in the middle of a save.
  Json changes = {{"training", {{"steps", 40}, {"eval_interval", 0}}}, {"checkpoint", {{"interval", 1}, {"keep_last", 2}}},
                  {"logging", {{"sample_tokens", 0}}}};
  ASSERT_EQ(run("train --config " + quote(write_config("uninterrupted", changes).string())).exit_code, 0);

  fs::path config = write_config("killed", changes);
  fs::path log = dir_->path() / "killed.out";
  std::mt19937 random(2024);
  for (int attempt = 0; attempt < 6; ++attempt) {
    pid_t pid = start_training(config, log, /*resume=*/attempt > 0);
    // The first kill waits for a first checkpoint (start-up takes longer on
    // a loaded machine), so that the run makes progress whatever the load.
    const fs::path checkpoints = dir_->path() / "killed" / "checkpoints";
    for (int wait = 0; attempt == 0 && wait < 600 && !open_latest_checkpoint(checkpoints); ++wait) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + random() % 400));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  // The kills interrupted the run: it made progress but did not finish.
  auto interrupted = open_latest_checkpoint(dir_->path() / "killed" / "checkpoints");
  ASSERT_TRUE(interrupted.has_value()) << read_text_file(log);
  EXPECT_GT(interrupted->step(), 0);
  EXPECT_LT(interrupted->step(), 40);
  Result finish = run("train --config " + quote(config.string()) + " --resume latest");
  ASSERT_EQ(finish.exit_code, 0) << finish.output << read_text_file(log);
  EXPECT_TRUE(final_params(dir_->path() / "killed") == final_params(dir_->path() / "uninterrupted"))
      << "the resumed run's final parameters differ from the uninterrupted run's";
  for (const auto& entry : fs::directory_iterator(dir_->path() / "killed" / "checkpoints")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  }
}

// The plan of emix memory: whole buffers at stage 0, shards at stage 1 that
// shrink with the number of ranks, m2 alone at stage m2, bf16 m2 at half the
// bytes on a GPU.
TEST_F(CliTest, MemoryPlansTheStatePerRank) {
  const fs::path config = write_config("memory", {{"device", "cuda"}, {"optimizer", {{"m2_dtype", "bfloat16"}}}});
  Result result = run("memory --config " + quote(config.string()) + " --max-ranks 4");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("ZeRO stage 0"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("ZeRO stage 1"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("ZeRO stage m2 (m2 sharded, the rest replicated; CPU backend only so far)"),
            std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("optimizer m2 (bf16)"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("master weights (fp32)"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("gradient exchange (bf16)"), std::string::npos) << result.output;
  EXPECT_NE(run("memory --config " + quote(config.string()) + " --max-ranks 0").exit_code, 0);
}

TEST_F(CliTest, BadInputGivesAClearErrorAndNonZeroExit) {
  Result r = run("train --config " + quote(write_config("typo", {{"optimizer", {{"beta_3", 0.9}}}}).string()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("typo.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("did you mean 'optimizer.beta3'"), std::string::npos) << r.output;

  r = run("train --config /nonexistent/config.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/nonexistent/config.json"), std::string::npos) << r.output;

  r = run("train --no-such-flag");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no-such-flag"), std::string::npos) << r.output;

  r = run("train --config " + quote(write_config("noshards", {{"data", {{"train_shards", "/nonexistent/*.bin"}}}}).string()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("no files match '/nonexistent/*.bin'"), std::string::npos) << r.output;

  r = run("train --resume " + quote((dir_->path() / "not_a_checkpoint").string()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not_a_checkpoint"), std::string::npos) << r.output;

  r = run("generate " + quote(dir_->path().string()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("no checkpoint here"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace emix
