#pragma once
// The optimizer interface and its registry.
//
// An optimizer updates a contiguous range of the flat parameter buffer (the
// whole buffer, or one rank's shard under ZeRO) from the matching range of
// the gradient buffer. It owns its state buffers, one float per parameter
// each, and exposes them by name for checkpoints and sharding. Adding an
// optimizer is one .cpp file that implements this interface and registers
// itself with EMIX_REGISTER_OPTIMIZER; no other code changes.
//
// Placement: an optimizer lives on the host (fp32 parameters and gradients
// in host memory, step()) or on the CUDA device (bf16 mixed precision,
// step_device(): fp32 master weights and fp32 state in device memory, bf16
// gradients in, bf16 model weights out). The per-element math is the same
// header for both (src/optim/math/), and so are the state buffers' names
// and order: checkpoints move between the two.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/json_reader.hpp"
#include "optim/device_step.hpp"

namespace emix {

// A run of parameters sharing a weight-decay setting, relative to the start
// of the range the optimizer updates.
struct ParamSegment {
  size_t offset = 0;
  size_t count = 0;
  bool weight_decay = false;
};

struct StepInfo {
  int64_t step = 1;  // counts from 1
  float lr = 0.0f;   // the learning rate for this step, after the schedule
  // For state stored in bf16 on host placement (AdEMAMix's m2_dtype
  // "bfloat16"): the seed of its stochastic rounding and the global index of
  // element 0 of the range (a ZeRO shard's start). Device placement takes
  // both from DeviceStep instead; a run sets them to the same values there
  // (the trainer: training.seed and 0), so both placements round alike.
  uint64_t rounding_seed = 0;
  size_t element_offset = 0;
  // Under ZeRO (one rank's shard as the range): adds up per-block sums that
  // each rank computed over its shard (blocks of kSumOfSquaresBlock elements
  // counted from the range's start, grad_clip.hpp) in global block order and
  // returns the total over the whole parameter buffer, the same on every
  // rank. Empty when the range is the whole buffer. For optimizers whose
  // update needs a norm over all parameters (MARS): use total_of_blocks.
  std::function<double(std::span<const double> block_sums)> sum_blocks_over_shards = nullptr;
};

// The total of block_sums over the whole parameter buffer (see StepInfo).
inline double total_of_blocks(const StepInfo& info, std::span<const double> block_sums) {
  if (info.sum_blocks_over_shards) return info.sum_blocks_over_shards(block_sums);
  double total = 0.0;
  for (double sum : block_sums) total += sum;
  return total;
}

// How a state buffer is stored on device placement. Host placement always
// keeps floats (holding exactly the values the narrow formats can hold, so
// both placements compute the same state).
enum class StateStorage {
  float32,
  bfloat16,  // 2 bytes per element, rounded stochastically on every write
  // 1 byte per element plus one float scale per block of kInt8Block
  // (optim/math/blockwise_int8.hpp), for the elements of weight-decayed
  // segments (matrices and embeddings); the other segments (biases and
  // LayerNorm parameters, a fraction of a percent of a GPT-2) stay float32.
  int8_blockwise,
};

// Device bytes of `count` elements stored as `storage`; for int8_blockwise,
// `float_elements` of them are kept in float32 and the rest in blocks.
uint64_t device_state_bytes(StateStorage storage, uint64_t count, uint64_t float_elements = 0);
std::string_view storage_name(StateStorage storage);  // "fp32", "bf16", "int8"

struct StateBuffer {
  std::string name;  // "m1", "m2", "nu", ...
  std::span<float> data;
  StateStorage device_storage = StateStorage::float32;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // The registered name ("adamw", ...).
  virtual std::string_view name() const = 0;
  virtual Placement placement() const { return Placement::host; }

