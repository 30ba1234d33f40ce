#include "checkpoint/checkpoint.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/crc32.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"

namespace emix {
namespace fs = std::filesystem;

namespace {
constexpr char kMagic[8] = {'E', 'M', 'I', 'X', 'C', 'K', 'P', 'T'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kPrefixBytes = 24;
constexpr uint64_t kAlignment = 64;
constexpr const char* kManifest = "manifest.json";
constexpr const char* kDataFile = "rank_00000.bin";
// Sections are checksummed in chunks so verification streams through memory.
constexpr size_t kChunkBytes = size_t{1} << 24;

uint64_t align_up(uint64_t value) { return (value + kAlignment - 1) / kAlignment * kAlignment; }

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

// Writes one data file; returns the CRC of its header for the manifest.
uint32_t write_data_file(const fs::path& path, std::span<const TensorRef> tensors) {
  Json sections = Json::array();
  for (const auto& t : tensors) {
    sections.push_back({{"name", t.name}, {"dtype", "f32"}, {"count", t.data.size()},
                        {"global_offset", t.global_offset}, {"crc32", crc32(t.data.data(), t.data.size_bytes())}});
  }
  // Offsets depend on the header length, which depends on the offsets'
  // digits: lay out against a generous upper bound of the header size.
  std::string draft = Json{{"sections", sections}}.dump();
  uint64_t offset = align_up(kPrefixBytes + draft.size() + 32 * tensors.size() + 64);
  for (size_t i = 0; i < tensors.size(); ++i) {
    sections[i]["offset"] = offset;
    offset = align_up(offset + tensors[i].data.size_bytes());
  }
  std::string header = Json{{"sections", sections}}.dump();
  uint32_t header_crc = crc32(header.data(), header.size());

  FileWriter writer(path);
  std::array<char, kPrefixBytes> prefix{};
  std::memcpy(prefix.data(), kMagic, 8);
  std::memcpy(prefix.data() + 8, &kFormatVersion, 4);
  std::memcpy(prefix.data() + 12, &header_crc, 4);
  uint64_t header_size = header.size();
  std::memcpy(prefix.data() + 16, &header_size, 8);
  writer.write(prefix.data(), prefix.size());
  writer.write(header.data(), header.size());
  const std::array<char, kAlignment> zeros{};
  for (size_t i = 0; i < tensors.size(); ++i) {
    // Zero padding up to the section's offset; the gap after the header can
    // exceed one alignment unit (the header was laid out against a bound).
    const uint64_t target = sections[i]["offset"].get<uint64_t>();
    while (writer.bytes_written() < target) {
      writer.write(zeros.data(), std::min<uint64_t>(zeros.size(), target - writer.bytes_written()));
    }
    writer.write(std::as_bytes(tensors[i].data));
  }
  writer.close();
  return header_crc;
}

uint32_t checksum_range(const FileReader& file, uint64_t offset, uint64_t bytes) {
  std::vector<char> buffer(std::min<uint64_t>(bytes, kChunkBytes));
  uint32_t crc = 0;
  while (bytes > 0) {
    size_t n = std::min<uint64_t>(bytes, buffer.size());
    file.read_at(offset, buffer.data(), n);
    crc = crc32_update(crc, buffer.data(), n);
    offset += n;
    bytes -= n;
  }
  return crc;
}

int64_t step_of(const fs::path& dir) {
  std::string name = dir.filename().string();
  if (name.rfind("step_", 0) != 0 || name.size() <= 5) return -1;
  std::string digits = name.substr(5);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
  return std::stoll(digits);
}
}  // namespace

fs::path save_checkpoint(const fs::path& dir, int64_t step, const Json& state, std::span<const TensorRef> tensors) {
  fs::create_directories(dir);
  fs::path final_dir = dir / step_dir_name(step);
  fs::path temp_dir = dir / (step_dir_name(step) + ".tmp");
  std::error_code ignored;
  fs::remove_all(temp_dir, ignored);  // leftovers of an interrupted save
  try {
    fs::create_directory(temp_dir);
    uint32_t header_crc = write_data_file(temp_dir / kDataFile, tensors);
    Json manifest = {{"format", "emix-checkpoint"},
                     {"version", kFormatVersion},
                     {"step", step},
                     {"world_size", 1},
                     {"files", Json::array({{{"name", kDataFile}, {"bytes", fs::file_size(temp_dir / kDataFile)},
                                             {"header_crc32", header_crc}}})},
                     {"state", state}};
    write_text_file_atomic(temp_dir / kManifest, manifest.dump(1));
    // A checkpoint of the same step (e.g. saved again after a resume) is replaced.
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(temp_dir, final_dir);
    fsync_directory(dir);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temp_dir, ignored);
    fail("cannot write checkpoint {}: {}", final_dir.string(), e.what());
  } catch (...) {
    fs::remove_all(temp_dir, ignored);
    throw;
  }
  return final_dir;
}

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint ckpt;
  ckpt.path_ = path;
  fs::path manifest_path = path / kManifest;
  if (!fs::is_directory(path)) fail_file(path, "not a checkpoint directory");
  if (!fs::exists(manifest_path)) fail_file(path, "incomplete checkpoint: no {}", kManifest);
  Json manifest = parse_json_text(read_text_file(manifest_path), manifest_path.string());
  try {
    if (manifest.at("format") != "emix-checkpoint") fail_file(manifest_path, "not an emix checkpoint manifest");
    if (manifest.at("version").get<uint32_t>() != kFormatVersion) {
      fail_file(manifest_path, "unsupported checkpoint version {}", manifest.at("version").dump());
    }
    ckpt.step_ = manifest.at("step").get<int64_t>();
    ckpt.state_ = manifest.at("state");
    for (const auto& entry : manifest.at("files")) {
      fs::path file_path = path / entry.at("name").get<std::string>();
      FileReader file(file_path);
      if (file.size() != entry.at("bytes").get<uint64_t>()) {
        fail_file(file_path, "size is {} bytes, the manifest says {}: truncated or replaced", file.size(),
                  entry.at("bytes").get<uint64_t>());
      }
      std::array<char, kPrefixBytes> prefix{};
      file.read_at(0, prefix.data(), prefix.size());
      if (std::memcmp(prefix.data(), kMagic, 8) != 0) fail_file(file_path, "not an emix checkpoint file (bad magic)");
      uint32_t version = 0;
      uint32_t header_crc = 0;
      uint64_t header_size = 0;
      std::memcpy(&version, prefix.data() + 8, 4);
      std::memcpy(&header_crc, prefix.data() + 12, 4);
      std::memcpy(&header_size, prefix.data() + 16, 8);
      if (version != kFormatVersion) fail_file(file_path, "unsupported format version {}", version);
      if (header_size > file.size() - kPrefixBytes) fail_file(file_path, "header length {} exceeds the file", header_size);
      std::string header(header_size, '\0');
      file.read_at(kPrefixBytes, header.data(), header.size());
      if (crc32(header.data(), header.size()) != header_crc || header_crc != entry.at("header_crc32").get<uint32_t>()) {
        fail_file(file_path, "header checksum mismatch: the file is corrupt");
      }
      Json parsed_header = parse_json_text(header, file_path.string());
      for (const auto& s : parsed_header.at("sections")) {
        Section section{s.at("name"), s.at("count"), s.at("global_offset"), s.at("offset"), s.at("crc32"), file_path};
        if (section.offset > file.size() || section.count > (file.size() - section.offset) / sizeof(float)) {
          fail_file(file_path, "section '{}' extends past the end of the file", section.name);
        }
        if (checksum_range(file, section.offset, section.count * sizeof(float)) != section.crc) {
          fail_file(file_path, "checksum mismatch in section '{}' at offset {}: the file is corrupt", section.name,
                    section.offset);
        }
        ckpt.sections_.push_back(std::move(section));
      }
    }
  } catch (const Json::exception& e) {
    fail_file(manifest_path, "malformed checkpoint metadata: {}", e.what());
  }
  return ckpt;
}

