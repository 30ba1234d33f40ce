// The fused CUDA optimizer updates (src/optim/cuda/) against the CPU
// optimizers, for every registered optimizer: bf16 gradients times a
// grad_scale in, fp32 master weights and state on the device, bf16 weights
// out. The CPU runs the same per-element math header on the same inputs
// (the bf16 gradients as floats, times grad_scale in float).
//
// Error bound: rel err ≤ 1e-5 (‖device − cpu‖/‖cpu‖ per array) for the
// master weights and every state buffer after 5 steps. Both sides compute in
// fp32 from the same float coefficients; they differ only where nvcc
// contracts a·b + c into one FMA (one rounding instead of two, ~6e-8
// relative per operation) and in sqrtf/division rounding, a few ulps per
// step. (Lion's sign could flip where β1·m + (1−β1)·g is within such an
// error of 0: one element moving by 2·lr adds ~4e-6 to the relative error
// here, still inside the bound.)
// The bf16 weights are checked bit-exactly: each must be the stochastic
// rounding of the device's own master value with the bits of
// (seed, step, element_offset + i), computed here by the same header.
// AdEMAMix's m2 stored in bf16 or int8 blocks (m2_dtype "bfloat16", "int8")
// is checked bit-exactly against the CPU's: both compute its average with
// one explicit FMA and round it with the same bits (the CPU is given the
// same seed and element_offset through StepInfo).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_test_support.hpp"
#include "kernels/bf16_rounding.hpp"
#include "optim/optimizer.hpp"

namespace emix {
namespace {

using test::DeviceBuffer;

constexpr int kSteps = 5;
constexpr float kGradScale = 0.37f;  // not a power of two: g·grad_scale rounds
constexpr uint64_t kSeed = 1234;
constexpr size_t kElementOffset = 17;
constexpr double kTolerance = 1e-5;

// Awkward sizes: no segment is a multiple of 4, so the second and third
// start off the 16-byte boundary (the kernel's peeled head and tail).
std::vector<ParamSegment> awkward_segments() {
  return {{0, 1001, true}, {1001, 37, false}, {1038, 2049, true}};
}
constexpr size_t kSize = 1001 + 37 + 2049;

// The defaults, with every warmup (a null "t_*" or "warmup_steps") set to 3
// steps, so that 5 steps cover it both running and finished.
Json hyperparameters_with_warmups(const std::string& name, Json overrides = Json::object()) {
  const OptimizerSpec& spec = find_optimizer(name);
  Json hp = spec.normalize(overrides);
  for (auto it = hp.begin(); it != hp.end(); ++it) {
    if (it.value().is_null() && (it.key().rfind("t_", 0) == 0 || it.key() == "warmup_steps")) it.value() = 3;
  }
  return spec.normalize(hp);
}

std::vector<float> initial_params() { return test::random_floats(kSize, 1, 1.0f); }

// Step t's bf16 gradients (bits), with every 97th element exactly zero (the
// zero-gradient paths: AdEMAMix's m2 guard, Lion's sign(0)).
std::vector<cuda::bf16> bf16_gradients(int t) {
  std::vector<float> grads = test::random_floats(kSize, 100 + static_cast<uint64_t>(t), 2.0f);
  for (size_t i = 0; i < grads.size(); i += 97) grads[i] = 0.0f;
  return test::to_bf16(grads);
}

// What the CPU optimizer is given: the bf16 gradients times grad_scale, in float.
std::vector<float> cpu_gradients(int t) {
  std::vector<float> grads = test::to_float(bf16_gradients(t));
  for (float& g : grads) g *= kGradScale;
  return grads;
}

float step_lr(const Json& hp) { return hp.at("lr").get<float>(); }

// The CPU's step t, with the rounding seed and element offset the device is given.
StepInfo cpu_step_info(int t, const Json& hp) { return StepInfo{t, step_lr(hp), kSeed, kElementOffset}; }

struct Snapshot {
  std::vector<float> master;
  std::vector<uint16_t> params;  // bf16 bits (device runs only)
  std::vector<std::string> names;
  std::vector<std::vector<float>> state;
};

Snapshot snapshot_state(Optimizer& optimizer, std::vector<float> master) {
  Snapshot s;
  s.master = std::move(master);
  optimizer.copy_state_to_host();
  for (const StateBuffer& buffer : optimizer.state_buffers()) {
    s.names.push_back(buffer.name);
    s.state.emplace_back(buffer.data.begin(), buffer.data.end());
  }
  return s;
}

std::vector<uint16_t> bits_of(const std::vector<cuda::bf16>& x) {
  std::vector<uint16_t> bits(x.size());
  std::memcpy(bits.data(), x.data(), x.size() * sizeof(uint16_t));
  return bits;
}

Snapshot run_cpu(const std::string& name, const Json& hp, int steps = kSteps) {
  auto optimizer = find_optimizer(name).create(hp, kSize, awkward_segments());
  std::vector<float> params = initial_params();
  for (int t = 1; t <= steps; ++t) optimizer->step(params, cpu_gradients(t), cpu_step_info(t, hp));
  return snapshot_state(*optimizer, params);
}

// The device's arrays for a run, `shift` elements into larger allocations:
// shift 1 puts the master weights, gradients and bf16 weights off the
// alignment of the freshly allocated state, which forces the kernel's
// one-element path.
struct DeviceArrays {
  DeviceArrays(size_t shift, const std::vector<float>& master_values)
      : shift(shift), master(kSize + shift), grads(kSize + shift), params(kSize + shift) {
    std::vector<float> padded(kSize + shift, 0.0f);
    std::copy(master_values.begin(), master_values.end(), padded.begin() + static_cast<std::ptrdiff_t>(shift));
    master.upload(padded);
    params.poison();
    EMIX_CUDA_CHECK(cudaDeviceSynchronize());  // the optimizer's stream does not wait for the default one
  }

