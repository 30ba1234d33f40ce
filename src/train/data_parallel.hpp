#pragma once
// Data parallelism over the ranks of a Communicator. Every rank runs the
// model on its own part of the global batch; this class combines the ranks'
// gradients, runs the optimizer and leaves every rank with the same
// parameters. training.zero_stage chooses who holds the optimizer state:
//
//   0  every rank holds all of it: gradients are all-reduced and every rank
//      applies the same update to the whole buffer (plain data parallelism).
//   1  ZeRO stage 1: rank r owns the contiguous shard r of the flat
//      parameters (ShardPlan). Gradients are reduce-scattered, so each rank
//      gets the sum of its shard only; it updates that shard of the
//      parameters with its shard of every optimizer buffer (m1, m2, ν, ...),
//      and the parameters are all-gathered. Optimizer memory per rank falls
//      by the number of ranks; the communication per step is the same as
//      stage 0's (a reduce-scatter and an all-gather of the parameters).
//  m2  AdEMAMix's m2 alone is sharded (M2ShardedOptimizer), the paper's
//      minimal change: gradients are all-reduced, rank r updates m2 over
//      shard r, and the shards' new m2 are broadcast one after the other,
//      every rank applying the rest of the update (m1, ν, parameters) to
//      each shard as its m2 arrives. Half as much communication again as
//      stages 0 and 1 (3 parameter volumes against 2), and every rank holds
//      all but m2. An optimizer without m2 shards nothing (stage 0).
//
// With one rank all three are the single-process run, and the backend does the
// work itself (any backend, the GPU included). With several ranks the
// collectives work on the backend's buffers in place, padded to
// world × chunk: in host memory (padded_host_buffers) through any
// communicator, or on GPUs (padded_device_buffers) through DeviceCollectives:
// NCCL's, which also run with one rank when the communicator is NCCL
// (EMIX_COMM=nccl), or host-staged ones over MPI (EMIX_COMM=mpi: several
// ranks may then share one GPU). On GPUs the bf16 gradients are exchanged, stage 1
// updates the shard of the fp32 master weights and the state and gathers
// the master weights (every rank keeps all of them; the bf16 weights are
// re-derived with the owner's rounding), and stage m2 is refused.
//
// Numbers: the gradient norm is the single-process one bit for bit (the
// shards are aligned to its summation blocks and their block sums are added
// in the same order), the update is elementwise, so the three stages with
// the same number of ranks give bit-identical runs. Against another number of
// ranks the gradients themselves are summed in another order (within a rank
// micro-batches accumulate in place, across ranks in rank order), which
// changes the last bits: see docs/distributed.md.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.hpp"
#include "distributed/communicator.hpp"
#include "distributed/shard_plan.hpp"
#include "optim/optimizer.hpp"
#include "train/backend.hpp"

namespace emix {

// Training state one rank holds (activations excluded), in bytes.
struct MemoryRow {
  std::string what;  // "parameters (fp32)", "optimizer m2", ...
  uint64_t bytes = 0;
};

// The names and storage of the state buffers the configured optimizer keeps
// (spans empty): a size-0 instance is built to ask it.
std::vector<StateBuffer> optimizer_state_layout(const Json& optimizer_section);

// Whether an optimizer with these buffers keeps an m2 (which stage m2 shards).
bool has_m2(std::span<const StateBuffer> buffers);

// The rows for a model of `parameters` parameters on `placement`, with an
// optimizer whose buffers are `buffers` (names and storage; their spans are
// not read), on the rank of `plan` that owns the largest shard. An int8 m2
// counts its codes and block scales; the fp32 m2 it keeps for biases and
// LayerNorm parameters (under 0.1% of a GPT-2's parameters) is left out.
std::vector<MemoryRow> per_rank_memory(size_t parameters, Placement placement, std::span<const StateBuffer> buffers,
                                       const ShardPlan& plan, ZeroStage zero_stage);

class DataParallel {
 public:
  // Builds the optimizer from the config's optimizer section: over the whole
  // parameter buffer, over this rank's shard (stage 1), or over the whole
  // buffer with m2 for this rank's shard (stage m2). At stage 1 with several
  // ranks it pads the backend's weight and gradient buffers to world × chunk
  // (padded_host_buffers), which invalidates spans of them taken before.
  DataParallel(Communicator& comm, ModelBackend& backend, const Json& optimizer_section, ZeroStage zero_stage);
  ~DataParallel();

