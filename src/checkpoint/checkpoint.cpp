#include "checkpoint/checkpoint.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/crc32.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "distributed/communicator.hpp"

namespace emix {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'E', 'M', 'I', 'X', 'C', 'K', 'P', 'T'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kPrefixBytes = 24;
constexpr uint64_t kAlignment = 64;
constexpr const char* kManifest = "manifest.json";
// Sections are checksummed in chunks so verification streams through memory.
constexpr size_t kChunkBytes = size_t{1} << 24;

uint64_t align_up(uint64_t value) { return (value + kAlignment - 1) / kAlignment * kAlignment; }

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

std::string data_file_name(int rank) { return fmt::format("rank_{:05d}.bin", rank); }

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

// Test-only fault injection (docs/reliability.md): with
// EMIX_FAULT_CORRUPT_SAVE_AT_STEP=N, the save of step N flips the last byte
// of each data file it writes (tensor data) after writing it, as a faulty
// disk or filesystem would, so that its read-back fails.
void corrupt_if_asked(const fs::path& file, int64_t step) {
  if (env_int("EMIX_FAULT_CORRUPT_SAVE_AT_STEP") != step) return;
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  stream.seekg(-1, std::ios::end);
  const char last = static_cast<char>(stream.get());
  stream.seekp(-1, std::ios::end);
  stream.put(static_cast<char>(last ^ 0x5a));
  if (!stream.flush()) fail_file(file, "fault injection could not write");
}

int64_t step_of(const fs::path& dir) {
  std::string name = dir.filename().string();
  if (name.rfind("step_", 0) != 0 || name.size() <= 5) return -1;
  std::string digits = name.substr(5);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
  return std::stoll(digits);
}
}  // namespace

namespace {
// Runs one phase of a collective save on every rank: `body` may throw an
// emix::Error or a filesystem error on some ranks only; then every rank
// throws (Communicator::check_all).
template <typename Body>
void collective_phase(Communicator& comm, const fs::path& final_dir, const Body& body) {
  std::string error;
  try {
    body();
  } catch (const fs::filesystem_error& e) {
    error = fmt::format("cannot write checkpoint {}: {}", final_dir.string(), e.what());
  } catch (const Error& e) {
    error = e.what();
  }
  comm.check_all(error.empty(), error);
}

// The data file of every rank that wrote one, from the ranks' (bytes, header
// CRC) pairs, gathered exactly (both fit a double's 53-bit mantissa).
Json gather_file_entries(Communicator& comm, const std::optional<std::pair<uint64_t, uint32_t>>& mine) {
  const auto world = static_cast<size_t>(comm.world_size());
  const double row[3] = {mine ? 1.0 : 0.0, mine ? static_cast<double>(mine->first) : 0.0,
                         mine ? static_cast<double>(mine->second) : 0.0};
  std::vector<double> table(3 * world);
  comm.all_gather(row, table);
  Json files = Json::array();
  for (size_t r = 0; r < world; ++r) {
    if (table[3 * r] == 0.0) continue;
    files.push_back({{"name", data_file_name(static_cast<int>(r))},
                     {"bytes", static_cast<uint64_t>(table[3 * r + 1])},
                     {"header_crc32", static_cast<uint32_t>(table[3 * r + 2])}});
  }
  return files;
}
}  // namespace

fs::path save_checkpoint(Communicator& comm, const fs::path& dir, int64_t step, const Json& state,
                         std::span<const TensorRef> tensors) {
  const fs::path final_dir = dir / step_dir_name(step);
  const fs::path temp_dir = dir / (step_dir_name(step) + ".tmp");
  const bool leader = comm.rank() == 0;
  std::error_code ignored;
  auto discard_on_failure = [&](const auto& body) {
    try {
      collective_phase(comm, final_dir, body);
    } catch (...) {
      if (leader) fs::remove_all(temp_dir, ignored);
      throw;
    }
  };
  // 1. The leader prepares the temporary directory (removing leftovers of
  //    an interrupted save); 2. every rank writes its own data file into it;
  //    3. only when all of them succeeded does the leader write the manifest,
  //    read the whole checkpoint back and verify it, and rename the directory
  //    into place: that rename is the commit, so a checkpoint that does not
  //    verify never appears (and never displaces an older one).
  collective_phase(comm, final_dir, [&] {
    if (!leader) return;
    fs::create_directories(dir);
    fs::remove_all(temp_dir);
    fs::create_directory(temp_dir);
  });
  std::optional<std::pair<uint64_t, uint32_t>> mine;
  discard_on_failure([&] {
    if (tensors.empty()) return;
    const fs::path file = temp_dir / data_file_name(comm.rank());
    uint32_t header_crc = write_data_file(file, tensors);
    corrupt_if_asked(file, step);
    mine = std::make_pair(static_cast<uint64_t>(fs::file_size(file)), header_crc);
  });
  Json files = gather_file_entries(comm, mine);
  discard_on_failure([&] {
    if (!leader) return;
    Json manifest = {{"format", "emix-checkpoint"}, {"version", kFormatVersion}, {"step", step},
                     {"world_size", comm.world_size()}, {"files", files}, {"state", state}};
    write_text_file_atomic(temp_dir / kManifest, manifest.dump(1));
    try {
      Checkpoint::open(temp_dir);
    } catch (const Error& e) {
      fail("checkpoint of step {} discarded: it did not verify when read back after writing: {}", step, e.what());
    }
    // A checkpoint of the same step (e.g. saved again after a resume) is replaced.
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(temp_dir, final_dir);
    fsync_directory(dir);
  });
  return final_dir;
}

