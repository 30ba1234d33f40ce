// scripts/sweep end to end: a two-run sweep (AdamW and AdEMAMix on the tiny
// shards) runs, collects into results.csv and two PNGs, and a second `run`
// skips both finished runs without touching their metrics; a changed sweep
// (more steps) resumes the runs from their final checkpoints.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/file_io.hpp"
#include "test_support.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;

struct Result {
  int exit_code = -1;
  std::string output;
};

std::string quote(const std::string& s) { return "'" + s + "'"; }

// Runs scripts/sweep with $EMIX_BIN and $EMIX_SWEEP_ROOT set, capturing its
// output (the emix runs' included).
Result sweep(const std::string& arguments, const fs::path& root) {
  std::string command = "EMIX_BIN=" + quote(EMIX_BINARY) + " EMIX_SWEEP_ROOT=" + quote(root.string()) + " " +
                        quote((test::source_dir() / "scripts" / "sweep").string()) + " " + arguments + " 2>&1";
  Result result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::vector<std::string> lines_of(const fs::path& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

size_t count_of(const std::string& text, const std::string& word) {
  size_t count = 0;
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) ++count;
  return count;
}

TEST(SweepScript, RunsCollectsSkipsAndResumes) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  for (const char* optimizer : {"adamw", "ademamix"}) {
    nlohmann::json config = test::tiny_run_config(dir, optimizer, std::string("unused_") + optimizer);
    if (std::string(optimizer) == "ademamix") {
      config["optimizer"]["t_alpha"] = 13;
      config["optimizer"]["t_beta3"] = 13;
    }
    write_text_file_atomic(dir / (std::string("tiny_") + optimizer + ".json"), config.dump(2));
  }
  const fs::path root = dir / "sweeps";
  auto write_sweep = [&](int steps) {
    nlohmann::json sweep = {
        {"name", "tiny"},
        {"configs", {(dir / "tiny_adamw.json").string(), (dir / "tiny_ademamix.json").string()}},
        {"seeds", {7}},
        {"set", {"training.steps=" + std::to_string(steps), "training.eval_interval=3", "checkpoint.interval=4"}},
    };
    write_text_file_atomic(dir / "tiny_sweep.json", sweep.dump(2));
  };
  write_sweep(8);
  const std::string sweep_file = quote((dir / "tiny_sweep.json").string());

  Result first = sweep("run " + sweep_file, root);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const fs::path adamw_run = root / "tiny" / "tiny_adamw_seed7";
  const fs::path ademamix_run = root / "tiny" / "tiny_ademamix_seed7";
  for (const fs::path& run : {adamw_run, ademamix_run}) {
    EXPECT_TRUE(fs::exists(run / "metrics.jsonl")) << run;
    EXPECT_TRUE(fs::exists(run / "done")) << run;
    EXPECT_TRUE(fs::is_directory(run / "checkpoints" / "step_00000008")) << run;
  }

  Result collected = sweep("collect " + sweep_file, root);
  ASSERT_EQ(collected.exit_code, 0) << collected.output;
  std::vector<std::string> csv = lines_of(root / "tiny" / "results.csv");
  ASSERT_EQ(csv.size(), 3u) << collected.output;  // header + 2 runs
  EXPECT_TRUE(csv[0].starts_with("run,")) << csv[0];
  EXPECT_NE(csv[0].find("final_val_loss"), std::string::npos) << csv[0];
  EXPECT_NE(csv[0].find("median_tokens_per_second"), std::string::npos) << csv[0];
  EXPECT_TRUE(csv[1].starts_with("tiny_adamw_seed7,")) << csv[1];
  EXPECT_NE(csv[1].find(",adamw,7,256,"), std::string::npos) << csv[1];  // 8 steps of 32 tokens
  EXPECT_TRUE(csv[2].starts_with("tiny_ademamix_seed7,")) << csv[2];
  EXPECT_NE(csv[2].find(",ademamix,7,256,"), std::string::npos) << csv[2];
  for (const char* png : {"val_loss.png", "token_ratio.png"}) {
    const fs::path path = root / "tiny" / png;
    ASSERT_TRUE(fs::exists(path)) << png;
    EXPECT_GT(fs::file_size(path), 1000u) << png;
    EXPECT_EQ(read_text_file(path).substr(1, 3), "PNG") << png;
  }

  // Again: both runs are complete, nothing trains.
  const std::string metrics_before = read_text_file(ademamix_run / "metrics.jsonl");
  Result again = sweep("run " + sweep_file, root);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(count_of(again.output, ": skip ("), 2u) << again.output;
  EXPECT_EQ(again.output.find("starting a fresh run"), std::string::npos) << again.output;
  EXPECT_EQ(read_text_file(ademamix_run / "metrics.jsonl"), metrics_before);

  // A run whose marker was lost but whose final checkpoint is at its last step is complete too.
  fs::remove(adamw_run / "done");
  Result lost_marker = sweep("run " + sweep_file, root);
  ASSERT_EQ(lost_marker.exit_code, 0) << lost_marker.output;
  EXPECT_EQ(count_of(lost_marker.output, ": skip ("), 2u) << lost_marker.output;
  EXPECT_TRUE(fs::exists(adamw_run / "done"));

  // A longer sweep resumes each run from its final checkpoint (step 8), not from scratch.
  write_sweep(10);
  Result longer = sweep("run " + sweep_file, root);
  ASSERT_EQ(longer.exit_code, 0) << longer.output;
  EXPECT_EQ(count_of(longer.output, ": skip ("), 0u) << longer.output;
  EXPECT_EQ(longer.output.find("starting a fresh run"), std::string::npos) << longer.output;
  for (const fs::path& run : {adamw_run, ademamix_run}) {
    EXPECT_TRUE(fs::is_directory(run / "checkpoints" / "step_00000010")) << longer.output;
  }
  EXPECT_TRUE(read_text_file(ademamix_run / "metrics.jsonl").starts_with(metrics_before));
}

TEST(SweepScript, RejectsABadSweepFile) {
  test::TempDir dir;
  write_text_file_atomic(dir / "bad.json", R"({"configs": ["x.json"], "seeds": [1], "sedes": [2]})");
  Result result = sweep("run " + quote((dir / "bad.json").string()), dir / "sweeps");
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("sedes"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace emix
