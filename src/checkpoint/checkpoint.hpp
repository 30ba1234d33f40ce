#pragma once
// Checkpoints: one directory per checkpoint, `<dir>/step_00001000/`, holding
//   manifest.json   the run state (step, config, loader position, RNG states,
//                   optimizer scalars), the number of ranks that wrote it,
//                   the list of data files with sizes, and a CRC-32 of each
//                   data file's header;
//   rank_NNNNN.bin  one per rank that had something to write: named float
//                   tensors ("params", "optimizer.m2", ...), each tagged with
//                   its offset in the flat global buffer and its own CRC-32.
//                   A tensor may be split over several files (a ZeRO shard
//                   per rank); its parts must tile [0, count) exactly.
// The directory is assembled under a temporary name, every file fsynced, and
// renamed into place by rank 0 once every rank has written its file and the
// whole checkpoint has been read back and verified: a checkpoint is either
// complete or invisible, and a reader never needs to know how many ranks
// wrote it (a run resumes on any number of ranks).
//
// Data file layout (little-endian):
//   0  char[8]  "EMIXCKPT"
//   8  u32      format version (1)
//   12 u32      CRC-32 of the header JSON
//   16 u64      header JSON length in bytes
//   24          header JSON: {"sections": [{"name", "dtype": "f32", "count",
//               "global_offset", "offset", "crc32"}]}
//   then each section's data at its "offset" (64-byte aligned)
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/json_reader.hpp"

namespace emix {

struct TensorRef {
  std::string name;
  std::span<const float> data;
  uint64_t global_offset = 0;  // where data starts in the flat global buffer
};

class Communicator;

// Collective: every rank of `comm` calls it with the same dir and step and
// its own part of the tensors (none for a rank with nothing to write); the
// manifest gets rank 0's `state`. Returns the checkpoint's directory. If
// any rank fails, or the written checkpoint does not verify when rank 0
// reads it back, every rank throws and no checkpoint appears (older ones are
// kept). The directory must be one all ranks see (a shared filesystem
// when the ranks run on several nodes).
std::filesystem::path save_checkpoint(Communicator& comm, const std::filesystem::path& dir, int64_t step, const Json& state,
                                      std::span<const TensorRef> tensors);
// The same for a single process (one data file).
std::filesystem::path save_checkpoint(const std::filesystem::path& dir, int64_t step, const Json& state,
                                      std::span<const TensorRef> tensors);

class Checkpoint {
 public:
  // Opens and fully verifies a checkpoint directory: manifest, file headers,
  // sizes and every section's CRC. Errors name the file and the problem.
  static Checkpoint open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  int64_t step() const { return step_; }
  const Json& state() const { return state_; }
  bool has_tensor(std::string_view name) const;
  // Elements of a tensor, over all its parts.
  uint64_t tensor_count(std::string_view name) const;
  // Reads a whole tensor; `out` must have exactly its element count.
  void read_tensor(std::string_view name, std::span<float> out) const;
  // Reads elements [first, first + out.size()) of a tensor, from whichever
  // parts hold them (a shard of another number of ranks).
  void read_tensor_range(std::string_view name, uint64_t first, std::span<float> out) const;

 private:
  struct Section {
    std::string name;
    uint64_t count = 0;
    uint64_t global_offset = 0;
    uint64_t offset = 0;
    uint32_t crc = 0;
    std::filesystem::path file;
  };
  // The parts of a tensor by global offset; throws when there is none.
  std::vector<const Section*> sections_of(std::string_view name) const;
  void check_tensors_are_whole() const;

  std::filesystem::path path_;
  int64_t step_ = 0;
  Json state_;
  std::vector<Section> sections_;
};

// Complete checkpoints in `dir`, oldest first (by step).
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& dir);

// The newest checkpoint in `dir` that opens and verifies; a newer one that
// does not is skipped with a warning. nullopt when there is none.
std::optional<Checkpoint> open_latest_checkpoint(const std::filesystem::path& dir);

// Deletes all but the newest `keep_last` checkpoints (keep_last <= 0 keeps
// all); checkpoints whose step is a multiple of milestone_interval (> 0) are
// never deleted and do not count towards keep_last. Leftover temporary
// directories of interrupted saves are removed.
void prune_checkpoints(const std::filesystem::path& dir, int keep_last, int milestone_interval = 0);

}  // namespace emix