  DeviceStep step(cudaStream_t stream) {
    DeviceStep s;
    s.master = master.get() + shift;
    s.grads = grads.get() + shift;
    s.params_bf16 = params.get() + shift;
    s.grad_scale = kGradScale;
    s.rounding_seed = kSeed;
    s.element_offset = kElementOffset;
    s.stream = stream;
    return s;
  }

  void upload_gradients(int t) {
    // The previous step's kernel (on a non-blocking stream, which the
    // default stream's copy does not wait for) may still read the gradients.
    EMIX_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<cuda::bf16> padded(kSize + shift, test::to_bf16(0.0f));
    std::vector<cuda::bf16> g = bf16_gradients(t);
    std::copy(g.begin(), g.end(), padded.begin() + static_cast<std::ptrdiff_t>(shift));
    grads.upload(padded);
    EMIX_CUDA_CHECK(cudaDeviceSynchronize());
  }

  std::vector<float> master_values() const {
    std::vector<float> all = master.download();
    return {all.begin() + static_cast<std::ptrdiff_t>(shift), all.end()};
  }
  std::vector<uint16_t> param_bits() const {
    std::vector<uint16_t> all = bits_of(params.download());
    return {all.begin() + static_cast<std::ptrdiff_t>(shift), all.end()};
  }

