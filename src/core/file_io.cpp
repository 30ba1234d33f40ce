#include "core/file_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.hpp"

namespace emix {
namespace fs = std::filesystem;

std::string read_text_file(const fs::path& path) {
  FileReader reader(path);
  std::string text(reader.size(), '\0');
  if (!text.empty()) reader.read_at(0, text.data(), text.size());
  return text;
}

void write_file_atomic(const fs::path& path, std::span<const std::span<const std::byte>> chunks) {
  fs::path temporary = path;
  temporary += ".tmp";
  try {
    FileWriter writer(temporary);
    for (auto chunk : chunks) writer.write(chunk);
    writer.close();
    fs::rename(temporary, path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw;
  }
  fsync_directory(path.has_parent_path() ? path.parent_path() : fs::path("."));
}

void write_text_file_atomic(const fs::path& path, std::string_view text) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(text.data()), text.size());
  write_file_atomic(path, std::span(&bytes, 1));
}

void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail_file(dir, "cannot open directory to sync it: {}", std::strerror(errno));
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  if (rc != 0) fail_file(dir, "cannot sync directory: {}", std::strerror(saved));
}

FileWriter::FileWriter(const fs::path& path, Mode mode) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (mode == Mode::append ? O_APPEND : O_TRUNC), 0644);
  if (fd_ < 0) fail_file(path, "cannot create file: {}", std::strerror(errno));
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_file(path_, "write failed after {} bytes: {}", written_, std::strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

void FileWriter::close() {
  if (fd_ < 0) return;
  int rc = ::fsync(fd_);
  int saved = errno;
  int rc_close = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail_file(path_, "fsync failed: {}", std::strerror(saved));
  if (rc_close != 0) fail_file(path_, "close failed: {}", std::strerror(errno));
}

FileReader::FileReader(const fs::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail_file(path, "cannot open: {}", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    fail_file(path, "not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

FileReader::~FileReader() {
  if (fd_ >= 0) ::close(fd_);
}

FileReader::FileReader(FileReader&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), size_(other.size_) {
  other.fd_ = -1;
}

void FileReader::read_at(uint64_t offset, void* data, size_t size) const {
  if (offset > size_ || size > size_ - offset) {
    fail_file(path_, "truncated: need {} bytes at offset {}, but the file has {} bytes", size, offset, size_);
  }
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = ::pread(fd_, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_file(path_, "read failed at offset {}: {}", offset, n < 0 ? std::strerror(errno) : "end of file");
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

}  // namespace emix
