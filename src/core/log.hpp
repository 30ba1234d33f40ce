#pragma once
// Logging setup: a colored console logger on stderr shared by every command,
// and an optional log file (the run directory's train.log) added to it.
#include <filesystem>

namespace emix {

void init_console_logging();
// Mirrors everything logged from now on into `path` (appending).
void add_log_file(const std::filesystem::path& path);
// In a multi-rank job: every rank's lines start with "[rank r]", and ranks
// other than 0 log warnings and errors only (rank 0 tells the story of the
// run; the numbers it logs are the same on every rank).
void set_log_rank(int rank, int world_size);

}  // namespace emix
