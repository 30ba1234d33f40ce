// Replays every input in tests/fuzz/regressions/<target>/ (inputs that once
// crashed a fuzz target, kept by scripts/fuzz) and every seed in
// tests/fuzz/corpus/<target>/ through the fuzz targets' entry functions, so
// the normal build guards the fixes. An entry aborts on a finding and lets
// any exception other than emix::Error escape.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_entries.hpp"

namespace fs = std::filesystem;

namespace {

std::vector<fs::path> inputs_of(const std::string& kind, const std::string& target) {
  std::vector<fs::path> files;
  fs::path dir = fs::path(EMIX_FUZZ_DIR) / kind / target;
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().filename().string()[0] != '.') files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void replay(const std::string& kind, const std::string& target) {
  for (const fs::path& file : inputs_of(kind, target)) {
    SCOPED_TRACE(file.string());
    std::ifstream in(file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NO_THROW(emix::fuzz::run_entry(target, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  }
}

class FuzzRegressions : public ::testing::TestWithParam<std::string> {};

TEST_P(FuzzRegressions, CrashInputsStayFixed) { replay("regressions", GetParam()); }

TEST_P(FuzzRegressions, SeedCorpusIsHandled) {
  EXPECT_FALSE(inputs_of("corpus", GetParam()).empty()) << "no seed inputs in tests/fuzz/corpus/" << GetParam();
  replay("corpus", GetParam());
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzRegressions,
                         ::testing::ValuesIn(std::vector<std::string>(std::begin(emix::fuzz::kTargets),
                                                                      std::end(emix::fuzz::kTargets))),
                         [](const auto& info) { return info.param; });

}  // namespace
