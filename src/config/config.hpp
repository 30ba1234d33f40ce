#pragma once
// The run configuration: one JSON file with the sections below, every key
// typed and checked (unknown keys are errors suggesting the closest valid
// one), command-line overrides `section.key=value`, and the effective config
// (defaults and derived values filled in) that is logged and stored in every
// checkpoint. README.md lists every key.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "config/json_reader.hpp"
#include "distributed/shard_plan.hpp"
#include "model/gpt2_config.hpp"
#include "optim/schedule.hpp"

namespace emix {

struct DataConfig {
  std::string train_shards;  // glob of training shards
  std::string val_shards;    // glob of validation shards; "" for none
  bool shuffle = true;       // shard and window order reshuffled every epoch
  std::string tokenizer_dir = "data/gpt2_tokenizer";
};

struct TrainingConfig {
  int batch_size = 16;              // sequences per micro-batch
  int seq_len = 64;                 // tokens per sequence (<= model.block_size)
  int64_t total_batch_tokens = 0;   // tokens per optimizer step; 0: one micro-batch
  int64_t steps = 0;                // optimizer steps (or give token_budget)
  int64_t token_budget = 0;         // training tokens; steps = budget / total_batch_tokens
  double grad_clip = 1.0;           // global L2 norm; 0 disables clipping
  int eval_interval = 100;          // steps between validation passes; 0: only at the end
  int eval_batches = 10;            // micro-batches per validation pass
  uint64_t seed = 1337;             // initialization and data order
  int threads = 0;                  // CPU threads; 0: all cores
  int max_consecutive_skips = 5;    // skipped steps in a row before stopping
  double outlier_zscore = 0.0;      // skip steps whose loss or gradient norm is this many σ above the window; 0: off
  int outlier_window = 100;         // applied steps the outlier statistics are taken over
  double time_limit_minutes = 0.0;  // stop (with a checkpoint) before this much wall time; 0: none
  ZeroStage zero_stage = ZeroStage::replicate;  // under mpirun: 0 replicates the optimizer state, 1 shards it
                                                // (ZeRO-1), "m2" shards AdEMAMix's m2 alone
  int64_t forgetting_probe_step = 0;  // this step trains on the held-out probe batch; 0: no probe
  int forgetting_probe_interval = 10;  // steps between measurements of the probe batch's loss
  bool forgetting_probe_inject = true;  // false: measure the probe batch without training on it (the control run)

  // Derived: micro-batches accumulated per step (per rank).
  int accumulation_steps(int world_size = 1) const;
};

// training.zero_stage as JSON: 0, 1 or "m2".
Json zero_stage_json(ZeroStage stage);

struct CheckpointConfig {
  std::string dir;        // "" means <run_dir>/checkpoints
  int interval = 0;       // steps between checkpoints; 0: only at the end (and on signals)
  int keep_last = 3;      // older checkpoints are deleted; 0 keeps all
  int milestone_interval = 0;  // checkpoints at multiples of this step are never deleted; 0: none
};

struct LoggingConfig {
  std::string run_dir = "runs/default";  // metrics.jsonl, train.log, config.json live here
  int interval = 10;                     // steps between progress lines
  int sample_tokens = 128;               // tokens generated at the end; 0 disables
  std::string sample_prompt;             // "" starts from the end-of-text token
  double sample_temperature = 0.8;
  int sample_top_k = 40;
};

// Options of the CUDA backend (device "cuda"); ignored on the CPU.
struct CudaConfig {
  std::string attention = "cudnn";  // "cudnn" (flash attention) or "reference" (our own kernels)
  std::string recompute = "none";   // activations recomputed in the backward: "none", "gelu", "gelu+layernorm"
  bool deterministic = true;        // cuDNN attention's bitwise reproducible backward (else its faster atomic one)
};

struct Config {
  std::string description;
  std::string device = "cpu";
  ModelConfig model;
  DataConfig data;
  Json optimizer;  // normalized by the named optimizer: {"name": ..., every hyperparameter}
  ScheduleConfig schedule;
  TrainingConfig training;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  CudaConfig cuda;

  // Parses and validates; throws an Error naming the bad key.
  static Config from_json(const Json& json);
  Json to_json() const;

  int64_t total_steps() const;
  std::filesystem::path checkpoint_dir() const;
  std::filesystem::path run_dir() const { return logging.run_dir; }
};

// Applies one "section.key=value" override to a config document. The value
// is parsed as JSON when it is valid JSON (numbers, true, null, "quoted"),
// and taken as a plain string otherwise.
void apply_override(Json& document, const std::string& assignment);

// Reads, overrides and validates a config file; errors start with its path.
Config load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});

}  // namespace emix
