#include "fuzz_entries.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <vector>

#include "checkpoint/checkpoint.hpp"
#include "config/config.hpp"
#include "config/json_reader.hpp"
#include "core/crc32.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "data/shard.hpp"
#include "data/tokenizer/gpt2_tokenizer.hpp"

namespace emix::fuzz {
namespace fs = std::filesystem;

namespace {

// Largest tensor/shard the entries will allocate for. Sizes come from
// metadata that the parsers have checked against the file's length, so any
// count above this (the inputs are a few KiB) means a check was bypassed.
constexpr uint64_t kMaxElements = uint64_t{1} << 24;

std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) fuzz_finding("cannot write scratch file " + path.string());
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Splits at the first NUL byte: (before, after); after is empty without one.
std::pair<std::string_view, std::string_view> split_nul(std::string_view text) {
  size_t nul = text.find('\0');
  if (nul == std::string_view::npos) return {text, {}};
  return {text.substr(0, nul), text.substr(nul + 1)};
}

}  // namespace

[[noreturn]] void fuzz_finding(const std::string& what) {
  std::fprintf(stderr, "FUZZ FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("emix_fuzz_" + std::to_string(::getpid()));
    fs::create_directories(d);
    // Removed at exit; libFuzzer exits through exit() after -max_total_time.
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(fs::temp_directory_path() / ("emix_fuzz_" + std::to_string(::getpid())), ignored);
    });
    return d;
  }();
  return dir;
}

fs::path tokenizer_dir() {
  if (const char* env = std::getenv("EMIX_TOKENIZER_DIR"); env != nullptr && *env != '\0') return env;
#ifdef EMIX_SOURCE_DIR
  fs::path dir = fs::path(EMIX_SOURCE_DIR) / "data" / "gpt2_tokenizer";
  if (fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe")) return dir;
#endif
  return {};
}

// ------------------------------------------------------------------ config --
// Input: JSON config text, optionally followed by a NUL byte and
// "section.key=value" overrides, one per line.
int fuzz_config(const uint8_t* data, size_t size) {
  auto [json_text, overrides] = split_nul(as_text(data, size));
  try {
    Json document = parse_json_text(json_text, "fuzz.json");
    while (!overrides.empty()) {
      size_t end = overrides.find('\n');
      std::string line(overrides.substr(0, end));
      overrides = end == std::string_view::npos ? std::string_view{} : overrides.substr(end + 1);
      apply_override(document, line);
    }
    Config config = Config::from_json(document);
    (void)config;
  } catch (const Error&) {
  }
  return 0;
}

// ------------------------------------------------------------------- shard --
// Input: a whole shard file. Read through the shard functions, then through
// the window loader with a small sequence length taken from the input.
int fuzz_shard(const uint8_t* data, size_t size) {
  fs::path path = scratch_dir() / "fuzz_shard.bin";
  write_bytes(path, as_text(data, size));
  try {
    uint64_t count = read_shard_token_count(path);
    if (count > kMaxElements) fuzz_finding("shard token count " + std::to_string(count) + " beyond the file");
    std::vector<uint16_t> tokens = read_shard_tokens(path);
    if (tokens.size() != count) fuzz_finding("read_shard_tokens and read_shard_token_count disagree");
    // Parameters of the loader from the bytes after the header's fixed fields.
    int seq_len = 1 + (size > 12 ? data[12] % 16 : 3);
    int vocab_size = size > 13 && (data[13] & 1) ? 256 : 50257;
    bool shuffle = size > 14 && (data[14] & 1);
    TokenDataset dataset(path.string(), seq_len, vocab_size);
    WindowStream stream(dataset, /*seed=*/size, shuffle);
    int rows = 3;
    std::vector<int32_t> inputs(static_cast<size_t>(rows * seq_len)), targets(inputs.size());
    for (uint64_t first : {uint64_t{0}, dataset.num_windows() - 1, dataset.num_windows() * 2 + 1}) {
      stream.read(first, rows, inputs, targets);
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i] < 0 || inputs[i] >= vocab_size || targets[i] < 0 || targets[i] >= vocab_size) {
          fuzz_finding("window stream returned a token outside the vocabulary");
        }
      }
    }
  } catch (const Error&) {
  }
  return 0;
}

// -------------------------------------------------------------- checkpoint --
namespace {
struct CheckpointSeed {
  std::string manifest;  // manifest.json of a valid checkpoint
  std::string data;      // its data file
  std::string data_name;
  uint64_t header_size = 0;
};

constexpr uint64_t kPrefixBytes = 24;  // magic, version, header CRC, header size

const CheckpointSeed& checkpoint_seed() {
  static const CheckpointSeed seed = [] {
    std::vector<float> a = {1.0f, -2.0f, 3.5f, 0.0f, 1e-3f};
    std::vector<float> b = {7.0f, 8.0f, 9.0f};
    std::vector<TensorRef> tensors = {{"params", a, 0}, {"m1", b, 0}};
    fs::path dir = save_checkpoint(scratch_dir() / "seed", 7, Json{{"step", 7}, {"rng", "abc"}}, tensors);
    CheckpointSeed s;
    s.manifest = read_bytes(dir / "manifest.json");
    Json manifest = Json::parse(s.manifest);
    s.data_name = manifest["files"][0]["name"].get<std::string>();
    s.data = read_bytes(dir / s.data_name);
    std::memcpy(&s.header_size, s.data.data() + 16, 8);
    return s;
  }();
  return seed;
}
}  // namespace

