// The trainer and data parallelism around the overlapped gradient exchange
// of GPU runs (DataParallel::overlap_next_backward, reduce_gradients): which
// ranges go to DeviceCollectives::reduce_bf16, and when. On a GPU the
// collectives sum the gradients; here a recording stand-in counts how often
// each element is reduced, and a stand-in GPU backend (the CPU model, with
// host vectors for its "device" buffers) reports its groups as Gpt2Cuda
// does. So what runs on GPUs only is pinned down on the CPU: every gradient
// is reduced exactly once per step, never while an earlier micro-batch of
// the step is still to add to it, and everything is finished before the
// sums are used.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "distributed/communicator.hpp"
#include "distributed/device_collectives.hpp"
#include "model/gpt2_config.hpp"
#include "model/gpt2_cpu.hpp"
#include "optim/optimizer.hpp"
#include "optim/grad_clip.hpp"
#include "test_support.hpp"
#include "train/backend.hpp"
#include "train/trainer.hpp"

namespace emix {
namespace {

// An optimizer of no state that changes nothing, placed where it is asked
// without allocating (a real one on "device" would need a GPU): the updates
// are not what is tested.
class NoUpdate final : public Optimizer {
 public:
  NoUpdate(size_t size, Placement placement) : size_(size), placement_(placement) {}
  std::string_view name() const override { return "no_update"; }
  Placement placement() const override { return placement_; }
  void step(std::span<float>, std::span<const float>, const StepInfo&) override {}
  void step_device(const DeviceStep&, const StepInfo&) override {}
  size_t size() const override { return size_; }
  uint64_t state_bytes() const override { return 0; }
  std::vector<StateBuffer> state_buffers() override { return {}; }

 private:
  size_t size_;
  Placement placement_;
};

EMIX_REGISTER_OPTIMIZER(OptimizerSpec{
    "no_update", "changes nothing (tests/test_gradient_overlap.cpp)",
    [](const Json& hyperparameters) {
      Json complete = hyperparameters;
      complete["weight_decay"] = 0.0;
      return complete;
    },
    [](const Json&, size_t size, std::vector<ParamSegment>, Placement placement) -> std::unique_ptr<Optimizer> {
      return std::make_unique<NoUpdate>(size, placement);
    },
    nullptr});

// What the backend is doing, for the collectives to check against.
struct BackwardState {
  int micro_batch = 0;       // of the current step, from 1; 0 before the first
  bool in_backward = false;  // inside forward_backward
};

// The CPU model behind the interface of a GPU backend. Its backward reports
// the first `groups_reported` groups of gradient_groups_in_backward_order
// (Gpt2Cuda reports all of them; a backend may report none).
class ReportingBackend final : public ModelBackend {
 public:
  // sums_used: called where the summed gradients are first read (the norm).
  ReportingBackend(const ModelConfig& config, size_t groups_reported, BackwardState& state,
                   std::function<void()> sums_used)
      : model_(config),
        groups_(gradient_groups_in_backward_order(model_.layout(), config.n_layer)),
        groups_reported_(std::min(groups_reported, groups_.size())),
        state_(state),
        sums_used_(std::move(sums_used)) {}

  const ParameterLayout& layout() const override { return model_.layout(); }
  Placement placement() const override { return Placement::device; }
  std::vector<std::string> describe(int, int, size_t) const override { return {"device: reporting test backend"}; }
  void init_weights(uint64_t seed) override { model_.init_weights(seed); }
  void zero_grad() override {
    model_.zero_grad();
    state_.micro_batch = 0;
  }
  float forward_backward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T,
                         float grad_scale) override {
    const GradientsReady ready = std::exchange(ready_, nullptr);
    ++state_.micro_batch;
    state_.in_backward = true;
    const float loss = model_.forward(inputs, targets, B, T);
    model_.backward(grad_scale);
    for (size_t g = 0; g < groups_reported_ && ready; ++g) ready(groups_[g]);
    state_.in_backward = false;
    return loss;
  }
  float forward(std::span<const int32_t> inputs, std::span<const int32_t> targets, int B, int T) override {
    return model_.forward(inputs, targets, B, T);
  }
  // Stage 0's norm, and stage 1's (of this rank's shard).
  double grad_norm() override {
    sums_used_();
    return global_norm(model_.grads());
  }
  double grad_norm_squared(size_t begin, size_t count) override {
    sums_used_();
    const std::span<const float> grads = model_.grads();
    double sum = 0.0;
    for (size_t i = begin; i < std::min(begin + count, grads.size()); ++i) sum += static_cast<double>(grads[i]) * grads[i];
    return sum;
  }
  DeviceBuffers padded_device_buffers(size_t padded) override {
    master_.resize(padded);
    params_.resize(padded);
    grads_.resize(padded);
    return {master_.data(), params_.data(), grads_.data(), 0, nullptr};
  }
  void report_gradients_of_next_backward(GradientsReady ready) override { ready_ = std::move(ready); }
  void step(Optimizer&, const StepInfo&, float) override {}
  std::span<float> weights() override { return model_.params(); }
  void weights_changed(int64_t) override {}
  void master_changed(int64_t) override {}
  void pull_optimizer_state(Optimizer&) override {}
  void push_optimizer_state(Optimizer&) override {}
  void to_eval_params(Optimizer&) override {}
  void to_train_params(Optimizer&) override {}
  Gpt2Cpu& sampling_model() override { return model_; }

