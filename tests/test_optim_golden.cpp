// The optimizers against float64 golden trajectories (every case in the
// shared golden folder, computed by the authors' implementations, and every
// case in tests/golden_optim, computed by make_golden.py there from the
// papers' equations), checkpoint round trips, weight-decay segments,
// hyperparameter validation, and schedule-free's evaluation point.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "config/json_reader.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "optim/optimizer.hpp"
#include "test_support.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;

// The folders of golden cases, each holding *.json files of one layout: the
// shared reference data, and this project's own (tests/golden_optim).
fs::path golden_optim_dir() { return test::golden_dir() / "optim"; }
fs::path project_golden_optim_dir() { return test::source_dir() / "tests" / "golden_optim"; }

std::vector<fs::path> golden_cases(const fs::path& dir) {
  std::vector<fs::path> cases;
  if (!fs::is_directory(dir)) return cases;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".json") cases.push_back(entry.path());
  }
  std::sort(cases.begin(), cases.end());
  return cases;
}

std::unique_ptr<Optimizer> make_optimizer(std::string_view name, const Json& hyperparameters, size_t size,
                                          std::vector<ParamSegment> segments) {
  const OptimizerSpec& spec = find_optimizer(name);
  return spec.create(spec.normalize(hyperparameters), size, std::move(segments));
}


// What a checkpoint carries: the state buffers by name, and the scalar state
// through its JSON text.
void copy_state(Optimizer& from, Optimizer& to) {
  auto source = from.state_buffers();
  auto target = to.state_buffers();
  ASSERT_EQ(source.size(), target.size());
  for (size_t i = 0; i < source.size(); ++i) {
    ASSERT_EQ(source[i].name, target[i].name);
    ASSERT_EQ(source[i].data.size(), target[i].data.size());
    std::copy(source[i].data.begin(), source[i].data.end(), target[i].data.begin());
  }
  to.load_scalar_state(parse_json_text(from.scalar_state().dump(), "scalar state"));
}

void expect_same_state(Optimizer& a, Optimizer& b) {
  auto x = a.state_buffers();
  auto y = b.state_buffers();
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(test::same_bits(x[i].data, y[i].data)) << x[i].name;
  EXPECT_EQ(a.scalar_state(), b.scalar_state());
}

std::vector<std::string> buffer_names(Optimizer& optimizer) {
  std::vector<std::string> names;
  for (const auto& buffer : optimizer.state_buffers()) names.push_back(buffer.name);
  return names;
}

// The message of the emix::Error that `action` throws ("" and a failure if none).
std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an emix::Error";
  return "";
}

Json normalize(std::string_view optimizer, const Json& hyperparameters) {
  return find_optimizer(optimizer).normalize(hyperparameters);
}

// ------------------------------------------------------------ golden cases ----

struct GoldenCase {
  Json data;
  std::string optimizer;
  Json hyperparameters;
  size_t size = 0;
  float lr = 0.0f;

  explicit GoldenCase(const fs::path& path)
      : data(parse_json_text(read_text_file(path), path.string())),
        optimizer(data.at("optimizer").get<std::string>()),
        hyperparameters(data.at("hyperparameters")),
        size(data.at("size").get<size_t>()),
        lr(data.at("hyperparameters").at("lr").get<float>()) {}

  size_t steps() const { return data.at("gradients").size(); }
  std::vector<float> initial_params() const { return data.at("initial_params").get<std::vector<float>>(); }
  std::vector<float> gradients(size_t t) const { return data.at("gradients").at(t).get<std::vector<float>>(); }
  std::unique_ptr<Optimizer> make() const {
    return make_optimizer(optimizer, hyperparameters, size, {{0, size, true}});
  }
  // Step t + 1 of the reference trajectory.
  void step(Optimizer& optimizer, std::vector<float>& params, size_t t) const {
    optimizer.step(params, gradients(t), StepInfo{static_cast<int64_t>(t + 1), lr});
  }
};

struct Deviation {
  double tolerance_used = 0.0;  // error / (1e-5 + 1e-4·|expected|)
  double max_abs_error = 0.0;
  size_t step = 0;
  size_t index = 0;
  double expected = 0.0;
  float actual = 0.0f;
};