  // One update on the host: params and grads span the optimizer's range
  // (size() elements). Throws std::logic_error on device placement.
  virtual void step(std::span<float> params, std::span<const float> grads, const StepInfo& info) = 0;
  // One update on the device (device placement only): the same math as
  // step() on grads·grad_scale, then params_bf16 rounded from the master
  // weights. The default throws emix::Error "<name> has no CUDA update".
  virtual void step_device(const DeviceStep& step, const StepInfo& info);

  virtual size_t size() const = 0;
  // The bytes of state this optimizer holds where it lives: 4 per element of
  // each buffer state_buffers() lists, less where a buffer is stored
  // narrower on the device (AdEMAMix's m2: bf16 2, int8 about 1.02).
  virtual uint64_t state_bytes() const = 0;
  double state_bytes_per_parameter() const {
    return size() == 0 ? 0.0 : static_cast<double>(state_bytes()) / static_cast<double>(size());
  }
  // Every per-parameter buffer, for checkpoints; their contents are the
  // state. On device placement these are host mirrors of the device state:
  // call copy_state_to_host() before reading them, and copy_state_to_device()
  // after writing them (loading a checkpoint).
  virtual std::vector<StateBuffer> state_buffers() = 0;
  // Device state → the mirrors state_buffers() exposes, and back; both wait
  // for the device and are no-ops on host placement.
  virtual void copy_state_to_host() {}
  virtual void copy_state_to_device() {}
  // State that is not per-parameter (running scalars), as JSON; default none.
  virtual Json scalar_state() const { return Json::object(); }
  virtual void load_scalar_state(const Json& state);

  // Evaluation and training points. A schedule-free optimizer
  // (schedule_free_adamw) takes its gradients at a point y that differs from
  // the point x it converges to: during training the parameter buffer holds
  // y, and x is what evaluation, sampling and weights exported for inference
  // must use. These two convert the buffer in place, y → x and x → y, from
  // the optimizer's own state; for every other optimizer they do nothing
  // (x = y). `params` is the optimizer's range, as in step().
  //
  // How a trainer uses them (the calls are cheap no-ops for other optimizers,
  // so it makes them unconditionally):
  //   - call to_eval_params(params) before evaluating, sampling or writing
  //     model weights, and to_train_params(params) before the next step();
  //     step() throws std::logic_error while the buffer holds x. Calling
  //     either one twice in a row is harmless (the second does nothing).
  //   - a training checkpoint may be written in either mode: the mode is part
  //     of scalar_state(). Writing it in eval mode (weights = x, usable for
  //     inference as is) is the natural choice: a resumed run loads the
  //     weights and the optimizer state, then calls to_train_params, and
  //     continues bit-exactly the run that called to_train_params after
  //     writing the checkpoint. A resumed run must not skip that call.
  //   - the y → x → y round trip is not bit-exact (floats), but it is
  //     deterministic: a run is reproducible as long as the evaluations
  //     happen at the same steps.
  //   - under ZeRO each rank converts its own shard (the conversion is
  //     elementwise); gather the parameters after converting, as after step().
  virtual void to_eval_params(std::span<float> params) { (void)params; }
  // True when x differs from y, i.e. when the two calls above do something.
  // The trainer (src/train/trainer.cpp) then evaluates and samples at x and
  // restores y exactly from a copy afterwards, so evaluations never perturb
  // training, and checkpoints hold y as "params" plus x as "eval_params".
  virtual bool has_eval_params() const { return false; }
  virtual void to_train_params(std::span<float> params) { (void)params; }
  // The same two conversions on device placement: they convert
  // step.master in place and rewrite step.params_bf16 from it by
  // round-to-nearest-even (grads, grad_scale and rounding_seed are unused).
  // No-ops for optimizers without eval params.
  virtual void to_eval_params_device(const DeviceStep& step) { (void)step; }
  virtual void to_train_params_device(const DeviceStep& step) { (void)step; }
};

// training.zero_stage "m2" (DataParallel): an optimizer over the whole
// parameter buffer that holds its buffer "m2" for one shard only, the paper's
// minimal change for its one extra buffer. Every rank holds all the rest and
// applies the whole update; the elements' m2 comes from the rank that holds
// it. So the step comes in two halves:
//   1. update_m2_shard, on each rank for its shard: the new m2 from the
//      shard's gradients, stored, and written to m2_values as the update
//      reads it (before a narrow m2_dtype's rounding);
//   2. update_with_m2, on every rank for every shard once its m2_values have
//      arrived: every other buffer and the parameters.
// Elementwise, so the result is the unsplit step's bit for bit. Host
// placement only. state_buffers() lists "m2" with the shard's elements and
// the others with size()'s; step() throws std::logic_error.
class M2ShardedOptimizer : public Optimizer {
 public:
  // `grads` and `m2_values` span the shard.
  virtual void update_m2_shard(std::span<const float> grads, std::span<float> m2_values, const StepInfo& info) = 0;
  // params and grads span the whole range; m2_values are the new m2 of its
  // elements [begin, begin + m2_values.size()).
  virtual void update_with_m2(std::span<float> params, std::span<const float> grads, size_t begin,
                              std::span<const float> m2_values, const StepInfo& info) = 0;
};

// Hyperparameters every optimizer has, read by the trainer: the peak
// learning rate (the schedule scales it) and the decoupled weight decay.
struct CommonHyperparameters {
  double lr = 0.0;
  double weight_decay = 0.0;
};

struct OptimizerSpec {
  std::string name;
  std::string description;
  // Validates the hyperparameters (the config's optimizer section without
  // its "name" key) and returns them complete with defaults; throws an
  // emix::Error naming the bad key.
  std::function<Json(const Json& hyperparameters)> normalize;
  // Builds the optimizer over `size` parameters; `hyperparameters` is the
  // output of normalize. State buffers start at zero. Device placement
  // allocates them on the current CUDA device, and throws emix::Error "this
  // build has no CUDA backend" in a build without one.
  std::function<std::unique_ptr<Optimizer>(const Json& hyperparameters, size_t size,
                                            std::vector<ParamSegment> segments, Placement placement)>
      build;

