#include "train/data_parallel.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/text.hpp"
#include "optim/grad_clip.hpp"

namespace emix {
namespace {

// The layout's tensors as optimizer segments (their weight-decay settings).
std::vector<ParamSegment> segments_of(const ParameterLayout& layout) {
  std::vector<ParamSegment> segments;
  for (const auto& t : layout.tensors()) segments.push_back(ParamSegment{t.offset, t.count, t.weight_decay});
  return segments;
}

// The config's optimizer section without its "name".
Json hyperparameters_of(const Json& section) {
  Json hyperparameters = section;
  hyperparameters.erase("name");
  return hyperparameters;
}

const OptimizerSpec& spec_of(const Json& section) { return find_optimizer(section.at("name").get<std::string>()); }

std::unique_ptr<Optimizer> make_optimizer(const Json& section, size_t size, std::vector<ParamSegment> segments,
                                          Placement placement) {
  return spec_of(section).create(hyperparameters_of(section), size, std::move(segments), placement);
}

void check_placement(int world, const ModelBackend& backend) {
  if (world > 1 && backend.placement() != Placement::host) {
    fail("{} ranks on a GPU backend: multi-rank training of GPU buffers needs the NCCL communicator, which is not "
         "available yet; train on one GPU, or with device \"cpu\" under mpirun",
         world);
  }
}

}  // namespace

bool has_m2(std::span<const StateBuffer> buffers) {
  return std::any_of(buffers.begin(), buffers.end(), [](const StateBuffer& b) { return b.name == "m2"; });
}

std::vector<StateBuffer> optimizer_state_layout(const Json& optimizer_section) {
  std::vector<StateBuffer> buffers = make_optimizer(optimizer_section, 0, {}, Placement::host)->state_buffers();
  for (auto& buffer : buffers) buffer.data = {};
  return buffers;
}

std::vector<MemoryRow> per_rank_memory(size_t parameters, Placement placement, std::span<const StateBuffer> buffers,
                                       const ShardPlan& plan, ZeroStage stage) {
  const bool shard_all = stage == ZeroStage::shard_all && plan.world > 1;
  const bool shard_m2 = stage == ZeroStage::shard_m2 && plan.world > 1 && has_m2(buffers);
  const uint64_t n = parameters;
  std::vector<MemoryRow> rows;
  if (placement == Placement::device) {
    rows.push_back({"parameters (bf16)", 2 * n});
    rows.push_back({"gradients (bf16)", 2 * n});
    rows.push_back({"master weights (fp32)", 4 * (shard_all ? plan.chunk : n)});
  } else {
    // Padded to world × chunk at stage 1 (ModelBackend::padded_host_buffers).
    const uint64_t buffer = shard_all ? plan.padded_total() : n;
    rows.push_back({"parameters = master weights (fp32)", 4 * buffer});
    rows.push_back({"gradients (fp32)", 4 * buffer});
    if (shard_m2) rows.push_back({"m2 of one shard in flight", 4 * plan.chunk});
  }
  for (const auto& buffer : buffers) {
    const StateStorage storage = placement == Placement::device ? buffer.device_storage : StateStorage::float32;
    const bool sharded = shard_all || (shard_m2 && buffer.name == "m2");
    rows.push_back({fmt::format("optimizer {} ({})", buffer.name, storage_name(storage)),
                    device_state_bytes(storage, sharded ? plan.chunk : n)});
  }
  return rows;
}

DataParallel::DataParallel(Communicator& comm, ModelBackend& backend, const Json& optimizer_section, ZeroStage zero_stage)
    : comm_(comm), backend_(backend), zero_stage_(zero_stage), state_layout_(optimizer_state_layout(optimizer_section)) {
  check_placement(comm.world_size(), backend);
  const ParameterLayout& layout = backend.layout();
  const size_t total = layout.num_parameters();
  const bool several = comm.world_size() > 1;
  plan_ = ShardPlan::make(total, comm.world_size(), comm.rank(), kSumOfSquaresBlock);
  sharded_ = zero_stage == ZeroStage::shard_all && several;
  if (several) host_ = backend.padded_host_buffers(sharded_ ? plan_.padded_total() : total);
  const OptimizerSpec& spec = spec_of(optimizer_section);
  if (has_m2(state_layout_) != (spec.build_m2_sharded != nullptr)) {
    throw std::logic_error("an optimizer keeps an m2 buffer if and only if it can shard it alone");
  }
  if (zero_stage == ZeroStage::shard_m2 && several && spec.build_m2_sharded) {
    auto optimizer = spec.build_m2_sharded(hyperparameters_of(optimizer_section), total, segments_of(layout),
                                           plan_.begin(), plan_.end());
    m2_sharded_ = optimizer.get();
    optimizer_ = std::move(optimizer);
    m2_values_.resize(plan_.chunk);
    return;
  }
  const size_t begin = sharded_ ? plan_.begin() : 0;
  const size_t end = sharded_ ? plan_.end() : total;
  optimizer_ = make_optimizer(optimizer_section, end - begin, segments_within(segments_of(layout), begin, end),
                              backend.placement());
}

DataParallel::~DataParallel() = default;

double DataParallel::reduce_gradients() {
  if (comm_.world_size() == 1) return backend_.grad_norm();
  if (!sharded_) {
    std::span<float> grads = host_.gradients.first(plan_.total);
    comm_.all_reduce_sum(grads);
    return global_norm(grads);
  }
  // In place: this rank's chunk of the gradients becomes the sum over ranks.
  std::span<float> mine = my_chunk(host_.gradients);
  comm_.reduce_scatter_sum(host_.gradients, mine);
  // Over the whole chunk: the zero padding adds exact zeros to the blocks.
  return std::sqrt(sum_blocks_over_shards(block_sums_of_squares(mine)));
}

double DataParallel::sum_blocks_over_shards(std::span<const double> block_sums) {
  const size_t blocks_per_shard = plan_.chunk / kSumOfSquaresBlock;
  if (block_sums.size() > blocks_per_shard) throw std::logic_error("more block sums than a shard has blocks");
  // A short (or empty) shard's missing blocks count as zeros.
  std::vector<double> mine(blocks_per_shard, 0.0);
  std::copy(block_sums.begin(), block_sums.end(), mine.begin());
  std::vector<double> all(blocks_per_shard * static_cast<size_t>(plan_.world));
  comm_.all_gather(mine, all);
  double total = 0.0;
  for (double sum : all) total += sum;
  return total;
}

StepInfo DataParallel::shard_step_info(const StepInfo& info) {
  StepInfo shard = info;
  shard.element_offset = info.element_offset + plan_.begin();
  shard.sum_blocks_over_shards = [this](std::span<const double> block_sums) { return sum_blocks_over_shards(block_sums); };
  return shard;
}

void DataParallel::step(const StepInfo& info, float grad_scale) {
  if (m2_sharded_ != nullptr) {
    step_m2_sharded(info, grad_scale);
    return;
  }
  if (!sharded_) {
    backend_.step(*optimizer_, info, grad_scale);
    return;
  }
  std::span<float> shard_grads = host_.gradients.subspan(plan_.begin(), plan_.size());
  if (grad_scale != 1.0f) scale_in_place(shard_grads, grad_scale);
  optimizer_->step(backend_.weights().subspan(plan_.begin(), plan_.size()), shard_grads, shard_step_info(info));
  gather_parameters();
  backend_.weights_changed(info.step);
}

// The shards' m2 travel one at a time, from the rank that holds it to every
// rank, so no rank ever holds more than one shard's m2 besides its own (an
// all-gather would need all of it at once).
void DataParallel::step_m2_sharded(const StepInfo& info, float grad_scale) {
  std::span<float> params = host_.weights.first(plan_.total);
  std::span<float> grads = host_.gradients.first(plan_.total);
  if (grad_scale != 1.0f) scale_in_place(grads, grad_scale);
  for (int r = 0; r < plan_.world; ++r) {
    std::span<float> m2_values = std::span<float>(m2_values_).first(plan_.end_of(r) - plan_.begin_of(r));
    if (r == plan_.rank) m2_sharded_->update_m2_shard(grads.subspan(plan_.begin(), plan_.size()), m2_values, info);
    comm_.broadcast(m2_values, r);
    m2_sharded_->update_with_m2(params, grads, plan_.begin_of(r), m2_values, info);
  }
  backend_.weights_changed(info.step);
}

// In place: every rank's chunk of the weights to every rank.
void DataParallel::gather_parameters() { comm_.all_gather(my_chunk(host_.weights), host_.weights); }

std::span<float> DataParallel::my_chunk(std::span<float> padded) const {
  return padded.subspan(static_cast<size_t>(plan_.rank) * plan_.chunk, plan_.chunk);
}

void DataParallel::to_eval_params() {
  if (!sharded_) {
    backend_.to_eval_params(*optimizer_);
    return;
  }
  optimizer_->to_eval_params(backend_.weights().subspan(plan_.begin(), plan_.size()));
  gather_parameters();
}

void DataParallel::to_train_params() {
  if (!sharded_) {
    backend_.to_train_params(*optimizer_);
    return;
  }
  optimizer_->to_train_params(backend_.weights().subspan(plan_.begin(), plan_.size()));
  gather_parameters();
}

bool DataParallel::holds_shard_of(const StateBuffer& buffer) const {
  return sharded_ || (m2_sharded_ != nullptr && buffer.name == "m2");
}

std::vector<TensorRef> DataParallel::optimizer_state_tensors() {
  std::vector<TensorRef> tensors;
  const bool leader = comm_.rank() == 0;
  if (!leader && !sharded_ && m2_sharded_ == nullptr) return tensors;
  backend_.pull_optimizer_state(*optimizer_);
  for (const auto& buffer : optimizer_->state_buffers()) {
    const bool shard = holds_shard_of(buffer);
    // An empty shard (a small model on many ranks) has nothing to write.
    if (buffer.data.empty() || (!shard && !leader)) continue;
    tensors.push_back(TensorRef{"optimizer." + buffer.name, buffer.data, shard ? plan_.begin() : 0});
  }
  return tensors;
}

void DataParallel::load_optimizer_state(const Checkpoint& checkpoint) {
  backend_.pull_optimizer_state(*optimizer_);
  for (const auto& buffer : optimizer_->state_buffers()) {
    const std::string name = "optimizer." + buffer.name;
    if (!holds_shard_of(buffer)) {
      checkpoint.read_tensor(name, buffer.data);
      continue;
    }
    if (checkpoint.tensor_count(name) != plan_.total) {
      fail_file(checkpoint.path(), "tensor '{}' has {} elements, but the model has {} parameters", name,
                checkpoint.tensor_count(name), plan_.total);
    }
    checkpoint.read_tensor_range(name, plan_.begin(), buffer.data);
  }
  backend_.push_optimizer_state(*optimizer_);
}

std::string DataParallel::describe_sharding() const {
  const std::string shard = format_count(static_cast<double>(plan_.chunk));
  if (sharded_) return fmt::format(": each rank updates a shard of {} parameters", shard);
  if (m2_sharded_ != nullptr) return fmt::format(": each rank holds m2 for a shard of {} parameters, the rest replicated", shard);
  if (zero_stage_ == ZeroStage::shard_m2) return fmt::format(" ({} keeps no m2: optimizer state replicated)", optimizer_->name());
  return " (optimizer state replicated)";
}

std::vector<std::string> DataParallel::describe() const {
  std::vector<std::string> lines;
  const int world = comm_.world_size();
  if (world > 1) {
    lines.push_back(fmt::format("data parallel: {} ranks ({} communicator), ZeRO stage {}{}; {} sent per rank per step",
                                world, comm_.backend(), zero_stage_name(zero_stage_), describe_sharding(),
                                format_bytes(static_cast<double>(bytes_sent_per_step()))));
  }
  uint64_t total = 0;
  std::string rows;
  for (const auto& row : per_rank_memory(plan_.total, backend_.placement(), state_layout_, plan_, zero_stage_)) {
    rows += fmt::format("{}{} {}", rows.empty() ? "" : ", ", row.what, format_bytes(static_cast<double>(row.bytes)));
    total += row.bytes;
  }
  lines.push_back(fmt::format("training state per rank: {} ({})", format_bytes(static_cast<double>(total)), rows));
  return lines;
}

uint64_t DataParallel::bytes_sent_per_step() const {
  const auto world = static_cast<uint64_t>(comm_.world_size());
  if (world == 1) return 0;
  // A reduce-scatter then an all-gather (also how all_reduce_sum works):
  // each rank sends all but its own chunk, twice. The m2 broadcasts move as
  // much as one more all-gather (how MPI routes them varies).
  const uint64_t chunk = sharded_ ? plan_.chunk : Communicator::chunk_size(plan_.total, comm_.world_size());
  const uint64_t m2_chunk = m2_sharded_ != nullptr ? plan_.chunk : 0;
  return ((2 * chunk + m2_chunk) * (world - 1)) * sizeof(float);
}

}  // namespace emix