  size_t shift;
  DeviceBuffer<float> master;
  DeviceBuffer<cuda::bf16> grads;
  DeviceBuffer<cuda::bf16> params;
};

class Stream {
 public:
  Stream() { EMIX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

Snapshot run_device(const std::string& name, const Json& hp, size_t shift = 0) {
  Stream stream;
  auto optimizer = find_optimizer(name).create(hp, kSize, awkward_segments(), Placement::device);
  EXPECT_EQ(optimizer->placement(), Placement::device);
  DeviceArrays arrays(shift, initial_params());
  for (int t = 1; t <= kSteps; ++t) {
    arrays.upload_gradients(t);
    optimizer->step_device(arrays.step(stream.get()), StepInfo{t, step_lr(hp)});
  }
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  Snapshot s = snapshot_state(*optimizer, arrays.master_values());
  s.params = arrays.param_bits();
  return s;
}

void expect_close(const Snapshot& device, const Snapshot& cpu, const std::string& what) {
  EXPECT_LE(test::relative_error(device.master, cpu.master), kTolerance) << what << ": master weights";
  ASSERT_EQ(device.names, cpu.names) << what;
  for (size_t b = 0; b < cpu.state.size(); ++b) {
    EXPECT_LE(test::relative_error(device.state[b], cpu.state[b]), kTolerance) << what << ": " << cpu.names[b];
  }
}

void expect_identical(const Snapshot& a, const Snapshot& b, const std::string& what) {
  auto same = [](const auto& x, const auto& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(x[0])) == 0;
  };
  EXPECT_TRUE(same(a.master, b.master)) << what << ": master weights";
  EXPECT_TRUE(same(a.params, b.params)) << what << ": bf16 weights";
  ASSERT_EQ(a.state.size(), b.state.size()) << what;
  for (size_t i = 0; i < a.state.size(); ++i) EXPECT_TRUE(same(a.state[i], b.state[i])) << what << ": " << a.names[i];
}

// Every bf16 weight is the stochastic rounding of its master value with the
// bits of the last step: one of the master's two bf16 neighbours, and the
// one the header picks.
void expect_stochastically_rounded(const Snapshot& device, int step, const std::string& what) {
  const uint64_t key = rounding_key(kSeed, static_cast<uint64_t>(step));
  size_t mismatches = 0;
  for (size_t i = 0; i < kSize; ++i) {
    const uint16_t expected = bf16_bits_stochastic(device.master[i], rounding_bits(key, kElementOffset + i));
    mismatches += device.params[i] != expected;
  }
  EXPECT_EQ(mismatches, 0u) << what << ": bf16 weights that are not the master's stochastic rounding";
}

struct Case {
  std::string name;
  Json hp;
  std::string label;
};

std::vector<Case> cases() {
  std::vector<Case> result;
  for (const std::string& name : optimizer_names()) result.push_back({name, hyperparameters_with_warmups(name), name});
  // AdEMAMix without its fast average: m1 is absent (a null state pointer).
  result.push_back({"ademamix", hyperparameters_with_warmups("ademamix", {{"beta1", 0.0}}), "ademamix beta1=0"});
  // AdEMAMix with its zero-gradient guard on.
  result.push_back({"ademamix", hyperparameters_with_warmups("ademamix", {{"zero_grad_m2_beta", 0.9}}),
                    "ademamix zero_grad_m2_beta"});
  // AdEMAMix with m2 stored in bf16, with and without m1.
  result.push_back({"ademamix", hyperparameters_with_warmups("ademamix", {{"m2_dtype", "bfloat16"}}),
                    "ademamix m2_dtype=bfloat16"});
  result.push_back({"ademamix",
                    hyperparameters_with_warmups("ademamix", {{"m2_dtype", "bfloat16"}, {"beta1", 0.0}}),
                    "ademamix m2_dtype=bfloat16 beta1=0"});
  // MARS without clipping (no norm pass).
  result.push_back({"mars", hyperparameters_with_warmups("mars", {{"clip_corrected_gradient", false}}),
                    "mars unclipped"});
  return result;
}

TEST(CudaOptimizers, EveryOptimizerMatchesTheCpu) {
  EMIX_REQUIRE_GPU();
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.label);
    const Snapshot cpu = run_cpu(c.name, c.hp);
    Snapshot device;
    try {
      device = run_device(c.name, c.hp);
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.label << ": " << e.what();
      continue;
    }
    expect_close(device, cpu, c.label);
    expect_stochastically_rounded(device, kSteps, c.label);
    expect_identical(run_device(c.name, c.hp), device, c.label + " (second run)");
    expect_identical(run_device(c.name, c.hp, 1), device, c.label + " (unaligned arrays)");
  }
}

// A ZeRO-style split: two optimizers over [0, 1500) and [1500, kSize) with
// element_offset set to their starts give the whole-range optimizer's bits
// (AdEMAMix with bf16 m2: its m2 too).
// `split` is where the second shard starts; int8 blocks are counted from a
// range's start, so for int8 state it must be a multiple of kInt8Block (as
// ZeRO's shard boundaries are).
void expect_shards_reproduce_the_whole_range(const std::string& name, const Json& hp, size_t split = 1500) {
  SCOPED_TRACE(name + " " + hp.dump());
  const Snapshot whole = run_device(name, hp);

  Stream stream;
  const std::vector<std::vector<ParamSegment>> shard_segments = {
      {{0, 1001, true}, {1001, 37, false}, {1038, split - 1038, true}}, {{0, kSize - split, true}}};
  const size_t starts[] = {0, split};
  std::vector<std::unique_ptr<Optimizer>> shards;
  for (int s = 0; s < 2; ++s) {
    const size_t size = s == 0 ? split : kSize - split;
    shards.push_back(find_optimizer(name).create(hp, size, shard_segments[s], Placement::device));
  }
  DeviceArrays arrays(0, initial_params());
  for (int t = 1; t <= kSteps; ++t) {
    arrays.upload_gradients(t);
    for (int s = 0; s < 2; ++s) {
      DeviceStep step = arrays.step(stream.get());
      step.master += starts[s];
      step.grads = static_cast<const cuda::bf16*>(step.grads) + starts[s];
      step.params_bf16 = static_cast<cuda::bf16*>(step.params_bf16) + starts[s];
      step.element_offset += starts[s];
      shards[s]->step_device(step, StepInfo{t, step_lr(hp)});
    }
  }
  EMIX_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  EXPECT_EQ(arrays.master_values(), whole.master);
  EXPECT_EQ(arrays.param_bits(), whole.params);
  const Snapshot low = snapshot_state(*shards[0], {});
  const Snapshot high = snapshot_state(*shards[1], {});
  for (size_t b = 0; b < whole.state.size(); ++b) {
    std::vector<float> joined = low.state[b];
    joined.insert(joined.end(), high.state[b].begin(), high.state[b].end());
    EXPECT_EQ(joined, whole.state[b]) << whole.names[b];
  }
}

TEST(CudaOptimizers, ShardsReproduceTheWholeRange) {
  EMIX_REQUIRE_GPU();
  expect_shards_reproduce_the_whole_range("adamw", hyperparameters_with_warmups("adamw"));
  expect_shards_reproduce_the_whole_range("ademamix",
                                          hyperparameters_with_warmups("ademamix", {{"m2_dtype", "bfloat16"}}));
  expect_shards_reproduce_the_whole_range("ademamix", hyperparameters_with_warmups("ademamix", {{"m2_dtype", "int8"}}),
                                          6 * 256);
}

// AdEMAMix's m2 in bf16 (2 bytes per parameter) or int8 blocks (a byte,
// a float per 256, and floats for the segment without weight decay) on the
// device, m2 bit-identical to the CPU's (which keeps the same values in
// floats), every bf16 value a bf16, and the master weights within
// kTolerance (checked with every case above).
TEST(CudaOptimizers, AdemamixNarrowM2IsBitIdenticalToTheCpu) {
  EMIX_REQUIRE_GPU();
  for (const Json& overrides : {Json{{"m2_dtype", "bfloat16"}},
                                Json{{"m2_dtype", "bfloat16"}, {"beta1", 0.0}, {"zero_grad_m2_beta", 0.9}},
                                Json{{"m2_dtype", "int8"}},
                                Json{{"m2_dtype", "int8"}, {"beta1", 0.0}, {"zero_grad_m2_beta", 0.9}}}) {
    SCOPED_TRACE(overrides.dump());
    const Json hp = hyperparameters_with_warmups("ademamix", overrides);
    const bool has_m1 = hp.at("beta1").get<double>() != 0.0;
    const bool int8 = hp.at("m2_dtype") == "int8";
    const uint64_t m2_bytes = int8 ? kSize + 4 * ((kSize + 255) / 256) + 4 * 37 : 2 * kSize;
    EXPECT_EQ(find_optimizer("ademamix").create(hp, kSize, awkward_segments(), Placement::device)->state_bytes(),
              (has_m1 ? 8 : 4) * kSize + m2_bytes);
    const Snapshot cpu = run_cpu("ademamix", hp);
    const Snapshot device = run_device("ademamix", hp);
    expect_close(device, cpu, "ademamix bf16 m2");
    const size_t m2 = has_m1 ? 1 : 0;
    ASSERT_EQ(cpu.names.at(m2), "m2");
    size_t mismatches = 0, not_bf16 = 0;
    for (size_t i = 0; i < kSize; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &device.state[m2][i], sizeof bits);
      not_bf16 += (bits & 0xFFFFu) != 0;
      mismatches += std::memcmp(&device.state[m2][i], &cpu.state[m2][i], sizeof(float)) != 0;
    }
    if (!int8) {
      EXPECT_EQ(not_bf16, 0u) << "m2 values that are not bf16";
    }
    EXPECT_EQ(mismatches, 0u) << "m2 values that differ from the CPU's";
  }
}

