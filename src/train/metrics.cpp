#include "train/metrics.hpp"

#include <sstream>

namespace emix {
namespace {
// Keeps the records of steps <= keep_through_step; returns the path, for the
// writer opened on it afterwards.
const std::filesystem::path& drop_records_after(const std::filesystem::path& path, int64_t keep_through_step) {
  if (!std::filesystem::exists(path)) return path;
  std::istringstream lines(read_text_file(path));
  std::string kept;
  for (std::string line; std::getline(lines, line);) {
    Json record = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    // A torn last line (a crash or a full disk mid-write) is dropped with the
    // rest, as is a record whose step is not an integer (a float would be
    // cast with undefined behaviour).
    if (record.is_discarded() || !record.contains("step") || !record["step"].is_number_integer()) continue;
    if (record["step"].get<int64_t>() <= keep_through_step) kept += line + "\n";
  }
  write_text_file_atomic(path, kept);
  return path;
}
}  // namespace

MetricsLog::MetricsLog(const std::filesystem::path& path, int64_t keep_through_step)
    : out_(drop_records_after(path, keep_through_step), FileWriter::Mode::append) {}

void MetricsLog::write(const Json& record) {
  const std::string line = record.dump() + '\n';
  out_.write(line.data(), line.size());
}

}  // namespace emix
