#include "test_support.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>

#include <sys/wait.h>

#include "checkpoint/checkpoint.hpp"
#include "core/file_io.hpp"
#include "core/rng.hpp"
#include "data/shard.hpp"
#include "distributed/communicator.hpp"
#include "optim/optimizer.hpp"

namespace emix::test {
namespace fs = std::filesystem;

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
}

void expect_only_own_chunk_summed(std::span<const uint16_t> after, std::span<const uint16_t> before,
                                  std::span<const uint16_t> sums, const ShardPlan& plan) {
  ASSERT_EQ(after.size(), plan.padded_total());
  ASSERT_EQ(before.size(), plan.padded_total());
  const size_t mine_begin = static_cast<size_t>(plan.rank) * plan.chunk;
  for (size_t i = 0; i < after.size(); ++i) {
    const bool mine = i >= mine_begin && i < mine_begin + plan.chunk && i < plan.total;
    ASSERT_EQ(after[i], mine ? sums[i - mine_begin] : before[i])
        << "element " << i << " on rank " << plan.rank << " of " << plan.world;
  }
}

fs::path source_dir() { return fs::path(EMIX_SOURCE_DIR); }

fs::path tokenizer_dir() {
  if (const char* dir = std::getenv("EMIX_TOKENIZER_DIR"); dir != nullptr && *dir != '\0') return dir;
  return source_dir() / "data" / "gpt2_tokenizer";
}

fs::path golden_dir() {
  if (const char* dir = std::getenv("GOLDEN_DIR"); dir != nullptr && *dir != '\0') return fs::path(dir);
  return source_dir() / ".." / "shared" / "golden";
}

TempDir::TempDir() {
  std::random_device device;
  for (int attempt = 0;; ++attempt) {
    path_ = fs::temp_directory_path() / ("emix_test_" + std::to_string(device()));
    if (fs::create_directory(path_)) break;
    if (attempt > 100) throw std::runtime_error("cannot create a temporary directory");
  }
}

TempDir::~TempDir() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

std::vector<fs::path> golden_model_dirs() {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(golden_dir())) {
    if (entry.is_directory() && entry.path().filename().string().starts_with("gpt2_")) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

ModelConfig golden_model_config(const nlohmann::json& meta) {
  const nlohmann::json& m = meta.at("model");
  ModelConfig config;
  config.vocab_size = m.at("vocab_size");
  config.padded_vocab_size = config.vocab_size;
  config.n_layer = m.at("n_layer");
  config.n_embd = m.at("n_embd");
  config.n_head = m.at("n_head");
  config.block_size = m.at("block_size");
  return config;
}

void write_tiny_shards(const fs::path& dir) {
  Rng rng(99);
  for (int s = 0; s < 2; ++s) {
    std::vector<uint16_t> tokens(s == 0 ? 97 : 73);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<uint16_t>((i * 3 + (rng.next_below(4) == 0 ? rng.next_below(kTinyVocab) : 0)) % kTinyVocab);
    }
    write_shard(dir / ("tiny_train_" + std::to_string(s) + ".bin"), tokens);
  }
  write_shard(dir / "tiny_val_0.bin", std::vector<uint16_t>(40, 5));
}

nlohmann::json tiny_run_config(const TempDir& dir, const std::string& optimizer, const std::string& run,
                               const nlohmann::json& optimizer_overrides) {
  nlohmann::json config{
      {"model", {{"vocab_size", kTinyVocab}, {"padded_vocab_size", kTinyVocab}, {"n_layer", 2}, {"n_embd", 16}, {"n_head", 2}, {"block_size", 16}}},
      {"data", {{"train_shards", (dir / "tiny_train_*.bin").string()}, {"val_shards", (dir / "tiny_val_*.bin").string()}}},
      {"optimizer", {{"name", optimizer}, {"lr", 3e-3}}},
      {"schedule", {{"name", "cosine"}, {"warmup_steps", 3}}},
      {"training", {{"batch_size", 2}, {"seq_len", 8}, {"total_batch_tokens", 32}, {"steps", 13}, {"eval_interval", 4},
                    {"eval_batches", 2}, {"seed", 5}, {"grad_clip", 0.5}}},
      {"checkpoint", {{"keep_last", 2}}},
      {"logging", {{"run_dir", (dir / run).string()}, {"interval", 100}, {"sample_tokens", 0}}},
  };
  config["optimizer"].update(optimizer_overrides);
  return config;
}

