#pragma once
// File helpers with errors that name the file: whole-file reads, and atomic
// writes (temporary file, fsync, rename, fsync of the directory) so that a
// crash never leaves a half-written file under the final name.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace emix {

std::string read_text_file(const std::filesystem::path& path);

// Writes `chunks` one after the other into `path` atomically.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::span<const std::byte>> chunks);
void write_text_file_atomic(const std::filesystem::path& path, std::string_view text);

// Makes a completed rename or creation inside `dir` durable.
void fsync_directory(const std::filesystem::path& dir);

// An open file for sequential writing that fsyncs on close; errors name the
// file and give the system's reason ("No space left on device").
class FileWriter {
 public:
  enum class Mode { truncate, append };
  explicit FileWriter(const std::filesystem::path& path, Mode mode = Mode::truncate);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, size_t size);
  void write(std::span<const std::byte> bytes) { write(bytes.data(), bytes.size()); }
  uint64_t bytes_written() const { return written_; }  // by this writer (appended ones, in append mode)
  // fsync + close; errors (a full disk, say) are thrown here, not lost.
  void close();

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t written_ = 0;
};

// An open file for random-access reads that checks every read is complete.
class FileReader {
 public:
  explicit FileReader(const std::filesystem::path& path);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;
  FileReader(FileReader&& other) noexcept;

  uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // Reads exactly `size` bytes at `offset`, or throws naming the file and offset.
  void read_at(uint64_t offset, void* data, size_t size) const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace emix
