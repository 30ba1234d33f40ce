#pragma once
// The subcommands of the `emix` executable, one file each in src/cli/.
// Each adds itself to the app with a callback that does the work; an
// emix::Error thrown there is printed by main() and exits with status 1.
#include <CLI/CLI.hpp>

namespace emix::cli {

void add_train_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_memory_command(CLI::App& app);

}  // namespace emix::cli