fs::path save_checkpoint(const fs::path& dir, int64_t step, const Json& state, std::span<const TensorRef> tensors) {
  auto comm = make_local_communicator();
  return save_checkpoint(*comm, dir, step, state, tensors);
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
    if (json_integer<uint32_t>(manifest, "version", manifest_path) != kFormatVersion) {
      fail_file(manifest_path, "unsupported checkpoint version {}", manifest.at("version").dump());
    }
    ckpt.step_ = json_integer<int64_t>(manifest, "step", manifest_path);
    ckpt.state_ = manifest.at("state");
    for (const auto& entry : manifest.at("files")) {
      fs::path file_path = path / entry.at("name").get<std::string>();
      FileReader file(file_path);
      const uint64_t listed_bytes = json_integer<uint64_t>(entry, "bytes", manifest_path);
      if (file.size() != listed_bytes) {
        fail_file(file_path, "size is {} bytes, the manifest says {}: truncated or replaced", file.size(), listed_bytes);
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
      if (crc32(header.data(), header.size()) != header_crc ||
          header_crc != json_integer<uint32_t>(entry, "header_crc32", manifest_path)) {
        fail_file(file_path, "header checksum mismatch: the file is corrupt");
      }
      Json parsed_header = parse_json_text(header, file_path.string());
      for (const auto& s : parsed_header.at("sections")) {
        Section section{s.at("name"),
                        json_integer<uint64_t>(s, "count", file_path),
                        json_integer<uint64_t>(s, "global_offset", file_path),
                        json_integer<uint64_t>(s, "offset", file_path),
                        json_integer<uint32_t>(s, "crc32", file_path),
                        file_path};
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
  ckpt.check_tensors_are_whole();
  return ckpt;
}

std::vector<const Checkpoint::Section*> Checkpoint::sections_of(std::string_view name) const {
  std::vector<const Section*> parts;
  for (const auto& s : sections_) {
    if (s.name == name) parts.push_back(&s);
  }
  if (parts.empty()) fail_file(path_, "checkpoint has no tensor '{}'", name);
  std::sort(parts.begin(), parts.end(), [](const Section* a, const Section* b) { return a->global_offset < b->global_offset; });
  return parts;
}

void Checkpoint::check_tensors_are_whole() const {
  std::vector<std::string> names;
  for (const auto& s : sections_) {
    if (std::find(names.begin(), names.end(), s.name) == names.end()) names.push_back(s.name);
  }
  for (const auto& name : names) {
    uint64_t covered = 0;
    for (const Section* part : sections_of(name)) {
      if (part->global_offset != covered) {
        fail_file(part->file, "tensor '{}': this file holds elements from {}, but the parts before it end at {}: a rank's "
                  "part is missing or overlaps another",
                  name, part->global_offset, covered);
      }
      covered += part->count;
    }
  }
}

bool Checkpoint::has_tensor(std::string_view name) const {
  return std::any_of(sections_.begin(), sections_.end(), [&](const Section& s) { return s.name == name; });
}

uint64_t Checkpoint::tensor_count(std::string_view name) const {
  const Section* last = sections_of(name).back();
  return last->global_offset + last->count;
}

void Checkpoint::read_tensor(std::string_view name, std::span<float> out) const {
  const uint64_t count = tensor_count(name);
  if (out.size() != count) {
    fail_file(path_, "tensor '{}' has {} elements, but the model expects {}: the checkpoint is for another model shape",
              name, count, out.size());
  }
  read_tensor_range(name, 0, out);
}

void Checkpoint::read_tensor_range(std::string_view name, uint64_t first, std::span<float> out) const {
  const uint64_t end = first + out.size();
  if (end > tensor_count(name)) {
    fail_file(path_, "tensor '{}' has {} elements; elements [{}, {}) were asked for", name, tensor_count(name), first, end);
  }
  for (const Section* part : sections_of(name)) {
    const uint64_t begin = std::max(first, part->global_offset);
    const uint64_t stop = std::min(end, part->global_offset + part->count);
    if (begin >= stop) continue;
    float* destination = out.data() + (begin - first);
    const uint64_t elements = stop - begin;
    FileReader file(part->file);
    file.read_at(part->offset + (begin - part->global_offset) * sizeof(float), destination, elements * sizeof(float));
    // open() verified every section; a section read whole is verified again
    // in case the file changed since.
    if (elements == part->count && crc32(destination, elements * sizeof(float)) != part->crc) {
      fail_file(part->file, "checksum mismatch in section '{}': the file changed while reading", name);
    }
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
