#pragma once
// The training loop: builds the model, optimizer, schedule and data streams
// from a Config, runs optimizer steps with gradient accumulation and
// clipping, evaluates, logs progress and metrics, writes checkpoints, and
// resumes from them bit-exactly.
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "checkpoint/checkpoint.hpp"
#include "config/config.hpp"
#include "data/loader.hpp"
#include "distributed/communicator.hpp"
#include "optim/optimizer.hpp"
#include "train/backend.hpp"
#include "train/data_parallel.hpp"

namespace emix {

struct StepRecord {
  int64_t step = 0;
  float loss = 0.0f;  // mean training loss of the step, before the update
  float lr = 0.0f;
  double grad_norm = 0.0;  // before clipping
  bool skipped = false;    // non-finite or outlier loss/gradients: no update was applied
  // Wall time of the update (optimizer step, and the parameters' all-gather
  // when sharded) on host placement; NaN on the device, where the step is
  // queued asynchronously (emix bench times it there).
  double optimizer_seconds = 0.0;
};

// With several ranks (a Communicator of world size N), every rank constructs
// a Trainer with the same config and calls the same methods in the same
// order: each rank reads its own part of every global batch, the ranks'
// gradients are combined by DataParallel, and every number the trainer
// reports (loss, gradient norm, validation loss) is the same on every rank.
// Only rank 0 writes the run directory's files (config.json, metrics); every
// rank writes its part of each checkpoint.
class Trainer {
 public:
  // Starts a fresh run, or continues from `resume` (a checkpoint already
  // opened and verified, written by any number of ranks). The config's model
  // shape must match the checkpoint's. Without `comm` the run is a single
  // process; `comm` must outlive the trainer.
  explicit Trainer(Config config, const Checkpoint* resume = nullptr, Communicator* comm = nullptr);
  ~Trainer();

  // Trains until the configured number of steps, `stop_at_step`, a stop
  // signal or the wall-clock limit, whichever comes first; then evaluates and
  // checkpoints. Returns true when the run reached its final step. Throws,
  // after a checkpoint of the last completed step, when too many steps in a
  // row had to be skipped, a batch cannot be read (a token id outside the
  // vocabulary) or the metrics file cannot be written (a full disk).
  bool run(std::optional<int64_t> stop_at_step = std::nullopt);

  int64_t step() const { return step_; }
  const Config& config() const { return config_; }
  ModelBackend& backend() { return *backend_; }
  Optimizer& optimizer() { return data_parallel_->optimizer(); }
  const std::vector<StepRecord>& history() const { return history_; }
  // Mean validation loss over the configured eval batches (NaN without val data).
  float evaluate();
  std::filesystem::path save_checkpoint();

 private:
  StepRecord train_step();
  // Reads this rank's micro-batches starting at the stream positions
  // `starts` into inputs_/targets_. Collective: a batch that cannot be read on
  // any rank makes every rank throw before any of them computes with it.
  void read_batches(WindowStream& stream, std::span<const uint64_t> starts);
  size_t batch_tokens() const;  // batch_size × seq_len
  // Micro-batch k of those read_batches read last.
  std::span<const int32_t> batch_inputs(size_t k) const;
  std::span<const int32_t> batch_targets(size_t k) const;
  void count_skip(const StepRecord& record);
  // Collective: saves a checkpoint of the last completed step (unless there
  // is one), then throws `failure` (this rank's; empty when another rank
  // failed) with the checkpoint to resume from.
  [[noreturn]] void stop_after_failure(const std::string& failure);
  // Rank 0's metrics. A failed write does not throw: it is remembered in
  // metrics_error_, and the ranks agree at the end of the step to stop.
  void write_metrics(const Json& record);
  // True when the loss or gradient norm is an outlier against the recent
  // applied steps (training.outlier_zscore); records applied steps.
  bool is_outlier(const StepRecord& record) const;
  void remember_applied(const StepRecord& record);
  bool near_time_limit(double run_seconds) const;
  struct StopVote {
    bool signal = false;      // a stop signal reached some rank
    bool out_of_time = false;  // some rank is near the wall-clock limit
    bool metrics_failed = false;  // rank 0 could not write the metrics file
  };
  // Collective, so that every rank stops after the same step.
  StopVote agree_to_stop(bool out_of_time);
  // Collective: every rank must have been started with the same config.
  void check_same_config_everywhere();
  // A periodic checkpoint that fails is logged and training goes on: the
  // previous checkpoints are intact and the next interval tries again.
  void try_periodic_checkpoint();
  // Runs `body` with the model holding the optimizer's evaluation point
  // (schedule-free's x), then restores the training point bit-exactly.
  void with_eval_params(const std::function<void()>& body);
  // Mean loss of `batches` micro-batches of the stream from window `first`,
  // split over the ranks; at the evaluation point.
  float mean_loss(WindowStream& stream, uint64_t first, uint64_t batches);
  uint64_t sequences_per_step() const;
  // The forgetting probe (training.forgetting_probe_step): where its batch
  // is in the training stream, whether its loss is measured after the
  // current step, and the measurement.
  uint64_t probe_position() const;
  bool probe_due() const;
  void log_probe_loss();
  void check_probe_batch() const;
  void restore(const Checkpoint& checkpoint);
  Json run_state() const;
  void log_progress(const StepRecord& record, double step_seconds);
  void write_sample();

  Config config_;
  std::unique_ptr<Communicator> own_comm_;  // the local one, when none was given
  Communicator& comm_;
  std::unique_ptr<ModelBackend> backend_;
  std::unique_ptr<DataParallel> data_parallel_;
  std::unique_ptr<TokenDataset> train_data_;
  std::unique_ptr<WindowStream> train_stream_;
  std::unique_ptr<TokenDataset> val_data_;
  std::unique_ptr<WindowStream> val_stream_;
  std::unique_ptr<class MetricsLog> metrics_;  // rank 0 only
  std::string metrics_error_;                 // the first failed metrics write
  std::vector<int32_t> inputs_;   // the micro-batches read_batches read last
  std::vector<int32_t> targets_;
  std::vector<StepRecord> history_;

  int64_t step_ = 0;               // optimizer steps completed
  uint64_t windows_consumed_ = 0;  // position in the training window stream
  int64_t tokens_seen_ = 0;
  double train_seconds_ = 0.0;     // wall time spent in steps, over all resumes
  int64_t last_saved_step_ = -1;
  int64_t skipped_steps_ = 0;      // over all resumes
  int consecutive_skips_ = 0;
  double last_save_seconds_ = 0.0;
  std::deque<double> recent_losses_;      // of applied steps, for outlier detection
  std::deque<double> recent_grad_norms_;
};

}  // namespace emix