 private:
  Gpt2Cpu model_;
  std::vector<std::vector<ParamRange>> groups_;
  size_t groups_reported_;
  BackwardState& state_;
  std::function<void()> sums_used_;
  GradientsReady ready_;
  std::vector<float> master_;
  std::vector<uint16_t> params_;
  std::vector<uint16_t> grads_;
};

// Counts how often each element of the padded gradients is reduced in a
// step, and checks it where a step's sums are first used (sums_used()).
class RecordingCollectives final : public DeviceCollectives {
 public:
  RecordingCollectives(const BackwardState& state, int micro_batches) : state_(state), micro_batches_(micro_batches) {}

  void reduce_bf16(void*, const ShardPlan& plan, std::span<const ParamRange> ranges, void*) override {
    if (state_.in_backward) {
      EXPECT_EQ(state_.micro_batch, micro_batches_) << "reduced while a later micro-batch will still add to it";
      ++reduced_during_backward_;
    }
    if (reduced_.empty()) {
      reduced_.assign(plan.padded_total(), 0);
      total_ = plan.total;
    }
    for (const ParamRange& range : ranges) {
      for (size_t i = range.begin; i < range.begin + range.count; ++i) ++reduced_[i];
    }
    finished_ = false;
  }
  void finish_reductions() override { finished_ = true; }
  void all_gather(void*, size_t, void*) override {}

  void sums_used() {
    EXPECT_TRUE(finished_) << "sums used before the reductions finished";
    EXPECT_FALSE(reduced_.empty()) << "nothing reduced";
    for (size_t i = 0; i < reduced_.size(); ++i) {
      ASSERT_EQ(reduced_[i], i < total_ ? 1 : 0) << "element " << i << " of " << total_;
    }
    std::fill(reduced_.begin(), reduced_.end(), 0);
    ++steps_checked_;
  }

  int steps_checked() const { return steps_checked_; }
  int reduced_during_backward() const { return reduced_during_backward_; }

 private:
  const BackwardState& state_;
  int micro_batches_;
  std::vector<int> reduced_;
  size_t total_ = 0;
  bool finished_ = true;
  int steps_checked_ = 0;
  int reduced_during_backward_ = 0;
};

// One process (make_local_communicator) whose communicator offers
// collectives on GPU buffers, as NCCL's does.
class CommunicatorWithCollectives final : public Communicator {
 public:
  explicit CommunicatorWithCollectives(DeviceCollectives& collectives)
      : local_(make_local_communicator()), collectives_(collectives) {}

  int rank() const override { return local_->rank(); }
  int world_size() const override { return local_->world_size(); }
  int local_rank() const override { return local_->local_rank(); }
  std::string backend() const override { return "recording"; }
  DeviceCollectives* device_collectives() override { return &collectives_; }
  void all_reduce_sum(std::span<float> data) override { local_->all_reduce_sum(data); }
  void reduce_scatter_sum(std::span<const float> input, std::span<float> output) override {
    local_->reduce_scatter_sum(input, output);
  }
  void all_gather(std::span<const float> input, std::span<float> output) override { local_->all_gather(input, output); }
  void broadcast(std::span<float> data, int root) override { local_->broadcast(data, root); }
  void broadcast_bytes(std::span<std::byte> data, int root) override { local_->broadcast_bytes(data, root); }
  void barrier() override { local_->barrier(); }
  void all_reduce_sum(std::span<double> data) override { local_->all_reduce_sum(data); }
  bool any(bool flag) override { return local_->any(flag); }
  [[noreturn]] void abort(int code) override { local_->abort(code); }

 private:
  std::unique_ptr<Communicator> local_;
  DeviceCollectives& collectives_;
};

TEST(GradientOverlap, EveryGradientIsReducedOnceAfterItsLastMicroBatch) {
  test::TempDir dir;
  test::write_tiny_shards(dir.path());
  const Config config = Config::from_json(test::tiny_run_config(dir, "no_update", "overlap"));
  const int micro_batches = static_cast<int>(config.training.total_batch_tokens /
                                             (static_cast<int64_t>(config.training.batch_size) * config.training.seq_len));
  ASSERT_GT(micro_batches, 1) << "the test needs gradient accumulation";
  const size_t groups = static_cast<size_t>(config.model.n_layer) + 2;
  for (int stage : {0, 1}) {
    // All groups (Gpt2Cuda), some, and none (every gradient after the backward).
    for (size_t reported : {groups, size_t{2}, size_t{0}}) {
      const std::string run = "stage" + std::to_string(stage) + "_reported" + std::to_string(reported);
      SCOPED_TRACE(run);
      BackwardState state;
      RecordingCollectives collectives(state, micro_batches);
      CommunicatorWithCollectives comm(collectives);
      // The trainer builds config.device's backend: in this test binary
      // (its own executable), "cpu" becomes the stand-in, for this run.
      register_backend("cpu", [&](const Config& c) -> std::unique_ptr<ModelBackend> {
        return std::make_unique<ReportingBackend>(c.model, reported, state, [&] { collectives.sums_used(); });
      });
      Json json = test::tiny_run_config(dir, "no_update", run);
      json["training"]["zero_stage"] = stage;
      Trainer trainer(Config::from_json(json), nullptr, &comm);
      ASSERT_TRUE(trainer.run());
      EXPECT_EQ(collectives.steps_checked(), config.training.steps);
      EXPECT_EQ(collectives.reduced_during_backward(), static_cast<int>(reported) * config.training.steps);
    }
  }
}

}  // namespace
}  // namespace emix
