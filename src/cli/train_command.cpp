// emix train: run or resume a training run from a JSON config.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include <spdlog/spdlog.h>

#include "checkpoint/checkpoint.hpp"
#include "cli/commands.hpp"
#include "config/config.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "distributed/communicator.hpp"
#include "train/signals.hpp"
#include "train/trainer.hpp"

namespace emix::cli {
namespace fs = std::filesystem;

namespace {
struct TrainOptions {
  std::string config_path;
  std::string resume;
  std::vector<std::string> overrides;
  int64_t stop_at_step = 0;  // 0: train to the end
};

// The config comes from --config, or else from the checkpoint being resumed;
// --set overrides apply either way.
Config resolve_config(const TrainOptions& options, const std::optional<Checkpoint>& checkpoint) {
  if (!options.config_path.empty()) return load_config(options.config_path, options.overrides);
  Json document = checkpoint->state().at("config");
  for (const auto& assignment : options.overrides) apply_override(document, assignment);
  return Config::from_json(document);
}

void train_on_ranks(const TrainOptions& options, Config config, std::optional<Checkpoint> checkpoint,
                    Communicator& comm) {
  if (options.resume == "latest") {
    checkpoint = open_latest_checkpoint(config.checkpoint_dir());
    if (!checkpoint) spdlog::info("no checkpoint in {}: starting a fresh run", config.checkpoint_dir().string());
  }
  // Every rank must resume from the same checkpoint (they could disagree if
  // one became readable on some nodes only).
  const double resumed_step = checkpoint ? static_cast<double>(checkpoint->step()) : -1.0;
  comm.check_all(comm.all_reduce_sum(resumed_step) == resumed_step * comm.world_size(),
                 fmt::format("this rank resumes from step {}, another rank from another one", resumed_step));
  if (comm.rank() == 0) {
    fs::create_directories(config.run_dir());
    add_log_file(config.run_dir() / "train.log");
  }
  spdlog::info("run directory: {}", config.run_dir().string());
  spdlog::info("effective config: {}", config.to_json().dump());
  install_stop_signal_handlers();
  Trainer trainer(std::move(config), checkpoint ? &*checkpoint : nullptr, &comm);
  trainer.run(options.stop_at_step > 0 ? std::optional<int64_t>(options.stop_at_step) : std::nullopt);
}

void run_training(const TrainOptions& options) {
  if (options.config_path.empty() && (options.resume.empty() || options.resume == "latest")) {
    fail("give --config FILE (and optionally --resume latest), or --resume CHECKPOINT_DIR");
  }
  // Read before the ranks connect: where the model lives chooses the
  // communicator (NCCL for GPUs).
  std::optional<Checkpoint> checkpoint;
  if (!options.resume.empty() && options.resume != "latest") checkpoint = Checkpoint::open(options.resume);
  Config config = resolve_config(options, checkpoint);
  // One process per rank under mpirun/srun; a plain launch is one rank.
  std::unique_ptr<Communicator> comm = make_communicator(config.device == "cuda");
  set_log_rank(comm->rank(), comm->world_size());
  try {
    train_on_ranks(options, std::move(config), std::move(checkpoint), *comm);
  } catch (const CollectiveError&) {
    // Every rank is here with its own message: MPI can be finalized as at a
    // normal end, so the job ends with each rank's error printed (by main)
    // and exit status 1, without MPI_Abort's noise.
    comm.reset();
    throw;
  } catch (const Error& e) {
    // With several ranks the communicator's destructor aborts the job while
    // this exception unwinds, before main() could print it: say it now.
    if (comm->world_size() > 1) spdlog::error("{}", e.what());
    throw;
  }
}
}  // namespace

void add_train_command(CLI::App& app) {
  auto options = std::make_shared<TrainOptions>();
  CLI::App* command = app.add_subcommand("train", "Train (or resume training) a model from a JSON config");
  command->add_option("-c,--config", options->config_path, "JSON config file")->check(CLI::ExistingFile);
  command->add_option("-r,--resume", options->resume,
                      "'latest' (newest valid checkpoint of the run, or a fresh start if none) or a checkpoint directory");
  command->add_option("-s,--set", options->overrides, "Override a config value: section.key=value (repeatable)")
      ->allow_extra_args(false);
  command->add_option("--stop-at-step", options->stop_at_step,
                      "Stop after this step with a checkpoint, as if preempted (resume with --resume latest)")
      ->check(CLI::PositiveNumber);
  command->callback([options] { run_training(*options); });
}

}  // namespace emix::cli