void record_deviation(Deviation& worst, std::span<const float> params, const Json& expected, size_t step) {
  for (size_t i = 0; i < params.size(); ++i) {
    double reference = expected.at(i).get<double>();
    double error = std::abs(static_cast<double>(params[i]) - reference);
    double used = error / (1e-5 + 1e-4 * std::abs(reference));
    worst.max_abs_error = std::max(worst.max_abs_error, error);
    if (used > worst.tolerance_used) {
      worst = Deviation{used, worst.max_abs_error, step, i, reference, params[i]};
    }
  }
}

class OptimGolden : public testing::TestWithParam<fs::path> {};

TEST_P(OptimGolden, FollowsTheReferenceTrajectory) {
  GoldenCase golden(GetParam());
  ASSERT_EQ(golden.steps(), golden.data.at("steps").get<size_t>());
  auto optimizer = golden.make();
  auto params = golden.initial_params();
  ASSERT_EQ(params.size(), golden.size);
  Deviation worst;
  for (size_t t = 0; t < golden.steps(); ++t) {
    golden.step(*optimizer, params, t);
    record_deviation(worst, params, golden.data.at("params_after_step").at(t), t + 1);
  }
  std::cout << fmt::format("{}: max |error| {:.3g}; worst element at {:.1f}% of the tolerance (step {}, element {})\n",
                           GetParam().stem().string(), worst.max_abs_error, 100 * worst.tolerance_used, worst.step,
                           worst.index);
  EXPECT_LE(worst.tolerance_used, 1.0) << "worst element: step " << worst.step << ", element " << worst.index
                                       << ": expected " << worst.expected << ", got " << worst.actual;
}

TEST_P(OptimGolden, RestoredMidTrajectoryContinuesBitExactly) {
  GoldenCase golden(GetParam());
  auto original = golden.make();
  auto params = golden.initial_params();
  const size_t half = golden.steps() / 2;
  for (size_t t = 0; t < half; ++t) golden.step(*original, params, t);
  auto restored = golden.make();
  copy_state(*original, *restored);
  auto restored_params = params;
  for (size_t t = half; t < golden.steps(); ++t) {
    golden.step(*original, params, t);
    golden.step(*restored, restored_params, t);
  }
  EXPECT_TRUE(test::same_bits(params, restored_params));
  expect_same_state(*original, *restored);
}

// The key names and values of the reference are the project's: a golden
// case's hyperparameters come back from normalize unchanged.
TEST_P(OptimGolden, HyperparametersUseTheReferenceNames) {
  GoldenCase golden(GetParam());
  // Every reference hyperparameter is read under its own name and kept as
  // given; keys beyond the reference are our extensions, off by default: null,
  // or the value that names the reference's behaviour (AdEMAMix's m2 in fp32).
  const Json reference_behaviour{{"m2_dtype", "float32"}};
  Json normalized = normalize(golden.optimizer, golden.hyperparameters);
  for (const auto& [key, value] : golden.hyperparameters.items()) {
    ASSERT_TRUE(normalized.contains(key)) << key;
    EXPECT_EQ(normalized.at(key), value) << key;
  }
  for (const auto& [key, value] : normalized.items()) {
    if (golden.hyperparameters.contains(key)) continue;
    EXPECT_TRUE(value.is_null() || reference_behaviour.value(key, Json()) == value)
        << "extension " << key << " is on by default";
  }
}