  Optimizer& optimizer() { return *optimizer_; }
  const std::vector<StateBuffer>& state_layout() const { return state_layout_; }
  const ShardPlan& plan() const { return plan_; }
  ZeroStage zero_stage() const { return zero_stage_; }

  // Called before the step's last forward_backward: on GPUs the gradients
  // are sent to their owners as that backward finishes them, overlapping
  // the communication with the rest of the backward (the host paths
  // reduce after it).
  void overlap_next_backward();
  // Combines the ranks' gradients (each rank scaled its own by 1 / the
  // number of micro-batches in the global batch, so the combination is a
  // sum) and returns the global L2 norm, the same on every rank.
  double reduce_gradients();
  // One update from the combined gradients times grad_scale (clipping).
  void step(const StepInfo& info, float grad_scale);
  // Optimizer::to_eval_params / to_train_params for the whole model.
  void to_eval_params();
  void to_train_params();

  // This rank's part of the optimizer state for a checkpoint, named
  // "optimizer.<buffer>": the buffers it holds for its shard, and rank 0
  // writes the replicated ones.
  std::vector<TensorRef> optimizer_state_tensors();
  // Reads this rank's part of the optimizer state from a checkpoint written
  // by any number of ranks, at any stage.
  void load_optimizer_state(const Checkpoint& checkpoint);

  // Startup log lines: the mode and this rank's memory.
  std::vector<std::string> describe() const;
  // Bytes this rank sends per optimizer step (gradients and parameters).
  uint64_t bytes_sent_per_step() const;

 private:
  void step_m2_sharded(const StepInfo& info, float grad_scale);
  void gather_parameters();
  double reduce_device_gradients();
  DeviceStep shard_device_step(float grad_scale) const;
  void gather_device_master(int64_t step);
  void convert_device_shard(const std::function<void(const DeviceStep&)>& convert);
  // Chunk rank() of a buffer padded to world × chunk.
  std::span<float> my_chunk(std::span<float> padded) const;
  // Whether this rank holds `buffer` for its shard only.
  bool holds_shard_of(const StateBuffer& buffer) const;
  std::string describe_sharding() const;
  double sum_blocks_over_shards(std::span<const double> block_sums);
  StepInfo shard_step_info(const StepInfo& info);

  Communicator& comm_;
  ModelBackend& backend_;
  ZeroStage zero_stage_;
  std::vector<StateBuffer> state_layout_;
  ShardPlan plan_;
  bool sharded_;
  std::unique_ptr<Optimizer> optimizer_;
  // Several ranks only: the backend's weights and gradients, padded to
  // world × chunk at stage 1, which the collectives work on in place.
  ModelBackend::HostBuffers host_;
  // GPU buffers (several ranks, or NCCL with one): the collectives (NCCL's,
  // or host-staged ones this class owns), and the backend's buffers padded
  // to world × chunk.
  DeviceCollectives* device_collectives_ = nullptr;
  std::unique_ptr<DeviceCollectives> staged_collectives_;
  // The ranges of the gradients already being reduced during this step's last backward.
  std::vector<ParamRange> reported_;
  ModelBackend::DeviceBuffers device_;
  // Stage m2 with several ranks: the optimizer, and one shard's new m2.
  M2ShardedOptimizer* m2_sharded_ = nullptr;
  std::vector<float> m2_values_;
};

}  // namespace emix