// Input: a mode byte, then bytes that
//   mode 0: replace manifest.json;
//   mode 1: replace the data file's JSON header (prefix CRC, size and the
//           manifest's header_crc32/bytes are fixed up so parsing is reached);
//   mode 2: are XOR-ed into the data file at the offset in their first 2 bytes;
//   mode 3: as 2, then the header CRC is fixed up in the prefix and manifest.
// The checkpoint is opened and every tensor read.
int fuzz_checkpoint(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const CheckpointSeed& seed = checkpoint_seed();
  int mode = data[0] % 4;
  std::string_view rest = as_text(data + 1, size - 1);
  std::string manifest = seed.manifest;
  std::string file = seed.data;

  auto fix_manifest = [&](uint32_t header_crc) {
    Json m = Json::parse(manifest);
    m["files"][0]["bytes"] = file.size();
    m["files"][0]["header_crc32"] = header_crc;
    manifest = m.dump(1);
  };
  if (mode == 0) {
    manifest = std::string(rest);
  } else if (mode == 1) {
    std::string header(rest);
    uint64_t original_end = kPrefixBytes + seed.header_size;
    if (header.size() < seed.header_size) header.resize(seed.header_size, ' ');
    uint64_t header_size = header.size();
    uint32_t crc = crc32(header.data(), header.size());
    std::string rebuilt = seed.data.substr(0, kPrefixBytes);
    std::memcpy(rebuilt.data() + 12, &crc, 4);
    std::memcpy(rebuilt.data() + 16, &header_size, 8);
    rebuilt += header;
    if (header_size == seed.header_size) rebuilt += seed.data.substr(original_end);
    file = std::move(rebuilt);
    fix_manifest(crc);
  } else {
    if (rest.size() >= 2) {
      size_t at = (static_cast<uint8_t>(rest[0]) | static_cast<size_t>(static_cast<uint8_t>(rest[1])) << 8) % file.size();
      for (size_t i = 2; i < rest.size() && at < file.size(); ++i, ++at) file[at] = static_cast<char>(file[at] ^ rest[i]);
    }
    if (mode == 3) {
      uint64_t header_size = 0;
      std::memcpy(&header_size, file.data() + 16, 8);
      if (header_size <= file.size() - kPrefixBytes) {
        uint32_t crc = crc32(file.data() + kPrefixBytes, header_size);
        std::memcpy(file.data() + 12, &crc, 4);
        fix_manifest(crc);
      }
    }
  }

  fs::path dir = scratch_dir() / "fuzz_ckpt" / "step_00000007";
  fs::create_directories(dir);
  write_bytes(dir / "manifest.json", manifest);
  write_bytes(dir / seed.data_name, file);
  try {
    Checkpoint ckpt = Checkpoint::open(dir);
    (void)ckpt.state().dump();
    for (const char* name : {"params", "m1", "m2", ""}) {
      if (!ckpt.has_tensor(name)) continue;
      uint64_t count = ckpt.tensor_count(name);
      if (count > kMaxElements || count * sizeof(float) > file.size()) {
        fuzz_finding("tensor count " + std::to_string(count) + " accepted for a " + std::to_string(file.size()) +
                     "-byte data file");
      }
      std::vector<float> values(count);
      ckpt.read_tensor(name, values);
    }
  } catch (const Error&) {
  }
  return 0;
}

// --------------------------------------------------------------- tokenizer --
// Input: a mode byte, then
//   even: text, checked to round-trip through GPT-2's tokenizer
//         (decode(encode(x)) == x, every id within the vocabulary);
//   odd:  encoder.json, a NUL byte, vocab.bpe: loaded from temp files; when
//         that succeeds, the same round trip on the input's bytes.
int fuzz_tokenizer(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  auto round_trip = [](const Gpt2Tokenizer& tokenizer, std::string_view text) {
    std::vector<int32_t> ids = tokenizer.encode(text);
    for (int32_t id : ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) fuzz_finding("encode produced id " + std::to_string(id));
    }
    std::string back = tokenizer.decode(ids);
    if (back != text) fuzz_finding("decode(encode(x)) != x for a " + std::to_string(text.size()) + "-byte input");
  };
  std::string_view rest = as_text(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    static const std::unique_ptr<Gpt2Tokenizer> gpt2 = []() -> std::unique_ptr<Gpt2Tokenizer> {
      fs::path dir = tokenizer_dir();
      if (dir.empty()) return nullptr;
      return std::make_unique<Gpt2Tokenizer>(Gpt2Tokenizer::load(dir));
    }();
    if (gpt2) round_trip(*gpt2, rest);
    return 0;
  }
  auto [encoder, merges] = split_nul(rest);
  fs::path dir = scratch_dir() / "fuzz_tokenizer";
  fs::create_directories(dir);
  write_bytes(dir / "encoder.json", encoder);
  write_bytes(dir / "vocab.bpe", merges);
  std::optional<Gpt2Tokenizer> tokenizer;
  try {
    tokenizer.emplace(Gpt2Tokenizer::load(dir));
  } catch (const Error&) {
    return 0;
  }
  // A loaded vocabulary covers all 256 bytes, so any text must round-trip.
  round_trip(*tokenizer, rest);
  return 0;
}

int run_entry(std::string_view target, const uint8_t* data, size_t size) {
  if (target == "config") return fuzz_config(data, size);
  if (target == "shard") return fuzz_shard(data, size);
  if (target == "checkpoint") return fuzz_checkpoint(data, size);
  if (target == "tokenizer") return fuzz_tokenizer(data, size);
  fuzz_finding("unknown fuzz target " + std::string(target));
}

}  // namespace emix::fuzz