std::string case_name(const testing::TestParamInfo<fs::path>& info) {
  std::string name = info.param.stem().string();
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

// The same checks run over each folder.
INSTANTIATE_TEST_SUITE_P(Golden, OptimGolden, testing::ValuesIn(golden_cases(golden_optim_dir())), case_name);
INSTANTIATE_TEST_SUITE_P(ProjectGolden, OptimGolden, testing::ValuesIn(golden_cases(project_golden_optim_dir())),
                         case_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(OptimGolden);

TEST(OptimGoldenFolder, HoldsCases) {
  EXPECT_FALSE(golden_cases(golden_optim_dir()).empty()) << "no *.json case in " << golden_optim_dir();
  EXPECT_FALSE(golden_cases(project_golden_optim_dir()).empty()) << "no *.json case in " << project_golden_optim_dir();
}

// Every registered optimizer has golden cases of its own, at least two.
TEST(OptimGoldenFolder, CoverEveryOptimizer) {
  std::map<std::string, int> cases;
  for (const fs::path& dir : {golden_optim_dir(), project_golden_optim_dir()}) {
    for (const fs::path& path : golden_cases(dir)) ++cases[GoldenCase(path).optimizer];
  }
  for (const std::string& name : optimizer_names()) EXPECT_GE(cases[name], 2) << name;
}

// ----------------------------------------------------- every optimizer ----

// The tests below loop over the registry, and would pass on an empty one.
TEST(Optimizers, AreRegistered) {
  for (const char* name :
       {"adamw", "ademamix", "simplified_ademamix", "lion", "laprop", "mars", "schedule_free_adamw"}) {
    EXPECT_NO_THROW(find_optimizer(name)) << name;
  }
}

TEST(Optimizers, RestoredStateContinuesBitExactly) {
  const size_t size = 1000;
  const std::vector<ParamSegment> segments = {{0, 700, true}, {700, 300, false}};
  for (const std::string& name : optimizer_names()) {
    SCOPED_TRACE(name);
    const OptimizerSpec& spec = find_optimizer(name);
    Json hyperparameters = spec.normalize(Json::object());
    const auto lr = static_cast<float>(common_hyperparameters(hyperparameters).lr);
    auto original = spec.create(hyperparameters, size, segments);
    auto params = test::random_normal_vector(size, 1);
    for (int64_t t = 1; t <= 5; ++t) original->step(params, test::random_normal_vector(size, 100 + t), StepInfo{t, lr});
    auto restored = spec.create(hyperparameters, size, segments);
    copy_state(*original, *restored);
    auto restored_params = params;
    for (int64_t t = 6; t <= 10; ++t) {
      auto grads = test::random_normal_vector(size, 100 + t);
      original->step(params, grads, StepInfo{t, lr});
      restored->step(restored_params, grads, StepInfo{t, lr});
    }
    EXPECT_TRUE(test::same_bits(params, restored_params));
    expect_same_state(*original, *restored);
  }
}

TEST(Optimizers, DecayOnlyTheWeightDecaySegments) {
  const std::vector<ParamSegment> segments = {{0, 10, false}, {10, 20, true}, {30, 10, false}};
  for (const std::string& name : optimizer_names()) {
    SCOPED_TRACE(name);
    // Zero gradients leave every update but the decay at zero.
    auto optimizer = make_optimizer(name, Json{{"lr", 0.1}, {"weight_decay", 0.5}}, 40, segments);
    auto params = test::random_normal_vector(40, 7);
    const auto before = params;
    optimizer->step(params, std::vector<float>(40, 0.0f), StepInfo{1, 0.1f});
    for (size_t i = 0; i < params.size(); ++i) {
      bool decays = i >= 10 && i < 30;
      EXPECT_NEAR(params[i], decays ? before[i] * 0.95f : before[i], 1e-6 * std::abs(before[i])) << "element " << i;
    }
  }
}

TEST(Optimizers, NormalizeGivesEveryValueAndIsStable) {
  for (const std::string& name : optimizer_names()) {
    SCOPED_TRACE(name);
    Json complete = normalize(name, Json::object());
    EXPECT_EQ(normalize(name, complete), complete);
    EXPECT_EQ(normalize(name, Json(nullptr)), complete);
    EXPECT_NO_THROW(common_hyperparameters(complete));
  }
  EXPECT_EQ(normalize("adamw", Json::object()),
            (Json{{"lr", 1e-3}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}, {"weight_decay", 0.1}}));
  EXPECT_EQ(normalize("ademamix", Json::object()),
            (Json{{"lr", 1e-3}, {"beta1", 0.9}, {"beta2", 0.999}, {"beta3", 0.9999}, {"alpha", 8.0}, {"eps", 1e-8},
                  {"weight_decay", 0.1}, {"t_alpha", nullptr}, {"t_beta3", nullptr},
                 {"zero_grad_m2_beta", nullptr}, {"m2_dtype", "float32"}}));
  EXPECT_EQ(normalize("simplified_ademamix", Json::object()),
            (Json{{"lr", 1e-3}, {"beta1", 0.99}, {"beta2", 0.95}, {"alpha", 0.0}, {"eps", 1e-8}, {"weight_decay", 0.0},
                  {"t_beta1", nullptr}, {"min_beta1", 0.9}, {"bias_correction1", false}, {"bias_correction2", true}}));
  EXPECT_EQ(normalize("lion", Json::object()),
            (Json{{"lr", 1e-4}, {"beta1", 0.9}, {"beta2", 0.99}, {"weight_decay", 1.0}}));
  EXPECT_EQ(normalize("laprop", Json::object()),
            (Json{{"lr", 4e-4}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-15}, {"weight_decay", 0.1}}));
  EXPECT_EQ(normalize("mars", Json::object()),
            (Json{{"lr", 3e-3}, {"beta1", 0.95}, {"beta2", 0.99}, {"eps", 1e-8}, {"weight_decay", 0.01},
                  {"gamma", 0.025}, {"clip_corrected_gradient", true}}));
  EXPECT_EQ(normalize("schedule_free_adamw", Json::object()),
            (Json{{"lr", 2.5e-3}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}, {"weight_decay", 0.1},
                  {"warmup_steps", nullptr}, {"r", 0.0}, {"weight_lr_power", 2.0}, {"bias_correction_in_lr", false}}));
  EXPECT_EQ(normalize("ademamix", Json{{"t_alpha", 100}, {"lr", 1}}).at("t_alpha"), 100);
}