ShellResult run_shell(const std::string& command) {
  ShellResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot start: " + command);
  char buffer[4096];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string emix_command(const std::string& arguments) { return shell_quote(EMIX_BINARY) + " " + arguments; }

ResumedRun run_stopped_and_resumed(const Config& config, int64_t stop_at_step, Communicator* comm) {
  ResumedRun resumed;
  {
    Trainer first(config, nullptr, comm);
    if (first.run(stop_at_step)) throw std::runtime_error("the run finished before the stop");
    resumed.history = first.history();
  }
  auto checkpoint = open_latest_checkpoint(config.checkpoint_dir());
  if (!checkpoint || checkpoint->step() != stop_at_step) {
    throw std::runtime_error("no checkpoint of step " + std::to_string(stop_at_step) + " after the stop");
  }
  resumed.trainer = std::make_unique<Trainer>(config, &*checkpoint, comm);
  if (!resumed.trainer->run()) throw std::runtime_error("the resumed run did not finish");
  const std::vector<StepRecord>& second = resumed.trainer->history();
  resumed.history.insert(resumed.history.end(), second.begin(), second.end());
  return resumed;
}

ShellResult run_in_private_mount_namespace(const std::string& script) {
  return run_shell("unshare -rm sh -c " + shell_quote(script));
}

ShellResult run_on_small_disk(const std::filesystem::path& disk, uint64_t kib, const std::string& command,
                              const std::filesystem::path& copied, const std::filesystem::path& saved) {
  return run_in_private_mount_namespace("mount -t tmpfs -o size=" + std::to_string(kib) + "k tmpfs " +
                                        shell_quote(disk.string()) + " || exit 90; " + command + "; status=$?; cp -a " +
                                        shell_quote(copied.string()) + " " + shell_quote(saved.string()) +
                                        " || exit 91; exit $status");
}

std::string why_no_private_tmpfs(const std::filesystem::path& mount_point) {
  std::filesystem::create_directories(mount_point);
  ShellResult probe =
      run_in_private_mount_namespace("mount -t tmpfs -o size=4k tmpfs " + shell_quote(mount_point.string()));
  if (probe.exit_code == 0) return "";
  return "cannot mount a private tmpfs here (unshare -rm sh -c 'mount -t tmpfs ...' exited " +
         std::to_string(probe.exit_code) + "): " + probe.output;
}

std::vector<float> random_normal_vector(size_t size, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> values(size);
  for (float& v : values) v = static_cast<float>(rng.next_normal());
  return values;
}

std::vector<float> state_buffer(Optimizer& optimizer, const std::string& name) {
  for (const StateBuffer& buffer : optimizer.state_buffers()) {
    if (buffer.name == name) return {buffer.data.begin(), buffer.data.end()};
  }
  ADD_FAILURE() << "no state buffer " << name;
  return {};
}

std::vector<OptimizerVariant> optimizer_variants() {
  std::vector<OptimizerVariant> variants;
  for (const std::string& name : optimizer_names()) variants.push_back({name, nlohmann::json::object(), name});
  for (const char* dtype : {"bfloat16", "int8"}) {
    variants.push_back({"ademamix", nlohmann::json{{"m2_dtype", dtype}}, std::string("ademamix_") + dtype});
  }
  return variants;
}

namespace {
// Rank r > 0 prints only failures, prefixed with its rank.
class RankPrefixedFailures : public testing::EmptyTestEventListener {
 public:
  explicit RankPrefixedFailures(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }
  void OnTestEnd(const testing::TestInfo& info) override {
    if (info.result()->Failed()) std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};
}  // namespace

int run_all_tests_on_every_rank(Communicator& comm) {
  if (comm.world_size() > 1 && comm.rank() != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankPrefixedFailures(comm.rank()));
  }
  int status = RUN_ALL_TESTS();
  // Every rank's verdict decides the exit status of every rank.
  if (comm.world_size() > 1 && comm.any(status != 0)) status = 1;
  return status;
}

template <typename T>
std::vector<T> read_binary(const fs::path& path) {
  FileReader reader(path);
  std::vector<T> values(reader.size() / sizeof(T));
  if (!values.empty()) reader.read_at(0, values.data(), values.size() * sizeof(T));
  return values;
}

template std::vector<float> read_binary<float>(const fs::path&);
template std::vector<int32_t> read_binary<int32_t>(const fs::path&);

}  // namespace emix::test