// Checkpoints move between placements: the CPU's state after 4 steps,
// loaded into a device optimizer through its mirrors, continues like the
// CPU for a 5th step (and the device's state, read back, resumes a CPU one).
// AdEMAMix with bf16 and int8 m2 included: the CPU's m2 values go to the
// device unchanged, and come back bit-identical after the 5th step.
TEST(CudaOptimizers, StateMovesBetweenHostAndDevice) {
  EMIX_REQUIRE_GPU();
  std::vector<std::pair<std::string, Json>> runs;
  for (const std::string& name : optimizer_names()) runs.emplace_back(name, hyperparameters_with_warmups(name));
  runs.emplace_back("ademamix", hyperparameters_with_warmups("ademamix", {{"m2_dtype", "bfloat16"}}));
  runs.emplace_back("ademamix", hyperparameters_with_warmups("ademamix", {{"m2_dtype", "int8"}}));
  for (const auto& [name, hp] : runs) {
    SCOPED_TRACE(name + " " + hp.dump());
    const OptimizerSpec& spec = find_optimizer(name);

    auto cpu = spec.create(hp, kSize, awkward_segments());
    std::vector<float> params = initial_params();
    for (int t = 1; t < kSteps; ++t) cpu->step(params, cpu_gradients(t), cpu_step_info(t, hp));

    auto device = spec.create(hp, kSize, awkward_segments(), Placement::device);
    auto source = cpu->state_buffers();
    auto target = device->state_buffers();
    ASSERT_EQ(source.size(), target.size());
    for (size_t b = 0; b < source.size(); ++b) {
      ASSERT_EQ(source[b].name, target[b].name);
      std::copy(source[b].data.begin(), source[b].data.end(), target[b].data.begin());
    }
    device->load_scalar_state(cpu->scalar_state());
    device->copy_state_to_device();

    Stream stream;
    DeviceArrays arrays(0, params);
    arrays.upload_gradients(kSteps);
    device->step_device(arrays.step(stream.get()), StepInfo{kSteps, step_lr(hp)});
    cpu->step(params, cpu_gradients(kSteps), cpu_step_info(kSteps, hp));
    EMIX_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const Snapshot device_state = snapshot_state(*device, arrays.master_values());
    const Snapshot cpu_state = snapshot_state(*cpu, params);
    expect_close(device_state, cpu_state, name + " resumed");
    if (hp.value("m2_dtype", "float32") != "float32") {
      EXPECT_EQ(device_state.state.at(1), cpu_state.state.at(1)) << "m2 after resuming";
    }
    EXPECT_EQ(device->scalar_state(), cpu->scalar_state());
  }
}