TEST(Optimizers, UnknownKeysAndWrongTypesNameTheKey) {
  std::string message = error_message([] { normalize("ademamix", Json{{"beta_3", 0.99}}); });
  EXPECT_NE(message.find("optimizer.beta_3"), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean 'optimizer.beta3'"), std::string::npos) << message;
  for (const std::string& name : optimizer_names()) {
    SCOPED_TRACE(name);
    message = error_message([&] { normalize(name, Json{{"learning_rate_peak_value", 0.1}}); });
    EXPECT_NE(message.find("optimizer.learning_rate_peak_value"), std::string::npos) << message;
    message = error_message([&] { normalize(name, Json{{"lr", "fast"}}); });
    EXPECT_NE(message.find("optimizer.lr"), std::string::npos) << message;
  }
}

TEST(Optimizers, InvalidValuesAreRejected) {
  struct Case {
    const char* optimizer;
    Json hyperparameters;
    const char* key;
  };
  const std::vector<Case> cases = {
      {"adamw", {{"lr", -1e-3}}, "optimizer.lr"},
      {"adamw", {{"beta1", 1.0}}, "optimizer.beta1"},
      {"adamw", {{"beta2", -0.1}}, "optimizer.beta2"},
      {"adamw", {{"eps", 0.0}}, "optimizer.eps"},
      {"adamw", {{"weight_decay", -0.1}}, "optimizer.weight_decay"},
      {"ademamix", {{"beta3", 1.5}}, "optimizer.beta3"},
      {"ademamix", {{"alpha", -1.0}}, "optimizer.alpha"},
      {"ademamix", {{"t_alpha", 0}}, "optimizer.t_alpha"},
      {"ademamix", {{"t_beta3", 2.5}}, "optimizer.t_beta3"},
      {"simplified_ademamix", {{"min_beta1", 1.0}}, "optimizer.min_beta1"},
      {"simplified_ademamix", {{"t_beta1", -5}}, "optimizer.t_beta1"},
      {"simplified_ademamix", {{"bias_correction1", 1}}, "optimizer.bias_correction1"},
      {"lion", {{"beta2", 1.0}}, "optimizer.beta2"},
      {"lion", {{"weight_decay", -1.0}}, "optimizer.weight_decay"},
      {"laprop", {{"eps", -1e-15}}, "optimizer.eps"},
      {"mars", {{"gamma", -0.1}}, "optimizer.gamma"},
      {"mars", {{"clip_corrected_gradient", "yes"}}, "optimizer.clip_corrected_gradient"},
      {"schedule_free_adamw", {{"beta1", 0.0}}, "optimizer.beta1"},
      {"schedule_free_adamw", {{"warmup_steps", 0}}, "optimizer.warmup_steps"},
      {"schedule_free_adamw", {{"weight_lr_power", -2.0}}, "optimizer.weight_lr_power"},
      {"schedule_free_adamw", {{"r", -1.0}}, "optimizer.r"},
  };
  for (const Case& c : cases) {
    std::string message = error_message([&] { normalize(c.optimizer, c.hyperparameters); });
    EXPECT_NE(message.find(c.key), std::string::npos) << c.optimizer << " " << c.hyperparameters.dump() << ": " << message;
  }
}

TEST(Optimizers, ScalarStateIsCheckedOnLoad) {
  auto simplified = make_optimizer("simplified_ademamix", Json::object(), 4, {{0, 4, true}});
  EXPECT_THROW(simplified->load_scalar_state(Json{{"n", 1.0}}), Error);
  EXPECT_THROW(simplified->load_scalar_state(Json{{"n", 1.0}, {"d", 0.5}, {"extra", 1}}), Error);
  auto adamw = make_optimizer("adamw", Json::object(), 4, {{0, 4, true}});
  EXPECT_THROW(adamw->load_scalar_state(Json{{"n", 1.0}}), Error);
  auto schedule_free = make_optimizer("schedule_free_adamw", Json::object(), 4, {{0, 4, true}});
  EXPECT_THROW(schedule_free->load_scalar_state(Json{{"steps", 1}, {"weight_sum", 1.0}, {"lr_max", 1.0}}), Error);
  EXPECT_THROW(schedule_free->load_scalar_state(
                   Json{{"steps", -1}, {"weight_sum", 1.0}, {"lr_max", 1.0}, {"eval_mode", false}}),
               Error);
}

// For every optimizer but schedule-free, the evaluation point is the
// training point: the conversions leave the parameters alone.
TEST(Optimizers, EvalParamsAreTrainParamsExceptScheduleFree) {
  for (const std::string& name : optimizer_names()) {
    if (name == "schedule_free_adamw") continue;
    SCOPED_TRACE(name);
    auto optimizer = make_optimizer(name, Json::object(), 50, {{0, 50, true}});
    auto params = test::random_normal_vector(50, 3);
    optimizer->step(params, test::random_normal_vector(50, 4), StepInfo{1, 1e-3f});
    const auto trained = params;
    optimizer->to_eval_params(params);
    EXPECT_TRUE(test::same_bits(params, trained));
    optimizer->to_train_params(params);
    EXPECT_TRUE(test::same_bits(params, trained));
  }
}

// ---------------------------------------------------------------- AdEMAMix ----

TEST(Ademamix, BetaOneZeroStoresNoFastMomentum) {
  auto without_m1 = make_optimizer("ademamix", Json{{"beta1", 0.0}}, 8, {{0, 8, true}});
  EXPECT_EQ(buffer_names(*without_m1), (std::vector<std::string>{"m2", "nu"}));
  auto adamw = make_optimizer("adamw", Json::object(), 8, {{0, 8, true}});
  EXPECT_EQ(without_m1->state_buffers().size(), adamw->state_buffers().size());
  auto with_m1 = make_optimizer("ademamix", Json::object(), 8, {{0, 8, true}});
  EXPECT_EQ(buffer_names(*with_m1), (std::vector<std::string>{"m1", "m2", "nu"}));
  for (const auto& buffer : with_m1->state_buffers()) EXPECT_EQ(buffer.data.size(), 8u);
}

// -------------------------------------------------------------------- MARS ----

Json mars_hyperparameters(bool clip, double weight_decay) {
  return Json{{"lr", 1e-3},   {"beta1", 0.9},           {"beta2", 0.999},
              {"eps", 1e-8},  {"weight_decay", weight_decay}, {"gamma", 0.5},
              {"clip_corrected_gradient", clip}};
}

// At step 1 there is no previous gradient: the paper's x_1 = x_0 makes the
// correction zero, so the step is AdamW's own.
TEST(Mars, FirstStepIsAdamw) {
  const size_t size = 100;
  auto mars = make_optimizer("mars", mars_hyperparameters(false, 0.1), size, {{0, size, true}});
  auto adamw = make_optimizer(
      "adamw", Json{{"lr", 1e-3}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}, {"weight_decay", 0.1}}, size,
      {{0, size, true}});
  auto mars_params = test::random_normal_vector(size, 5);
  auto adamw_params = mars_params;
  mars->step(mars_params, test::random_normal_vector(size, 6), StepInfo{1, 1e-3f});
  adamw->step(adamw_params, test::random_normal_vector(size, 6), StepInfo{1, 1e-3f});
  EXPECT_TRUE(test::same_bits(mars_params, adamw_params));
  // From step 2 on, the correction γ·β1/(1−β1)·(g − g_prev) is not zero.
  mars->step(mars_params, test::random_normal_vector(size, 7), StepInfo{2, 1e-3f});
  adamw->step(adamw_params, test::random_normal_vector(size, 7), StepInfo{2, 1e-3f});
  EXPECT_FALSE(test::same_bits(mars_params, adamw_params));
}

