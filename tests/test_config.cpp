// Config parsing: defaults, derived values, overrides, and clear errors for
// malformed files, unknown keys and wrong types.
#include <gtest/gtest.h>

#include "config/config.hpp"
#include "config/json_reader.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "test_support.hpp"

namespace emix {
namespace {

Json minimal_config() {
  return Json::parse(R"({
    "model": {"vocab_size": 100, "n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 32},
    "data": {"train_shards": "train_*.bin"},
    "optimizer": {"name": "ademamix"},
    "training": {"steps": 10, "batch_size": 2, "seq_len": 8}
  })");
}

// The message of the Error thrown by `body`, or "" when none is thrown.
template <typename F>
std::string error_of(F body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Integer fields of metadata files (checkpoint manifests and run state):
// floats, negative values for unsigned types and values that do not fit are
// errors naming the file and the key, never a cast.
TEST(JsonInteger, AcceptsOnlyIntegersThatFit) {
  const Json object = Json::parse(R"({"a": 7, "b": -3, "c": 3.86e12, "d": 4294967296, "e": "12", "f": 2.0})");
  EXPECT_EQ(json_integer<uint32_t>(object, "a", "m.json"), 7u);
  EXPECT_EQ(json_integer<int64_t>(object, "b", "m.json"), -3);
  EXPECT_EQ(json_integer<uint64_t>(object, "d", "m.json"), 4294967296u);
  for (const char* key : {"b", "c", "d", "e", "f"}) {  // negative, float, too large, string, float
    try {
      (void)json_integer<uint32_t>(object, key, "m.json");
      ADD_FAILURE() << key << " accepted";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("m.json"), std::string::npos) << message;
      EXPECT_NE(message.find(std::string("'") + key + "'"), std::string::npos) << message;
    }
  }
}

TEST(Config, FillsDefaultsAndDerivedValues) {
  Config c = Config::from_json(minimal_config());
  EXPECT_EQ(c.model.padded_vocab_size, 128);  // padded to a multiple of 128
  EXPECT_EQ(c.training.total_batch_tokens, 16);
  EXPECT_EQ(c.training.accumulation_steps(), 1);
  EXPECT_EQ(c.total_steps(), 10);
  EXPECT_EQ(c.optimizer.at("name"), "ademamix");
  EXPECT_DOUBLE_EQ(c.optimizer.at("beta3").get<double>(), 0.9999);  // the optimizer's default
  EXPECT_EQ(c.checkpoint_dir(), std::filesystem::path("runs/default/checkpoints"));
  // The effective config parses back to itself.
  Json effective = c.to_json();
  EXPECT_EQ(Config::from_json(effective).to_json(), effective);
}

TEST(Config, TokenBudgetAndAccumulation) {
  Json j = minimal_config();
  j["training"].erase("steps");
  j["training"]["token_budget"] = 1000;
  j["training"]["total_batch_tokens"] = 64;
  Config c = Config::from_json(j);
  EXPECT_EQ(c.training.accumulation_steps(), 4);
  EXPECT_EQ(c.total_steps(), 15);
  EXPECT_EQ(c.training.accumulation_steps(2), 2);
  EXPECT_THROW(c.training.accumulation_steps(3), Error);
}

TEST(Config, UnknownKeysSuggestTheClosestValidOne) {
  Json j = minimal_config();
  j["optimizer"]["beta_3"] = 0.999;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("'optimizer.beta_3' (did you mean 'optimizer.beta3'?)"), std::string::npos);
  j = minimal_config();
  j["training"]["batchsize"] = 4;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("did you mean 'training.batch_size'"), std::string::npos);
  j = minimal_config();
  j["modle"] = Json::object();
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("did you mean 'model'"), std::string::npos);
}

TEST(Config, WrongTypesAndValuesNameTheKey) {
  Json j = minimal_config();
  j["training"]["batch_size"] = "16";
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("'training.batch_size': expected an integer"), std::string::npos);
  j = minimal_config();
  j["training"]["steps"] = 1.5;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("training.steps"), std::string::npos);
  j = minimal_config();
  j["model"]["n_head"] = 3;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("divisible"), std::string::npos);
  j = minimal_config();
  j["optimizer"]["name"] = "adamw_typo";
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("did you mean 'adamw'"), std::string::npos);
  j = minimal_config();
  j["training"]["seq_len"] = 64;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("block_size"), std::string::npos);
  j = minimal_config();
  j["data"].erase("train_shards");
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("'data.train_shards' is required"), std::string::npos);
  j = minimal_config();
  j["training"]["total_batch_tokens"] = 20;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("multiple of batch_size"), std::string::npos);
  j = minimal_config();
  j["model"] = 5;
  EXPECT_NE(error_of([&] { Config::from_json(j); }).find("'model': expected an object"), std::string::npos);
}

TEST(Config, OverridesParseJsonOrStrings) {
  Json j = minimal_config();
  apply_override(j, "training.steps=42");
  apply_override(j, "optimizer.name=adamw");
  apply_override(j, "logging.run_dir=runs/x");
  apply_override(j, "data.shuffle=false");
  Config c = Config::from_json(j);
  EXPECT_EQ(c.training.steps, 42);
  EXPECT_EQ(c.optimizer.at("name"), "adamw");
  EXPECT_EQ(c.logging.run_dir, "runs/x");
  EXPECT_FALSE(c.data.shuffle);
  apply_override(j, "training.zero_stage=m2");
  EXPECT_EQ(Config::from_json(j).training.zero_stage, ZeroStage::shard_m2);
  EXPECT_EQ(Config::from_json(j).to_json()["training"]["zero_stage"], "m2");
  apply_override(j, "training.zero_stage=1");
  EXPECT_EQ(Config::from_json(j).training.zero_stage, ZeroStage::shard_all);
  for (const char* bad : {"training.zero_stage=2", "training.zero_stage=m1", "training.zero_stage=true"}) {
    Json k = j;
    apply_override(k, bad);
    EXPECT_NE(error_of([&] { Config::from_json(k); }).find("'training.zero_stage' must be 0, 1 or \"m2\""),
              std::string::npos)
        << bad;
  }
  EXPECT_THROW(apply_override(j, "no_equals_sign"), Error);
  EXPECT_THROW(apply_override(j, "training.steps.deeper=1"), Error);
}

TEST(Config, FileErrorsNameTheFileAndPosition) {
  test::TempDir dir;
  write_text_file_atomic(dir / "bad.json", "{\n  \"model\": {\n    \"n_layer\": 2,\n  }\n}\n");
  std::string message = error_of([&] { load_config(dir / "bad.json"); });
  EXPECT_NE(message.find("bad.json:4:"), std::string::npos) << message;
  Json j = minimal_config();
  j["training"]["eval_batches"] = "many";
  write_text_file_atomic(dir / "typed.json", j.dump());
  message = error_of([&] { load_config(dir / "typed.json"); });
  EXPECT_NE(message.find("typed.json"), std::string::npos);
  EXPECT_NE(message.find("training.eval_batches"), std::string::npos);
  EXPECT_NE(error_of([&] { load_config(dir / "missing.json"); }).find("missing.json"), std::string::npos);
}

TEST(Config, EveryShippedConfigLoads) {
  for (const auto& entry : std::filesystem::directory_iterator(test::source_dir() / "configs")) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().string());
    Config c = load_config(entry.path());
    EXPECT_GT(c.total_steps(), 0);
  }
}

}  // namespace
}  // namespace emix
