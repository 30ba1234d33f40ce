#include "train/data_parallel.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/text.hpp"
#include "distributed/device_collectives.hpp"
#include "distributed/gradient_exchange.hpp"
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

// Bytes of a bf16 value: the device's weights and gradients.
constexpr size_t kBf16Bytes = 2;

// The collectives on GPU buffers a run of `backend` uses: null on the host,
// and on one GPU without NCCL (the backend then does all the work itself);
// NCCL's own; or, for several GPU ranks through a host communicator (MPI),
// host-staged ones, which `owned` keeps.
DeviceCollectives* device_collectives_for(Communicator& comm, const ModelBackend& backend, ZeroStage stage,
                                          bool keeps_m2, std::unique_ptr<DeviceCollectives>& owned) {
  if (backend.placement() != Placement::device) return nullptr;
  DeviceCollectives* collectives = comm.device_collectives();
  if (collectives == nullptr && comm.world_size() > 1) {
    owned = make_host_staged_collectives(comm);
    collectives = owned.get();
  }
  if (collectives != nullptr && stage == ZeroStage::shard_m2 && keeps_m2) {
    fail("training.zero_stage \"m2\" runs on the CPU backend only; on GPUs use zero_stage 1, which shards m2 "
         "together with the rest of the optimizer state");
  }
  return collectives;
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
    // Whole on every rank: stage 1 updates a shard and gathers the rest.
    rows.push_back({"master weights (fp32)", 4 * n});
    // The ranks' chunks of the gradients as they arrive (DeviceCollectives).
    if (plan.world > 1) rows.push_back({"gradient exchange (bf16)", gradient_exchange_bytes(plan.chunk, plan.world)});
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
  device_collectives_ = device_collectives_for(comm, backend, zero_stage, has_m2(state_layout_), staged_collectives_);
  const ParameterLayout& layout = backend.layout();
  const size_t total = layout.num_parameters();
  // On the host one rank needs no collectives; on a GPU with NCCL they run
  // even for one rank (EMIX_COMM=nccl), so one GPU tests their code path.
  const bool several = comm.world_size() > 1 || device_collectives_ != nullptr;
  plan_ = ShardPlan::make(total, comm.world_size(), comm.rank(), kSumOfSquaresBlock);
  sharded_ = zero_stage == ZeroStage::shard_all && several;
  if (device_collectives_ != nullptr) {
    device_ = backend.padded_device_buffers(plan_.padded_total());
  } else if (several) {
    host_ = backend.padded_host_buffers(sharded_ ? plan_.padded_total() : total);
  }
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

void DataParallel::overlap_next_backward() {
  if (device_collectives_ == nullptr) return;
  reported_.clear();
  backend_.report_gradients_of_next_backward([this](std::span<const ParamRange> ranges) {
    device_collectives_->reduce_bf16(device_.grads_bf16, plan_, ranges, device_.stream);
    reported_.insert(reported_.end(), ranges.begin(), ranges.end());
  });
}

double DataParallel::reduce_gradients() {
  if (device_collectives_ != nullptr) return reduce_device_gradients();
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

// The parameters the last backward did not report go now, then every
// reduction is waited for. Stage 0 then gathers the sums (a reduce-scatter
// then an all-gather, as the host's all_reduce_sum); at stage 1 the norm
// adds the ranks' sums of squares in rank order.
double DataParallel::reduce_device_gradients() {
  backend_.report_gradients_of_next_backward(nullptr);
  const std::vector<ParamRange> unreported = ranges_not_in(reported_, plan_.total);
  reported_.clear();
  if (!unreported.empty()) device_collectives_->reduce_bf16(device_.grads_bf16, plan_, unreported, device_.stream);
  device_collectives_->finish_reductions();
  if (!sharded_) {
    device_collectives_->all_gather(device_.grads_bf16, plan_.chunk * kBf16Bytes, device_.stream);
    return backend_.grad_norm();
  }
  return std::sqrt(comm_.all_reduce_sum(backend_.grad_norm_squared(plan_.begin(), plan_.size())));
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
  if (device_collectives_ != nullptr) {
    optimizer_->step_device(shard_device_step(grad_scale), shard_step_info(info));
    gather_device_master(info.step);
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

// This rank's shard of the device buffers, as an optimizer update takes it.
DeviceStep DataParallel::shard_device_step(float grad_scale) const {
  const size_t begin = plan_.begin();
  DeviceStep step;
  step.master = device_.master + begin;
  step.grads = static_cast<const std::byte*>(device_.grads_bf16) + begin * kBf16Bytes;
  step.params_bf16 = static_cast<std::byte*>(device_.params_bf16) + begin * kBf16Bytes;
  step.grad_scale = grad_scale;
  step.rounding_seed = device_.rounding_seed;
  step.element_offset = begin;
  step.stream = device_.stream;
  return step;
}

// The fp32 master weights travel (not the bf16 weights): every rank keeps
// all of them, so checkpoints and evaluations read them as on one GPU, and
// re-derives the bf16 weights with the rounding the owner's update used.
void DataParallel::gather_device_master(int64_t step) {
  device_collectives_->all_gather(device_.master, plan_.chunk * sizeof(float), device_.stream);
  backend_.master_changed(step);
}

std::span<float> DataParallel::my_chunk(std::span<float> padded) const {
  return padded.subspan(static_cast<size_t>(plan_.rank) * plan_.chunk, plan_.chunk);
}

void DataParallel::to_eval_params() {
  if (!sharded_) {
    backend_.to_eval_params(*optimizer_);
    return;
  }
  if (device_collectives_ != nullptr) {
    convert_device_shard([this](const DeviceStep& shard) { optimizer_->to_eval_params_device(shard); });
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
  if (device_collectives_ != nullptr) {
    convert_device_shard([this](const DeviceStep& shard) { optimizer_->to_train_params_device(shard); });
    return;
  }
  optimizer_->to_train_params(backend_.weights().subspan(plan_.begin(), plan_.size()));
  gather_parameters();
}

// Whether the optimizer converts (it may already be at that point) shows in
// the shard's weights only: so the owners' master and bf16 weights both
// travel, unchanged if it did not.
void DataParallel::convert_device_shard(const std::function<void(const DeviceStep&)>& convert) {
  if (!optimizer_->has_eval_params()) return;
  convert(shard_device_step(1.0f));
  device_collectives_->all_gather(device_.master, plan_.chunk * sizeof(float), device_.stream);
  device_collectives_->all_gather(device_.params_bf16, plan_.chunk * kBf16Bytes, device_.stream);
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
    lines.push_back(fmt::format("data parallel: {} ranks ({} communicator{}), ZeRO stage {}{}; {} sent per rank per step",
                                world, comm_.backend(),
                                staged_collectives_ ? ", GPU buffers staged through host memory" : "",
                                zero_stage_name(zero_stage_), describe_sharding(),
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
  // much as one more all-gather (how MPI routes them varies). On GPUs the
  // gradients are bf16, and stage 1 gathers the fp32 master weights.
  if (device_collectives_ != nullptr) {
    const uint64_t gathered = sharded_ ? sizeof(float) : kBf16Bytes;
    return plan_.chunk * (kBf16Bytes + gathered) * (world - 1);
  }
  const uint64_t chunk = sharded_ ? plan_.chunk : Communicator::chunk_size(plan_.total, comm_.world_size());
  const uint64_t m2_chunk = m2_sharded_ != nullptr ? plan_.chunk : 0;
  return ((2 * chunk + m2_chunk) * (world - 1)) * sizeof(float);
}

}  // namespace emix