// The clipping norm is over the optimizer's whole range: splitting the range
// into segments changes nothing.
TEST(Mars, ClipNormSpansTheWholeRange) {
  const size_t size = 60;
  auto whole = make_optimizer("mars", mars_hyperparameters(true, 0.0), size, {{0, size, true}});
  auto split = make_optimizer("mars", mars_hyperparameters(true, 0.0), size,
                              {{0, 10, true}, {10, 30, false}, {40, 20, true}});
  auto whole_params = test::random_normal_vector(size, 8);
  auto split_params = whole_params;
  for (int64_t t = 1; t <= 5; ++t) {
    whole->step(whole_params, test::random_normal_vector(size, 10 + t), StepInfo{t, 1e-3f});
    split->step(split_params, test::random_normal_vector(size, 10 + t), StepInfo{t, 1e-3f});
  }
  EXPECT_TRUE(test::same_bits(whole_params, split_params));
}

// With every ‖c‖ above 1, clipping makes c a unit vector, so scaling all
// gradients by 10 changes neither the trajectory nor the moments (up to
// rounding); unclipped, m1 would be ten times larger.
TEST(Mars, ClippedUpdateDoesNotDependOnTheGradientScale) {
  const size_t size = 60;
  auto base = make_optimizer("mars", mars_hyperparameters(true, 0.0), size, {{0, size, true}});
  auto scaled = make_optimizer("mars", mars_hyperparameters(true, 0.0), size, {{0, size, true}});
  auto base_params = test::random_normal_vector(size, 9);
  auto scaled_params = base_params;
  for (int64_t t = 1; t <= 5; ++t) {
    auto grads = test::random_normal_vector(size, 20 + t);
    base->step(base_params, grads, StepInfo{t, 1e-3f});
    for (float& g : grads) g *= 10.0f;
    scaled->step(scaled_params, grads, StepInfo{t, 1e-3f});
  }
  for (size_t i = 0; i < size; ++i) EXPECT_NEAR(scaled_params[i], base_params[i], 1e-6) << "element " << i;
  auto base_state = base->state_buffers();
  auto scaled_state = scaled->state_buffers();
  ASSERT_EQ(base_state[0].name, "m1");
  for (size_t i = 0; i < size; ++i) EXPECT_NEAR(scaled_state[0].data[i], base_state[0].data[i], 1e-6);
}

