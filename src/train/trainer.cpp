#include "train/trainer.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>

#include "core/crc32.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "core/text.hpp"
#include "data/tokenizer/gpt2_tokenizer.hpp"
#include "generate/sampler.hpp"
#include "optim/grad_clip.hpp"
#include "optim/schedule.hpp"
#include "train/metrics.hpp"
#include "train/signals.hpp"

namespace emix {
namespace fs = std::filesystem;

namespace {
using Clock = std::chrono::steady_clock;

// "state: m1 (fp32), m2 (int8), nu (fp32); 9.02 bytes/parameter". The CPU
// keeps every buffer in floats: a narrow storage (m2_dtype) is named there
// with what it would take on a GPU, and so are the bytes.
std::string describe_state(Optimizer& optimizer, const std::vector<StateBuffer>& layout) {
  if (layout.empty()) return "no state";
  const bool on_device = optimizer.placement() == Placement::device;
  std::string names;
  for (const StateBuffer& buffer : layout) {
    const std::string_view storage = storage_name(buffer.device_storage);
    const bool narrow = buffer.device_storage != StateStorage::float32;
    names += fmt::format("{}{} ({})", names.empty() ? "" : ", ", buffer.name,
                         on_device || !narrow ? std::string(storage) : fmt::format("fp32; {} on a GPU", storage));
  }
  std::string line = fmt::format("state: {}; {:.2f} bytes/parameter", names, optimizer.state_bytes_per_parameter());
  if (on_device || optimizer.size() == 0) return line;
  // The host's buffers, each with the elements it holds here (training.zero_stage
  // "m2" holds m2 for a shard only), as a GPU would store them.
  uint64_t device_bytes = 0;
  for (const StateBuffer& buffer : optimizer.state_buffers()) {
    device_bytes += device_state_bytes(buffer.device_storage, buffer.data.size());
  }
  if (device_bytes != optimizer.state_bytes()) {
    line += fmt::format(", {:.2f} on a GPU", static_cast<double>(device_bytes) / static_cast<double>(optimizer.size()));
  }
  return line;
}

// A batch that could not be read on some rank (a token id outside the
// vocabulary, a shard changed on disk): thrown on every rank before anything
// is computed from it, so the trainer still holds its last completed step.
class UnreadableBatch : public Error {
 public:
  using Error::Error;
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A warning when the disk holding `dir` has less room than the checkpoint
// needs; the save is still attempted (and fails cleanly if it must).
void warn_if_disk_is_short(const fs::path& dir, std::span<const TensorRef> tensors) {
  uint64_t needed = 0;
  for (const auto& t : tensors) needed += t.data.size_bytes();
  std::error_code error;
  fs::create_directories(dir, error);
  fs::space_info space = fs::space(dir, error);
  if (!error && space.available < needed + needed / 20) {
    spdlog::warn("{} has {} bytes free, a checkpoint needs about {}: the save may fail (older checkpoints are kept)",
                 dir.string(), format_count(static_cast<double>(space.available)), format_count(static_cast<double>(needed)));
  }
}

// "training.seq_len: 64 -> 128" lines for every key that differs.
std::string describe_differences(const Json& before, const Json& after) {
  std::string text;
  for (const auto& op : Json::diff(before, after)) {
    Json::json_pointer pointer(op.at("path").get<std::string>());
    std::string key = op.at("path").get<std::string>().substr(1);
    std::replace(key.begin(), key.end(), '/', '.');
    std::string old_value = before.contains(pointer) ? before.at(pointer).dump() : "(absent)";
    std::string new_value = after.contains(pointer) ? after.at(pointer).dump() : "(absent)";
    text += fmt::format("\n  {}: {} -> {}", key, old_value, new_value);
  }
  return text;
}
}  // namespace

Trainer::Trainer(Config config, const Checkpoint* resume, Communicator* comm)
    : config_(std::move(config)),
      own_comm_(comm == nullptr ? make_local_communicator() : nullptr),
      comm_(comm == nullptr ? *own_comm_ : *comm) {
  if (config_.training.threads > 0) omp_set_num_threads(config_.training.threads);
  check_same_config_everywhere();
  backend_ = make_backend(config_);
  const ParameterLayout& layout = backend_->layout();
  data_parallel_ = std::make_unique<DataParallel>(comm_, *backend_, config_.optimizer, config_.training.zero_stage);
  Optimizer& optimizer = data_parallel_->optimizer();

  const TrainingConfig& t = config_.training;
  train_data_ = std::make_unique<TokenDataset>(config_.data.train_shards, t.seq_len, config_.model.vocab_size);
  train_stream_ = std::make_unique<WindowStream>(*train_data_, t.seed, config_.data.shuffle);
  if (!config_.data.val_shards.empty()) {
    val_data_ = std::make_unique<TokenDataset>(config_.data.val_shards, t.seq_len, config_.model.vocab_size);
    val_stream_ = std::make_unique<WindowStream>(*val_data_, t.seed, /*shuffle=*/false);
  }
  check_probe_batch();

  if (resume != nullptr) {
    restore(*resume);
  } else {
    backend_->init_weights(t.seed);
  }
  if (comm_.rank() == 0) {
    fs::create_directories(config_.run_dir());
    write_text_file_atomic(config_.run_dir() / "config.json", config_.to_json().dump(2) + "\n");
    metrics_ = std::make_unique<MetricsLog>(config_.run_dir() / "metrics.jsonl", step_);
  }

  const uint64_t state_bytes = optimizer.state_bytes();
  spdlog::info("model: GPT-2, {} layers, {} channels, {} heads, vocab {} (padded {}), {} parameters",
               config_.model.n_layer, config_.model.n_embd, config_.model.n_head, config_.model.vocab_size,
               config_.model.padded_vocab_size, format_count(static_cast<double>(layout.num_parameters())));
  spdlog::info("optimizer: {} ({})", config_.optimizer.at("name").get<std::string>(),
               describe_state(optimizer, data_parallel_->state_layout()));
  for (const std::string& line : backend_->describe(t.batch_size, t.seq_len, state_bytes)) spdlog::info("{}", line);
  for (const std::string& line : data_parallel_->describe()) spdlog::info("{}", line);
  spdlog::info("data: {} train tokens in {} shard(s){}; batch {} × {} tokens × {} accumulation{} = {} tokens/step; {} steps",
               format_count(static_cast<double>(train_data_->num_tokens())), train_data_->num_shards(),
               val_data_ ? fmt::format(", {} validation tokens", format_count(static_cast<double>(val_data_->num_tokens()))) : "",
               t.batch_size, t.seq_len, t.accumulation_steps(comm_.world_size()),
               comm_.world_size() > 1 ? fmt::format(" × {} ranks", comm_.world_size()) : "", t.total_batch_tokens,
               config_.total_steps());
}

void Trainer::check_probe_batch() const {
  const TrainingConfig& t = config_.training;
  if (t.forgetting_probe_step <= 0) return;
  if (t.forgetting_probe_step > config_.total_steps()) {
    fail("training.forgetting_probe_step ({}) is past the run's last step ({})", t.forgetting_probe_step, config_.total_steps());
  }
  if (probe_position() + sequences_per_step() > train_data_->num_windows()) {
    spdlog::warn("forgetting probe: the run covers more than one epoch of the training data, so the probe batch is also "
                 "trained on outside step {} and its curve measures less than forgetting",
                 t.forgetting_probe_step);
  }
}

void Trainer::check_same_config_everywhere() {
  if (comm_.world_size() == 1) return;
  const std::string text = config_.to_json().dump();
  uint32_t crc = crc32(text.data(), text.size());
  uint32_t leader_crc = crc;
  comm_.broadcast_bytes(std::as_writable_bytes(std::span<uint32_t>(&leader_crc, 1)), 0);
  comm_.check_all(crc == leader_crc, "this rank's effective config differs from rank 0's (another file, or other "
                                     "--set overrides): every rank must train the same run");
}

Trainer::~Trainer() = default;

StepRecord Trainer::train_step() {
  const TrainingConfig& t = config_.training;
  const int ranks = comm_.world_size();
  const int accumulation = t.accumulation_steps(ranks);
  const int micro_batches = accumulation * ranks;  // in the global batch
  // The forgetting probe's step trains on the held-out batch instead.
  const bool inject = t.forgetting_probe_inject && step_ + 1 == t.forgetting_probe_step;
  const uint64_t batch_start = inject ? probe_position() : windows_consumed_;
  std::vector<uint64_t> starts(static_cast<size_t>(accumulation));
  for (int micro = 0; micro < accumulation; ++micro) {
    starts[static_cast<size_t>(micro)] = micro_batch_start(batch_start, comm_.rank(), micro, accumulation, t.batch_size);
  }
  read_batches(*train_stream_, starts);
  backend_->zero_grad();
  std::vector<double> my_losses(static_cast<size_t>(accumulation));
  for (size_t micro = 0; micro < starts.size(); ++micro) {
    if (micro + 1 == starts.size()) data_parallel_->overlap_next_backward();
    my_losses[micro] = backend_->forward_backward(batch_inputs(micro), batch_targets(micro), t.batch_size, t.seq_len,
                                                  1.0f / static_cast<float>(micro_batches));
  }
  // Every micro-batch's loss of the global batch, added in order: the mean
  // loss has the same bits whatever the number of ranks.
  std::vector<double> losses(static_cast<size_t>(micro_batches));
  comm_.all_gather(my_losses, losses);
  double loss_sum = 0.0;
  for (double loss : losses) loss_sum += loss;
  StepRecord record;
  record.step = step_ + 1;
  record.loss = static_cast<float>(loss_sum / micro_batches);
  record.grad_norm = data_parallel_->reduce_gradients();
  record.lr = static_cast<float>(
      scheduled_lr(config_.schedule, record.step, config_.total_steps(), common_hyperparameters(config_.optimizer).lr));
  // A non-finite loss or gradient (a bad batch, an overflow) must not reach
  // the optimizer state, where it would never wash out: skip the update.
  record.skipped = !std::isfinite(record.loss) || !std::isfinite(record.grad_norm) || is_outlier(record);
  if (!record.skipped) {
    const auto update_start = Clock::now();
    data_parallel_->step(StepInfo{record.step, record.lr, config_.training.seed, 0}, clip_scale(record.grad_norm, t.grad_clip));
    record.optimizer_seconds = backend_->placement() == Placement::host ? seconds_since(update_start) : NAN;
    remember_applied(record);
  }

  windows_consumed_ += sequences_per_step();
  tokens_seen_ += t.total_batch_tokens;
  step_ = record.step;
  return record;
}

void Trainer::with_eval_params(const std::function<void()>& body) {
  if (!optimizer().has_eval_params()) {
    body();
    return;
  }
  std::span<const float> params = backend_->weights();
  std::vector<float> train_params(params.begin(), params.end());
  data_parallel_->to_eval_params();
  body();
  data_parallel_->to_train_params();
  std::span<float> restored = backend_->weights();
  std::copy(train_params.begin(), train_params.end(), restored.begin());
  backend_->weights_changed(step_);
}

float Trainer::evaluate() {
  if (!val_stream_) return NAN;
  const TrainingConfig& t = config_.training;
  // Never more batches than the validation data holds: repeats would only
  // make the figure look more precise than it is.
  uint64_t available = std::max<uint64_t>(1, val_data_->num_windows() / static_cast<uint64_t>(t.batch_size));
  uint64_t batches = std::min<uint64_t>(std::max(1, t.eval_batches), available);
  return mean_loss(*val_stream_, 0, batches);
}

float Trainer::mean_loss(WindowStream& stream, uint64_t first, uint64_t batches) {
  const TrainingConfig& t = config_.training;
  // Batch i is evaluated by rank i mod N; the losses are combined as in
  // train_step, so the figure does not depend on the number of ranks.
  const auto rank = static_cast<uint64_t>(comm_.rank());
  const auto ranks = static_cast<uint64_t>(comm_.world_size());
  std::vector<uint64_t> starts;
  for (uint64_t i = rank; i < batches; i += ranks) starts.push_back(first + i * static_cast<uint64_t>(t.batch_size));
  // Read before the model moves to its evaluation point, so that a batch
  // that cannot be read leaves the training state as it was.
  read_batches(stream, starts);
  std::vector<double> losses(batches, 0.0);
  with_eval_params([&] {
    for (size_t k = 0; k < starts.size(); ++k) {
      losses[rank + k * ranks] = backend_->forward(batch_inputs(k), batch_targets(k), t.batch_size, t.seq_len);
    }
  });
  comm_.all_reduce_sum(std::span<double>(losses));
  double sum = 0.0;
  for (double loss : losses) sum += loss;
  return static_cast<float>(sum / static_cast<double>(batches));
}

void Trainer::read_batches(WindowStream& stream, std::span<const uint64_t> starts) {
  const int batch_size = config_.training.batch_size;
  const size_t tokens = batch_tokens();
  inputs_.resize(starts.size() * tokens);
  targets_.resize(inputs_.size());
  std::string error;
  try {
    for (size_t k = 0; k < starts.size(); ++k) {
      stream.read(starts[k], batch_size, std::span(inputs_).subspan(k * tokens, tokens),
                  std::span(targets_).subspan(k * tokens, tokens));
    }
  } catch (const Error& e) {
    error = e.what();
  }
  if (comm_.any(!error.empty())) throw UnreadableBatch(error.empty() ? "another rank could not read its batch" : error);
}

size_t Trainer::batch_tokens() const {
  return static_cast<size_t>(config_.training.batch_size) * static_cast<size_t>(config_.training.seq_len);
}

std::span<const int32_t> Trainer::batch_inputs(size_t k) const {
  return std::span<const int32_t>(inputs_).subspan(k * batch_tokens(), batch_tokens());
}

std::span<const int32_t> Trainer::batch_targets(size_t k) const {
  return std::span<const int32_t>(targets_).subspan(k * batch_tokens(), batch_tokens());
}

uint64_t Trainer::sequences_per_step() const {
  return static_cast<uint64_t>(config_.training.total_batch_tokens / config_.training.seq_len);
}

// The global batch just past the run's last one: a run of at most one epoch
// never trains on it, except at the probe step.
uint64_t Trainer::probe_position() const { return static_cast<uint64_t>(config_.total_steps()) * sequences_per_step(); }

bool Trainer::probe_due() const {
  const int64_t injected = config_.training.forgetting_probe_step;
  if (injected <= 0) return false;
  return step_ == injected - 1 || (step_ >= injected && (step_ - injected) % config_.training.forgetting_probe_interval == 0);
}

void Trainer::log_probe_loss() {
  const float loss = mean_loss(*train_stream_, probe_position(), sequences_per_step() / config_.training.batch_size);
  const int64_t since = step_ - config_.training.forgetting_probe_step;
  spdlog::info("probe loss {:.4f} at step {} ({})", loss, step_,
               since < 0 ? std::string("before the probe batch") : fmt::format("{} steps after it", since));
  write_metrics({{"step", step_}, {"probe_loss", loss}, {"steps_since_probe", since}, {"tokens", tokens_seen_}});
}

void Trainer::log_progress(const StepRecord& r, double step_seconds) {
  const int64_t total = config_.total_steps();
  double seconds_per_step = train_seconds_ / static_cast<double>(std::max<int64_t>(1, history_.size()));
  double tokens_per_second = static_cast<double>(config_.training.total_batch_tokens) / step_seconds;
  const double peak = backend_->peak_flops();
  const double flops_per_token =
      training_flops_per_token(config_.model, backend_->layout().num_parameters(), config_.training.seq_len);
  std::string mfu = peak > 0.0 ? fmt::format(" | MFU {:.1f}%", 100.0 * tokens_per_second * flops_per_token / peak) : "";
  spdlog::info("step {:>{}}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {} tok/s{} | {:.0f} ms/step | ETA {}", r.step,
               std::to_string(total).size(), total, r.loss, r.lr, r.grad_norm, format_count(tokens_per_second), mfu,
               1000.0 * step_seconds, format_duration(seconds_per_step * static_cast<double>(total - r.step)));
}


namespace {
// How many standard deviations `value` lies above the mean of `window`.
double zscore(const std::deque<double>& window, double value) {
  double mean = 0.0;
  for (double v : window) mean += v;
  mean /= static_cast<double>(window.size());
  double variance = 0.0;
  for (double v : window) variance += (v - mean) * (v - mean);
  double sigma = std::sqrt(variance / static_cast<double>(window.size()));
  return sigma > 0.0 ? (value - mean) / sigma : 0.0;
}
}  // namespace

bool Trainer::is_outlier(const StepRecord& record) const {
  const TrainingConfig& t = config_.training;
  // Statistics over fewer than a full window are too noisy to act on.
  if (t.outlier_zscore <= 0.0 || recent_losses_.size() < static_cast<size_t>(t.outlier_window)) return false;
  return zscore(recent_losses_, record.loss) > t.outlier_zscore || zscore(recent_grad_norms_, record.grad_norm) > t.outlier_zscore;
}

void Trainer::remember_applied(const StepRecord& record) {
  if (config_.training.outlier_zscore <= 0.0) return;
  recent_losses_.push_back(record.loss);
  recent_grad_norms_.push_back(record.grad_norm);
  if (recent_losses_.size() > static_cast<size_t>(config_.training.outlier_window)) {
    recent_losses_.pop_front();
    recent_grad_norms_.pop_front();
  }
}

void Trainer::count_skip(const StepRecord& record) {
  if (!record.skipped) {
    consecutive_skips_ = 0;
    return;
  }
  ++skipped_steps_;
  ++consecutive_skips_;
  spdlog::warn("step {}: loss {}, gradient norm {}{}: update skipped ({} in a row, {} in all)", record.step, record.loss,
               record.grad_norm, std::isfinite(record.loss) && std::isfinite(record.grad_norm) ? " (outlier)" : "",
               consecutive_skips_, skipped_steps_);
  if (consecutive_skips_ >= config_.training.max_consecutive_skips) {
    // The parameters and optimizer state are those before the bad steps.
    stop_after_failure(fmt::format("{} consecutive steps had a non-finite or outlier loss or gradient norm "
                                   "(training.max_consecutive_skips), and none of them was applied",
                                   consecutive_skips_));
  }
}

void Trainer::stop_after_failure(const std::string& failure) {
  const std::string what = failure.empty() ? "another rank failed" : failure;
  std::string resume_from = fmt::format("the checkpoint of step {} in {}", step_, config_.checkpoint_dir().string());
  if (step_ != last_saved_step_) {
    try {
      resume_from = save_checkpoint().string();
    } catch (const Error& e) {
      fail_collective("stopping after step {}: {}; saving a checkpoint of step {} failed too: {}", step_, what, step_,
                      e.what());
    }
  }
  fail_collective("stopping after step {}: {}; {} holds step {}: fix the cause and resume with --resume latest", step_,
                  what, resume_from, step_);
}

void Trainer::write_metrics(const Json& record) {
  if (!metrics_ || !metrics_error_.empty()) return;
  try {
    metrics_->write(record);
  } catch (const Error& e) {
    metrics_error_ = e.what();
  }
}

bool Trainer::near_time_limit(double run_seconds) const {
  const double limit = 60.0 * config_.training.time_limit_minutes;
  if (limit <= 0.0 || history_.empty()) return false;
  // Leave room for two more steps and a checkpoint as long as the last one.
  double step_seconds = train_seconds_ / static_cast<double>(history_.size());
  return run_seconds + 2.0 * step_seconds + 1.5 * last_save_seconds_ >= limit;
}

void Trainer::try_periodic_checkpoint() {
  try {
    save_checkpoint();
  } catch (const Error& e) {
    spdlog::error("checkpoint at step {} failed, the previous ones are kept and training goes on: {}", step_, e.what());
  }
}

Trainer::StopVote Trainer::agree_to_stop(bool out_of_time) {
  std::vector<double> votes = {stop_requested() ? 1.0 : 0.0, out_of_time ? 1.0 : 0.0, metrics_error_.empty() ? 0.0 : 1.0};
  comm_.all_reduce_sum(std::span<double>(votes));
  return StopVote{votes[0] > 0.0, votes[1] > 0.0, votes[2] > 0.0};
}

bool Trainer::run(std::optional<int64_t> stop_at_step) {
  const int64_t total = config_.total_steps();
  const TrainingConfig& t = config_.training;
  const auto run_start = Clock::now();
  if (step_ > 0) spdlog::info("resuming at step {}/{} ({} tokens seen)", step_, total, format_count(static_cast<double>(tokens_seen_)));
  StopVote stop = agree_to_stop(false);
  // What ends the run as failed on this rank once a checkpoint is written: a
  // batch that cannot be read or a metrics file that cannot be written. Both
  // leave the state at the last completed step, so stopping there loses no
  // training.
  std::string failure;
  try {
    if (step_ == 0 && probe_due()) log_probe_loss();
    while (step_ < total && (!stop_at_step || step_ < *stop_at_step) && !stop.signal && !stop.out_of_time &&
           !stop.metrics_failed) {
      auto start = Clock::now();
      StepRecord record = train_step();
      double seconds = seconds_since(start);
      train_seconds_ += seconds;
      history_.push_back(record);
      write_metrics({{"step", record.step}, {"loss", record.loss}, {"lr", record.lr}, {"grad_norm", record.grad_norm},
                     {"skipped", record.skipped}, {"tokens", tokens_seen_},
                     {"optimizer_ms", 1000.0 * record.optimizer_seconds},
                     {"tokens_per_second", static_cast<double>(t.total_batch_tokens) / seconds},
                     {"elapsed_s", train_seconds_}});
      count_skip(record);
      if (record.step == 1 || record.step % config_.logging.interval == 0 || record.step == total) log_progress(record, seconds);
      if (t.eval_interval > 0 && step_ % t.eval_interval == 0 && step_ < total && val_stream_) {
        float val_loss = evaluate();
        spdlog::info("validation loss {:.4f} at step {}", val_loss, step_);
        write_metrics({{"step", step_}, {"val_loss", val_loss}, {"tokens", tokens_seen_}});
      }
      if (probe_due()) log_probe_loss();
      if (config_.checkpoint.interval > 0 && step_ % config_.checkpoint.interval == 0 && step_ < total) try_periodic_checkpoint();
      stop = agree_to_stop(near_time_limit(seconds_since(run_start)));
    }
    if (stop.signal) spdlog::warn("stop requested (signal {}): saving a checkpoint at step {}", stop_signal(), step_);
    if (stop.out_of_time && step_ < total) {
      spdlog::warn("wall-clock limit of {} minutes nearly reached: saving a checkpoint at step {}; resume with --resume latest",
                   t.time_limit_minutes, step_);
    }
    if (step_ >= total && val_stream_ && !stop.metrics_failed) {
      float val_loss = evaluate();
      spdlog::info("final validation loss {:.4f} after {} steps ({} tokens)", val_loss, step_, format_count(static_cast<double>(tokens_seen_)));
      write_metrics({{"step", step_}, {"val_loss", val_loss}, {"tokens", tokens_seen_}});
    }
  } catch (const UnreadableBatch& e) {
    failure = e.what();
  }
  if (failure.empty()) failure = metrics_error_;
  if (comm_.any(!failure.empty())) stop_after_failure(failure);
  if (step_ != last_saved_step_) save_checkpoint();
  const bool finished = step_ >= total;
  if (finished) write_sample();
  return finished;
}

Json Trainer::run_state() const {
  return Json{{"step", step_},
              {"windows_consumed", windows_consumed_},
              {"tokens_seen", tokens_seen_},
              {"train_seconds", train_seconds_},
              {"skipped_steps", skipped_steps_},
              {"recent_losses", recent_losses_},
              {"recent_grad_norms", recent_grad_norms_},
              // The data order and initialization are pure functions of this
              // seed and the stream position: it is all the RNG state there is.
              {"rng", {{"seed", config_.training.seed}}},
              {"optimizer", {{"name", config_.optimizer.at("name")}, {"scalar_state", data_parallel_->optimizer().scalar_state()}}},
              // Informational: a checkpoint resumes on any number of ranks.
              {"world_size", comm_.world_size()},
              {"zero_stage", zero_stage_json(data_parallel_->zero_stage())},
              {"config", config_.to_json()}};
}

fs::path Trainer::save_checkpoint() {
  auto start = Clock::now();
  const bool leader = comm_.rank() == 0;
  // Rank 0 writes the parameters (the same on every rank) and the optimizer
  // buffers that are replicated; each rank writes the shards it holds.
  std::vector<TensorRef> tensors;
  if (leader) tensors.push_back(TensorRef{"params", backend_->weights(), 0});
  for (auto& tensor : data_parallel_->optimizer_state_tensors()) tensors.push_back(std::move(tensor));
  std::vector<float> eval_params;
  if (optimizer().has_eval_params()) {
    with_eval_params([&] {
      std::span<const float> x = backend_->weights();
      if (leader) eval_params.assign(x.begin(), x.end());
    });
    if (leader) tensors.push_back(TensorRef{"eval_params", eval_params, 0});
  }
  warn_if_disk_is_short(config_.checkpoint_dir(), tensors);
  // The new checkpoint exists only if it was read back and verified whole;
  // only then do older ones go.
  fs::path path = emix::save_checkpoint(comm_, config_.checkpoint_dir(), step_, run_state(), tensors);
  if (leader) prune_checkpoints(config_.checkpoint_dir(), config_.checkpoint.keep_last, config_.checkpoint.milestone_interval);
  last_saved_step_ = step_;
  last_save_seconds_ = seconds_since(start);
  spdlog::info("checkpoint saved: {} ({:.2f} s)", path.string(), last_save_seconds_);
  return path;
}

void Trainer::restore(const Checkpoint& checkpoint) {
  const Json& state = checkpoint.state();
  try {
    Json saved_config = state.at("config");
    Json current = config_.to_json();
    if (saved_config.at("model") != current.at("model")) {
      fail_file(checkpoint.path(), "the checkpoint's model shape differs from the config's:{}",
                describe_differences(saved_config.at("model"), current.at("model")));
    }
    if (state.at("optimizer").at("name") != config_.optimizer.at("name")) {
      fail_file(checkpoint.path(), "the checkpoint was written by optimizer '{}', the config asks for '{}'",
                state.at("optimizer").at("name").get<std::string>(), config_.optimizer.at("name").get<std::string>());
    }
    if (saved_config != current) spdlog::warn("resuming with a config that differs from the checkpoint's:{}", describe_differences(saved_config, current));
    checkpoint.read_tensor("params", backend_->weights());
    step_ = json_integer<int64_t>(state, "step", checkpoint.path());
    backend_->weights_changed(step_);
    data_parallel_->load_optimizer_state(checkpoint);
    optimizer().load_scalar_state(state.at("optimizer").at("scalar_state"));
    windows_consumed_ = json_integer<uint64_t>(state, "windows_consumed", checkpoint.path());
    tokens_seen_ = json_integer<int64_t>(state, "tokens_seen", checkpoint.path());
    train_seconds_ = state.at("train_seconds").get<double>();
    skipped_steps_ = json_integer<int64_t>(state, "skipped_steps", checkpoint.path());
    recent_losses_ = state.at("recent_losses").get<std::deque<double>>();
    recent_grad_norms_ = state.at("recent_grad_norms").get<std::deque<double>>();
  } catch (const Json::exception& e) {
    fail_file(checkpoint.path(), "malformed run state in the manifest: {}", e.what());
  }
  last_saved_step_ = step_;
  const int saved_world = state.value("world_size", 1);
  spdlog::info("restored {} (step {}{})", checkpoint.path().string(), step_,
               saved_world != comm_.world_size() ? fmt::format(", written by {} ranks, re-sharded over {}", saved_world, comm_.world_size()) : "");
}

void Trainer::write_sample() {
  const LoggingConfig& l = config_.logging;
  if (l.sample_tokens <= 0) return;
  // Rank 0 samples; the others take part in the collective switch to the
  // evaluation point.
  std::optional<Gpt2Tokenizer> tokenizer;
  if (comm_.rank() == 0) {
    try {
      tokenizer = Gpt2Tokenizer::load(config_.data.tokenizer_dir);
    } catch (const Error& e) {
      spdlog::warn("no sample: {}", e.what());
    }
  }
  if (!comm_.any(tokenizer.has_value())) return;
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;
  SamplingOptions options;
  options.max_new_tokens = l.sample_tokens;
  options.temperature = static_cast<float>(l.sample_temperature);
  options.top_k = l.sample_top_k;
  options.seed = config_.training.seed;
  with_eval_params([&] {
    if (!tokenizer) return;
    prompt = l.sample_prompt.empty() ? std::vector<int32_t>{tokenizer->eot_id()} : tokenizer->encode(l.sample_prompt);
    tokens = generate(backend_->sampling_model(), prompt, options);
  });
  if (!tokenizer) return;
  std::span<const int32_t> continuation(tokens.data() + prompt.size(), tokens.size() - prompt.size());
  spdlog::info("sample ({} tokens, temperature {}, top-k {}):\n{}{}", continuation.size(), l.sample_temperature, l.sample_top_k,
               l.sample_prompt, tokenizer->decode(continuation));
}

}  // namespace emix