  // For an optimizer with a state buffer named "m2", and only for one:
  // builds its M2ShardedOptimizer over `size` parameters, with m2 held for
  // [m2_begin, m2_end). Null for the others (training.zero_stage "m2" then
  // shards nothing).
  std::function<std::unique_ptr<M2ShardedOptimizer>(const Json& hyperparameters, size_t size,
                                                    std::vector<ParamSegment> segments, size_t m2_begin, size_t m2_end)>
      build_m2_sharded;

  std::unique_ptr<Optimizer> create(const Json& hyperparameters, size_t size, std::vector<ParamSegment> segments,
                                    Placement placement = Placement::host) const {
    return build(hyperparameters, size, std::move(segments), placement);
  }
};

bool register_optimizer(OptimizerSpec spec);
// Throws listing the registered names when `name` is unknown.
const OptimizerSpec& find_optimizer(std::string_view name);
std::vector<std::string> optimizer_names();

// lr and weight_decay from normalized hyperparameters.
CommonHyperparameters common_hyperparameters(const Json& normalized);

// Checks segments tile [0, size) exactly; optimizers call it on creation.
void check_segments(std::span<const ParamSegment> segments, size_t size);
// The parts of `segments` within [begin, end), relative to begin.
std::vector<ParamSegment> segments_within(std::span<const ParamSegment> segments, size_t begin, size_t end);

#define EMIX_OPTIMIZER_CONCAT_(a, b) a##b
#define EMIX_OPTIMIZER_CONCAT(a, b) EMIX_OPTIMIZER_CONCAT_(a, b)
// Registers an OptimizerSpec at program start.
#define EMIX_REGISTER_OPTIMIZER(...) \
  static const bool EMIX_OPTIMIZER_CONCAT(emix_optimizer_registered_, __LINE__) = ::emix::register_optimizer(__VA_ARGS__)

}  // namespace emix
