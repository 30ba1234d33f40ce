// emix: pretraining of decoder-only transformers with AdEMAMix and friends.
#include <cstdio>

#include <spdlog/spdlog.h>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

int main(int argc, char** argv) {
  emix::init_console_logging();
  CLI::App app{"emix: GPT-2 pretraining on CPU or GPU with AdEMAMix, AdamW and relatives"};
  app.require_subcommand(1);
  app.fallthrough(false);
  emix::cli::add_train_command(app);
  emix::cli::add_tokenize_command(app);
  emix::cli::add_generate_command(app);
  emix::cli::add_bench_command(app);
  emix::cli::add_memory_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const emix::Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  } catch (const std::exception& e) {
    spdlog::critical("internal error: {}", e.what());
    return 2;
  }
  return 0;
}
