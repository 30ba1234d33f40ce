// emix bench: GPU throughput figures for a config (src/train/cuda/bench.hpp).
#include "cli/commands.hpp"
#include "config/config.hpp"
#include "core/error.hpp"
#if defined(EMIX_HAVE_CUDA)
#include "train/cuda/bench.hpp"
#endif

namespace emix::cli {

namespace {
struct BenchOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  int warmup = 5;
  int steps = 20;
};
}  // namespace

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* command = app.add_subcommand("bench", "Time training steps and the optimizer on the GPU for a config");
  command->add_option("-c,--config", options->config_path, "Run config (JSON); its device must be cuda")->required();
  command->add_option("-s,--set", options->overrides, "Override a config value: section.key=value (repeatable)");
  command->add_option("--warmup", options->warmup, "Untimed steps first")->check(CLI::NonNegativeNumber);
  command->add_option("--steps", options->steps, "Timed steps (the median is reported)")->check(CLI::PositiveNumber);
  command->callback([options] {
    Config config = load_config(options->config_path, options->overrides);
#if defined(EMIX_HAVE_CUDA)
    run_cuda_benchmark(config, options->warmup, options->steps);
#else
    fail("bench: this build has no CUDA backend (nvcc was not found when it was configured)");
#endif
  });
}

}  // namespace emix::cli
