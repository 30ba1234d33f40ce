#include "train/data_parallel.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/text.hpp"
#include "optim/grad_clip.hpp"

namespace emix {
namespace {

// The weight-decay segments of the layout that fall in [begin, end), relative
// to begin.
std::vector<ParamSegment> segments_in_range(const ParameterLayout& layout, size_t begin, size_t end) {
  std::vector<ParamSegment> segments;
  for (const auto& t : layout.tensors()) {
    const size_t first = std::max(begin, t.offset);
    const size_t last = std::min(end, t.offset + t.count);
    if (first < last) segments.push_back(ParamSegment{first - begin, last - first, t.weight_decay});
  }
  return segments;
}

std::unique_ptr<Optimizer> make_optimizer(const Json& section, size_t size, std::vector<ParamSegment> segments,
                                          Placement placement) {
  Json hyperparameters = section;
  hyperparameters.erase("name");
  return find_optimizer(section.at("name").get<std::string>()).create(hyperparameters, size, std::move(segments), placement);
}

void check_zero_stage(int zero_stage, int world, const ModelBackend& backend) {
  if (zero_stage != 0 && zero_stage != 1) fail("training.zero_stage must be 0 or 1, got {}", zero_stage);
  if (world > 1 && backend.placement() != Placement::host) {
    fail("{} ranks on a GPU backend: multi-rank training of GPU buffers needs the NCCL communicator, which is not "
         "available yet; train on one GPU, or with device \"cpu\" under mpirun",
         world);
  }
}

}  // namespace

std::vector<StateBuffer> optimizer_state_layout(const Json& optimizer_section) {
  std::vector<StateBuffer> buffers = make_optimizer(optimizer_section, 0, {}, Placement::host)->state_buffers();
  for (auto& buffer : buffers) buffer.data = {};
  return buffers;
}

std::vector<MemoryRow> per_rank_memory(size_t parameters, Placement placement, std::span<const StateBuffer> buffers,
                                       const ShardPlan& plan, int zero_stage) {
  const bool sharded = zero_stage == 1 && plan.world > 1;
  const uint64_t n = parameters;
  const uint64_t owned = sharded ? plan.chunk : n;
  std::vector<MemoryRow> rows;
  if (placement == Placement::device) {
    rows.push_back({"parameters (bf16)", 2 * n});
    rows.push_back({"gradients (bf16)", 2 * n});
    rows.push_back({"master weights (fp32)", 4 * owned});
  } else {
    rows.push_back({"parameters = master weights (fp32)", 4 * n});
    rows.push_back({"gradients (fp32)", 4 * n});
    if (sharded) rows.push_back({"gradient staging (padded buffer + shard)", 4 * (plan.padded_total() + plan.chunk)});
  }
  for (const auto& buffer : buffers) {
    const StateStorage storage = placement == Placement::device ? buffer.device_storage : StateStorage::float32;
    rows.push_back({fmt::format("optimizer {} ({})", buffer.name, storage_name(storage)),
                    device_state_bytes(storage, owned)});
  }
  return rows;
}

DataParallel::DataParallel(Communicator& comm, ModelBackend& backend, const Json& optimizer_section, int zero_stage)
    : comm_(comm), backend_(backend), zero_stage_(zero_stage), state_layout_(optimizer_state_layout(optimizer_section)) {
  check_zero_stage(zero_stage, comm.world_size(), backend);
  const ParameterLayout& layout = backend.layout();
  plan_ = ShardPlan::make(layout.num_parameters(), comm.world_size(), comm.rank(), kSumOfSquaresBlock);
  sharded_ = zero_stage == 1 && comm.world_size() > 1;
  const size_t begin = sharded_ ? plan_.begin() : 0;
  const size_t end = sharded_ ? plan_.end() : layout.num_parameters();
  optimizer_ = make_optimizer(optimizer_section, end - begin, segments_in_range(layout, begin, end), backend.placement());
  if (sharded_) {
    padded_.resize(plan_.padded_total());
    grad_shard_.resize(plan_.chunk);
  }
}

DataParallel::~DataParallel() = default;

double DataParallel::reduce_gradients() {
  if (comm_.world_size() == 1) return backend_.grad_norm();
  std::span<float> grads = backend_.host_gradients();
  if (!sharded_) {
    comm_.all_reduce_sum(grads);
    return global_norm(grads);
  }
  std::copy(grads.begin(), grads.end(), padded_.begin());
  std::fill(padded_.begin() + static_cast<std::ptrdiff_t>(grads.size()), padded_.end(), 0.0f);
  comm_.reduce_scatter_sum(padded_, grad_shard_);
  // Over the whole chunk: the zero padding adds exact zeros to the blocks.
  return std::sqrt(sum_blocks_over_shards(block_sums_of_squares(grad_shard_)));
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
  if (!sharded_) {
    backend_.step(*optimizer_, info, grad_scale);
    return;
  }
  std::span<float> shard_grads = std::span<float>(grad_shard_).first(plan_.size());
  if (grad_scale != 1.0f) scale_in_place(shard_grads, grad_scale);
  optimizer_->step(backend_.weights().subspan(plan_.begin(), plan_.size()), shard_grads, shard_step_info(info));
  gather_parameters();
  backend_.weights_changed(info.step);
}

void DataParallel::gather_parameters() {
  std::span<float> params = backend_.weights();
  std::span<float> mine = std::span<float>(padded_).subspan(static_cast<size_t>(plan_.rank) * plan_.chunk, plan_.chunk);
  std::fill(mine.begin(), mine.end(), 0.0f);
  std::copy_n(params.begin() + static_cast<std::ptrdiff_t>(plan_.begin()), plan_.size(), mine.begin());
  comm_.all_gather(mine, padded_);
  std::copy_n(padded_.begin(), params.size(), params.begin());
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

std::vector<TensorRef> DataParallel::optimizer_state_tensors() {
  std::vector<TensorRef> tensors;
  if (!sharded_ && comm_.rank() != 0) return tensors;
  backend_.pull_optimizer_state(*optimizer_);
  const uint64_t offset = sharded_ ? plan_.begin() : 0;
  for (const auto& buffer : optimizer_->state_buffers()) {
    // An empty shard (a small model on many ranks) has nothing to write.
    if (!buffer.data.empty()) tensors.push_back(TensorRef{"optimizer." + buffer.name, buffer.data, offset});
  }
  return tensors;
}

void DataParallel::load_optimizer_state(const Checkpoint& checkpoint) {
  backend_.pull_optimizer_state(*optimizer_);
  for (const auto& buffer : optimizer_->state_buffers()) {
    const std::string name = "optimizer." + buffer.name;
    if (!sharded_) {
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

std::vector<std::string> DataParallel::describe() const {
  std::vector<std::string> lines;
  const int world = comm_.world_size();
  if (world > 1) {
    lines.push_back(fmt::format("data parallel: {} ranks ({} communicator), ZeRO stage {}{}; {} sent per rank per step",
                                world, comm_.backend(), zero_stage_,
                                sharded_ ? fmt::format(": each rank updates a shard of {} parameters", format_count(static_cast<double>(plan_.chunk)))
                                         : " (optimizer state replicated)",
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
  // each rank sends all but its own chunk, twice.
  const uint64_t chunk = sharded_ ? plan_.chunk : Communicator::chunk_size(plan_.total, comm_.world_size());
  return 2 * (world - 1) * chunk * sizeof(float);
}

}  // namespace emix
