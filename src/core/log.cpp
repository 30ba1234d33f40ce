#include "core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace emix {

void init_console_logging() {
  auto logger = spdlog::stderr_color_mt("emix");
  logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  spdlog::set_default_logger(logger);
}

void set_log_rank(int rank, int world_size) {
  if (world_size <= 1) return;
  spdlog::default_logger()->set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", rank));
  if (rank != 0) spdlog::set_level(spdlog::level::warn);
}

void add_log_file(const std::filesystem::path& path) {
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string(), /*truncate=*/false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] %l %v");
  spdlog::default_logger()->sinks().push_back(sink);
  spdlog::default_logger()->flush_on(spdlog::level::info);
}

}  // namespace emix
