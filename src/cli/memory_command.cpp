// emix memory: the training state each rank holds for a config, for 1..N
// ranks and each ZeRO stage, computed from the sharding plan (nothing is
// allocated, so a 1.3B config can be planned on any machine).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "config/config.hpp"
#include "core/text.hpp"
#include "distributed/shard_plan.hpp"
#include "optim/grad_clip.hpp"
#include "train/data_parallel.hpp"

namespace emix::cli {
namespace {

struct MemoryOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  int max_ranks = 8;
};

std::string gib(uint64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0)); }

void print_plan(const MemoryOptions& options) {
  const Config config = load_config(options.config_path, options.overrides);
  const size_t parameters = ParameterLayout(config.model).num_parameters();
  const Placement placement = config.device == "cuda" ? Placement::device : Placement::host;
  const std::vector<StateBuffer> buffers = optimizer_state_layout(config.optimizer);
  std::printf("%s: %s parameters, optimizer %s, device %s; GiB per rank (activations not included)\n",
              options.config_path.c_str(), format_count(static_cast<double>(parameters)).c_str(),
              config.optimizer.at("name").get<std::string>().c_str(), config.device.c_str());
  for (ZeroStage stage : {ZeroStage::replicate, ZeroStage::shard_all, ZeroStage::shard_m2}) {
    const std::string title = fmt::format("ZeRO stage {}", zero_stage_name(stage));
    if (stage == ZeroStage::shard_m2 && !has_m2(buffers)) {
      std::printf("\n%s: the optimizer keeps no m2, so this is stage 0\n", title.c_str());
      continue;
    }
    const char* m2_note = placement == Placement::device ? " (m2 sharded, the rest replicated; CPU backend only so far)"
                                                         : " (m2 sharded, the rest replicated)";
    std::printf("\n%s%s\n%-44s", title.c_str(), stage == ZeroStage::shard_m2 ? m2_note : "", "ranks");
    for (int world = 1; world <= options.max_ranks; ++world) std::printf("%8d", world);
    std::printf("\n");
    std::vector<std::vector<MemoryRow>> columns;
    for (int world = 1; world <= options.max_ranks; ++world) {
      columns.push_back(per_rank_memory(parameters, placement, buffers, ShardPlan::make(parameters, world, 0, kSumOfSquaresBlock), stage));
    }
    // Rows present for some world sizes only (stage m2's shard in flight) show 0 elsewhere.
    std::vector<std::string> names;
    for (const auto& column : columns) {
      for (const auto& row : column) {
        if (std::find(names.begin(), names.end(), row.what) == names.end()) names.push_back(row.what);
      }
    }
    for (const auto& name : names) {
      std::printf("%-44s", name.c_str());
      for (const auto& column : columns) {
        uint64_t bytes = 0;
        for (const auto& row : column) bytes += row.what == name ? row.bytes : 0;
        std::printf("%8s", gib(bytes).c_str());
      }
      std::printf("\n");
    }
    std::printf("%-44s", "total");
    for (const auto& column : columns) {
      uint64_t total = 0;
      for (const auto& row : column) total += row.bytes;
      std::printf("%8s", gib(total).c_str());
    }
    std::printf("\n");
  }
}

}  // namespace

void add_memory_command(CLI::App& app) {
  auto options = std::make_shared<MemoryOptions>();
  CLI::App* command = app.add_subcommand("memory", "Per-rank memory of a config's training state for 1..N ranks and each ZeRO stage");
  command->add_option("-c,--config", options->config_path, "JSON config file")->required()->check(CLI::ExistingFile);
  command->add_option("-s,--set", options->overrides, "Override a config value: section.key=value (repeatable)")
      ->allow_extra_args(false);
  command->add_option("--max-ranks", options->max_ranks, "Largest number of ranks to plan for")->check(CLI::Range(1, 1024));
  command->callback([options] { print_plan(*options); });
}

}  // namespace emix::cli