// ------------------------------------------------------------ Schedule-free ----

Json schedule_free_constant_lr() {
  return Json{{"lr", 0.01}, {"weight_decay", 0.0}, {"r", 0.0}, {"weight_lr_power", 2.0}};
}

// With a constant lr and no warmup, c_{t+1} = 1/t: the evaluation point x
// after T steps is the plain average of z after steps 1..T.
TEST(ScheduleFree, EvalParamsAreTheAverageOfZ) {
  const size_t size = 40;
  const int64_t steps = 20;
  auto optimizer = make_optimizer("schedule_free_adamw", schedule_free_constant_lr(), size, {{0, size, true}});
  auto params = test::random_normal_vector(size, 11);
  std::vector<double> z_sum(size, 0.0);
  for (int64_t t = 1; t <= steps; ++t) {
    optimizer->step(params, test::random_normal_vector(size, 30 + t), StepInfo{t, 0.01f});
    auto buffers = optimizer->state_buffers();
    ASSERT_EQ(buffers[0].name, "z");
    for (size_t i = 0; i < size; ++i) z_sum[i] += buffers[0].data[i];
  }
  auto x = params;
  optimizer->to_eval_params(x);
  for (size_t i = 0; i < size; ++i) {
    EXPECT_NEAR(x[i], z_sum[i] / static_cast<double>(steps), 1e-5) << "element " << i;
  }
  // y = (1−β1)·z + β1·x, so x moved away from y.
  EXPECT_FALSE(test::same_bits(x, params));
}

