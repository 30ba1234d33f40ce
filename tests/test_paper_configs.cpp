// Every shipped run config (configs/*.json, configs/results/*.json and the
// AdEMAMix paper's configs/paper/*.json) loads, has the parameter count its
// file name claims, and trains one step on the CPU once shrunk to a tiny
// width: the optimizer section is kept as written (warmups longer than the
// run included), so a typo in a hyperparameter fails here, not hours into a
// GPU run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <regex>

#include "config/config.hpp"
#include "config/json_reader.hpp"
#include "core/file_io.hpp"
#include "model/gpt2_config.hpp"
#include "test_support.hpp"
#include "train/trainer.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;

// Paths relative to the project root, sorted.
std::vector<std::string> shipped_configs() {
  std::vector<std::string> paths;
  for (const char* folder : {"configs", "configs/results", "configs/paper"}) {
    fs::path dir = test::source_dir() / folder;
    if (!fs::is_directory(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_regular_file() && entry.path().extension() == ".json") {
        paths.push_back(fs::relative(entry.path(), test::source_dir()).generic_string());
      }
    }
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

// The size a file name claims ("gpt2_110m_adamw" -> 110e6, "gpt2_1.3b_..." ->
// 1.3e9), or 0 when it names none. Step counts ("_770k") are not sizes.
double claimed_parameters(const std::string& stem) {
  static const std::regex size_pattern(R"((?:^|_)(\d+(?:\.\d+)?)([mb])(?:_|$))", std::regex::icase);
  std::smatch match;
  if (!std::regex_search(stem, match, size_pattern)) return 0.0;
  double scale = (match[2] == "b" || match[2] == "B") ? 1e9 : 1e6;
  return std::stod(match[1]) * scale;
}

TEST(PaperConfigs, SizesAreReadFromFileNames) {
  EXPECT_DOUBLE_EQ(claimed_parameters("gpt2_110m_adamw"), 110e6);
  EXPECT_DOUBLE_EQ(claimed_parameters("gpt2_1.3b_headline_adamw_1500k"), 1.3e9);
  EXPECT_DOUBLE_EQ(claimed_parameters("gpt2_124m_cuda"), 124e6);
  EXPECT_DOUBLE_EQ(claimed_parameters("shakespeare_cpu"), 0.0);
}

TEST(PaperConfigs, PaperFolderIsComplete) {
  std::vector<std::string> paths = shipped_configs();
  auto has = [&](const std::string& p) { return std::find(paths.begin(), paths.end(), p) != paths.end(); };
  for (const char* size : {"110m", "335m", "1.3b"}) {
    for (const char* optimizer : {"adamw", "ademamix", "ademamix_beta1_0", "simplified_ademamix"}) {
      EXPECT_TRUE(has(std::string("configs/paper/gpt2_") + size + "_" + optimizer + ".json")) << size << " " << optimizer;
    }
  }
  EXPECT_TRUE(has("configs/paper/gpt2_1.3b_headline_ademamix_770k.json"));
  EXPECT_TRUE(has("configs/paper/gpt2_1.3b_headline_adamw_1500k.json"));
}

class ShippedConfig : public ::testing::TestWithParam<std::string> {};

TEST_P(ShippedConfig, LoadsHasItsSizeAndTrainsOneTinyStep) {
  const fs::path path = test::source_dir() / GetParam();
  Config config = load_config(path);
  const std::string stem = path.stem().string();
  const size_t parameters = ParameterLayout(config.model).num_parameters();
  std::printf("%-60s %14zu parameters (%.1fM), %lld steps of %lld tokens, optimizer %s\n", GetParam().c_str(), parameters,
              parameters / 1e6, static_cast<long long>(config.total_steps()),
              static_cast<long long>(config.training.total_batch_tokens),
              config.optimizer.at("name").get<std::string>().c_str());

  // The name's size against the count with the (padded, tied) embeddings:
  // GPT-2's own naming counts them ("124M"), the AdEMAMix paper's "110M" and
  // "335M" name the same shapes as GPT-2 small and medium (124M, 355M here),
  // so the band is [0.9, 1.3] x the claimed size rather than +-10%.
  if (double claimed = claimed_parameters(stem); claimed > 0.0) {
    EXPECT_GE(static_cast<double>(parameters), 0.9 * claimed) << GetParam();
    EXPECT_LE(static_cast<double>(parameters), 1.3 * claimed) << GetParam();
  }

  // The paper's configs: what every one of them must share.
  if (GetParam().starts_with("configs/paper/")) {
    EXPECT_EQ(config.model.block_size, 1024);
    EXPECT_EQ(config.training.seq_len, 1024);
    EXPECT_EQ(config.model.padded_vocab_size, 50304);
    EXPECT_EQ(config.schedule.warmup_steps, 3000);
    EXPECT_DOUBLE_EQ(config.schedule.min_lr, 1e-5);
    EXPECT_DOUBLE_EQ(config.optimizer.at("weight_decay").get<double>(), 0.1);
    EXPECT_EQ(config.training.total_batch_tokens % (int64_t{config.training.batch_size} * 1024), 0);
    EXPECT_EQ(config.logging.run_dir, "runs/paper/" + stem);
    const std::string name = config.optimizer.at("name");
    if (name == "ademamix") {
      EXPECT_EQ(config.optimizer.at("t_alpha").get<int64_t>(), config.total_steps());
      EXPECT_EQ(config.optimizer.at("t_beta3").get<int64_t>(), config.total_steps());
      EXPECT_DOUBLE_EQ(config.optimizer.at("beta3").get<double>(), 0.9999);
    } else if (name == "simplified_ademamix") {
      EXPECT_EQ(config.optimizer.at("t_beta1").get<int64_t>(), config.total_steps());
    }
  }

  // One CPU step of the same config at a tiny width.
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  Json document = parse_json_text(read_text_file(path), path.string());
  document["device"] = "cpu";
  document["model"]["vocab_size"] = test::kTinyVocab;
  document["model"]["padded_vocab_size"] = test::kTinyVocab;
  document["model"]["n_layer"] = 2;
  document["model"]["n_embd"] = 32;
  document["model"]["n_head"] = 2;
  document["model"]["block_size"] = 16;
  document["data"]["train_shards"] = (dir / "tiny_train_*.bin").string();
  document["data"]["val_shards"] = (dir / "tiny_val_*.bin").string();
  Json& training = document["training"];
  training.erase("token_budget");
  training["seq_len"] = 8;
  training["batch_size"] = 2;
  training["total_batch_tokens"] = 16;
  training["steps"] = 1;
  training["eval_interval"] = 0;
  training["eval_batches"] = 2;
  training["threads"] = 0;
  document["checkpoint"] = Json{{"interval", 0}, {"keep_last", 1}};
  document["logging"]["run_dir"] = (dir / "run").string();
  document["logging"]["sample_tokens"] = 0;
  Config tiny = Config::from_json(document);
  EXPECT_EQ(tiny.optimizer, config.optimizer) << "the optimizer section must be tested as written";

  Trainer trainer(tiny);
  EXPECT_TRUE(trainer.run());
  ASSERT_EQ(trainer.history().size(), 1u);
  const StepRecord& step = trainer.history().back();
  EXPECT_FALSE(step.skipped);
  EXPECT_TRUE(std::isfinite(step.loss)) << step.loss;
  EXPECT_TRUE(std::isfinite(step.grad_norm)) << step.grad_norm;
  EXPECT_NEAR(step.loss, std::log(static_cast<float>(test::kTinyVocab)), 1.0);  // about uniform at initialization
}

std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Configs, ShippedConfig, ::testing::ValuesIn(shipped_configs()), test_name);

}  // namespace
}  // namespace emix