// Schedule-free's y → x → y conversion on the device: the master weights
// match the CPU's conversion, and the bf16 weights are the master's
// round-to-nearest-even.
TEST(CudaOptimizers, ScheduleFreeConvertsLikeTheCpu) {
  EMIX_REQUIRE_GPU();
  const std::string name = "schedule_free_adamw";
  const Json hp = hyperparameters_with_warmups(name);
  const OptimizerSpec& spec = find_optimizer(name);

  auto cpu = spec.create(hp, kSize, awkward_segments());
  auto device = spec.create(hp, kSize, awkward_segments(), Placement::device);
  ASSERT_TRUE(device->has_eval_params());
  Stream stream;
  DeviceArrays arrays(0, initial_params());
  std::vector<float> params = initial_params();
  for (int t = 1; t <= kSteps; ++t) {
    arrays.upload_gradients(t);
    device->step_device(arrays.step(stream.get()), StepInfo{t, step_lr(hp)});
    cpu->step(params, cpu_gradients(t), StepInfo{t, step_lr(hp)});
  }

  auto expect_converted = [&](const std::string& what) {
    EMIX_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const std::vector<float> master = arrays.master_values();
    EXPECT_LE(test::relative_error(master, params), kTolerance) << what;
    const std::vector<uint16_t> bits = arrays.param_bits();
    size_t mismatches = 0;
    for (size_t i = 0; i < kSize; ++i) {
      cuda::bf16 nearest = test::to_bf16(master[i]);
      uint16_t nearest_bits;
      std::memcpy(&nearest_bits, &nearest, sizeof nearest_bits);
      mismatches += bits[i] != nearest_bits;
    }
    EXPECT_EQ(mismatches, 0u) << what << ": bf16 weights that are not the master's nearest bf16";
  };

  cpu->to_eval_params(params);
  device->to_eval_params_device(arrays.step(stream.get()));
  expect_converted("y → x");
  EXPECT_EQ(device->scalar_state(), cpu->scalar_state());
  // Stepping while the buffer holds x is refused on both placements.
  EXPECT_THROW(device->step_device(arrays.step(stream.get()), StepInfo{kSteps + 1, step_lr(hp)}), std::logic_error);
  device->to_eval_params_device(arrays.step(stream.get()));  // a second call does nothing
  expect_converted("y → x twice");

  cpu->to_train_params(params);
  device->to_train_params_device(arrays.step(stream.get()));
  expect_converted("x → y");
  EXPECT_EQ(device->scalar_state(), cpu->scalar_state());
}

TEST(CudaOptimizers, PlacementsRefuseTheOtherStep) {
  EMIX_REQUIRE_GPU();
  const Json hp = hyperparameters_with_warmups("adamw");
  auto device = find_optimizer("adamw").create(hp, kSize, awkward_segments(), Placement::device);
  std::vector<float> params = initial_params();
  EXPECT_THROW(device->step(params, cpu_gradients(1), StepInfo{1, 1e-3f}), std::logic_error);
  auto host = find_optimizer("adamw").create(hp, kSize, awkward_segments());
  DeviceArrays arrays(0, params);
  EXPECT_THROW(host->step_device(arrays.step(nullptr), StepInfo{1, 1e-3f}), std::logic_error);
}

}  // namespace
}  // namespace emix