const Checkpoint::Section& Checkpoint::section(std::string_view name) const {
  for (const auto& s : sections_) {
    if (s.name == name) return s;
  }
  fail_file(path_, "checkpoint has no tensor '{}'", name);
}

bool Checkpoint::has_tensor(std::string_view name) const {
  return std::any_of(sections_.begin(), sections_.end(), [&](const Section& s) { return s.name == name; });
}

uint64_t Checkpoint::tensor_count(std::string_view name) const { return section(name).count; }

void Checkpoint::read_tensor(std::string_view name, std::span<float> out) const {
  const Section& s = section(name);
  if (out.size() != s.count) {
    fail_file(s.file, "tensor '{}' has {} elements, but the model expects {}: the checkpoint is for another model shape",
              name, s.count, out.size());
  }
  FileReader file(s.file);
  file.read_at(s.offset, out.data(), out.size_bytes());
  if (crc32(out.data(), out.size_bytes()) != s.crc) {
    fail_file(s.file, "checksum mismatch in section '{}': the file changed while reading", name);
  }
}

std::vector<fs::path> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    int64_t step = step_of(entry.path());
    if (step >= 0 && entry.is_directory()) found.emplace_back(step, entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> paths;
  for (auto& [step, path] : found) paths.push_back(std::move(path));
  return paths;
}

std::optional<Checkpoint> open_latest_checkpoint(const fs::path& dir) {
  auto paths = list_checkpoints(dir);
  for (auto it = paths.rbegin(); it != paths.rend(); ++it) {
    try {
      return Checkpoint::open(*it);
    } catch (const Error& e) {
      spdlog::warn("skipping unusable checkpoint: {}", e.what());
    }
  }
  return std::nullopt;
}

void prune_checkpoints(const fs::path& dir, int keep_last, int milestone_interval) {
  // Half-written checkpoints of a process that was killed while saving.
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    std::string name = entry.path().filename().string();
    if (name.starts_with("step_") && name.ends_with(".tmp")) fs::remove_all(entry.path(), error);
  }
  if (keep_last <= 0) return;
  std::vector<fs::path> paths;
  for (auto& path : list_checkpoints(dir)) {
    if (milestone_interval <= 0 || step_of(path) % milestone_interval != 0) paths.push_back(std::move(path));
  }
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < paths.size(); ++i) {
    fs::remove_all(paths[i], error);
    if (error) spdlog::warn("could not delete old checkpoint {}: {}", paths[i].string(), error.message());
  }
}

}  // namespace emix