TEST(ScheduleFree, ConvertsBetweenTrainAndEvalPoints) {
  const size_t size = 40;
  auto optimizer = make_optimizer("schedule_free_adamw", Json::object(), size, {{0, size, true}});
  auto params = test::random_normal_vector(size, 12);
  const auto initial = params;
  // Before the first step x = y = z.
  optimizer->to_eval_params(params);
  EXPECT_TRUE(test::same_bits(params, initial));
  EXPECT_THROW(optimizer->step(params, test::random_normal_vector(size, 13), StepInfo{1, 1e-3f}), std::logic_error);
  optimizer->to_train_params(params);
  for (int64_t t = 1; t <= 3; ++t) optimizer->step(params, test::random_normal_vector(size, 13 + t), StepInfo{t, 1e-3f});
  const auto y = params;
  optimizer->to_eval_params(params);
  const auto x = params;
  optimizer->to_eval_params(params);  // already x: nothing happens
  EXPECT_TRUE(test::same_bits(params, x));
  EXPECT_THROW(optimizer->step(params, test::random_normal_vector(size, 20), StepInfo{4, 1e-3f}), std::logic_error);
  EXPECT_EQ(optimizer->scalar_state().at("eval_mode"), true);
  optimizer->to_train_params(params);
  optimizer->to_train_params(params);  // already y: nothing happens
  for (size_t i = 0; i < size; ++i) EXPECT_NEAR(params[i], y[i], 1e-6 * (1 + std::abs(y[i]))) << "element " << i;
  EXPECT_EQ(optimizer->scalar_state().at("eval_mode"), false);
  EXPECT_NO_THROW(optimizer->step(params, test::random_normal_vector(size, 20), StepInfo{4, 1e-3f}));
}

// The protocol optimizer.hpp documents: a checkpoint written in eval mode
// (weights = x) and resumed with to_train_params continues the run that
// switched back to y after writing it, bit for bit.
TEST(ScheduleFree, CheckpointWrittenInEvalModeResumesBitExactly) {
  const size_t size = 40;
  const Json hyperparameters{{"warmup_steps", 4}, {"lr", 0.01}};
  const std::vector<ParamSegment> segments = {{0, 25, true}, {25, 15, false}};
  auto original = make_optimizer("schedule_free_adamw", hyperparameters, size, segments);
  auto params = test::random_normal_vector(size, 13);
  for (int64_t t = 1; t <= 6; ++t) original->step(params, test::random_normal_vector(size, 40 + t), StepInfo{t, 0.01f});
  original->to_eval_params(params);
  auto checkpoint_params = params;  // written to the checkpoint: x
  auto restored = make_optimizer("schedule_free_adamw", hyperparameters, size, segments);
  copy_state(*original, *restored);
  original->to_train_params(params);
  restored->to_train_params(checkpoint_params);
  EXPECT_TRUE(test::same_bits(params, checkpoint_params));
  for (int64_t t = 7; t <= 12; ++t) {
    auto grads = test::random_normal_vector(size, 40 + t);
    original->step(params, grads, StepInfo{t, 0.01f});
    restored->step(checkpoint_params, grads, StepInfo{t, 0.01f});
  }
  EXPECT_TRUE(test::same_bits(params, checkpoint_params));
  expect_same_state(*original, *restored);
}

}  // namespace
}  // namespace emix
