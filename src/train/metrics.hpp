#pragma once
// The metrics file of a run: JSON lines, one record per logged step
// ({"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_second",
// "elapsed_s"}) or validation pass ({"step", "val_loss", "tokens"}), read by
// scripts/plot. On resume, records past the checkpoint's step are dropped:
// the resumed run writes them again.
#include <cstdint>
#include <filesystem>

#include "config/json_reader.hpp"
#include "core/file_io.hpp"

namespace emix {

class MetricsLog {
 public:
  // Opens `path` for appending after dropping records with step > keep_through_step.
  MetricsLog(const std::filesystem::path& path, int64_t keep_through_step);
  // Appends one line; a failed write (a full disk) throws naming the file and
  // the reason. A line cut short by it is dropped when the file is next opened.
  void write(const Json& record);

 private:
  FileWriter out_;
};

}  // namespace emix
