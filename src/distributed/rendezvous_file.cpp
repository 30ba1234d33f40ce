// The file rendezvous (see rendezvous.hpp): rank 0 publishes the blob in a
// file on a shared filesystem, the other ranks read it and acknowledge, rank
// 0 removes everything.
//
// The file, every integer a little-endian u32:
//   magic, version, world size, token length, blob length, token, blob,
//   CRC-32 of everything before it
// An acknowledgement <file>.ack.<rank> holds the run token, so one left by
// another launch is never counted. Files are written under a temporary
// name and renamed into place, so a reader sees a whole file or none; the
// CRC also rejects a file damaged or half-visible on a shared filesystem.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <utility>

#include "core/crc32.hpp"
#include "core/error.hpp"
#include "core/file_io.hpp"
#include "distributed/rendezvous_internal.hpp"

namespace emix::rendezvous {
namespace {
namespace fs = std::filesystem;

constexpr size_t kHeaderBytes = 20;
// Larger than any file of ours: anything bigger at the path is not one.
constexpr size_t kMaxFileBytes = kHeaderBytes + kMaxTokenBytes + kMaxBlobBytes + 4;

std::string ack_path(const std::string& path, int rank) { return path + ".ack." + std::to_string(rank); }

// Writes `bytes` to `path` through <path>.tmp.<pid> (the pid: two processes
// writing the same path never share a temporary file), fsync, rename.
void write_atomically(const std::string& path, std::span<const std::byte> bytes) {
  const std::string temporary = path + ".tmp." + std::to_string(::getpid());
  try {
    FileWriter writer(temporary);
    writer.write(bytes);
    writer.close();
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
      fail_file(path, "cannot rename {} into place: {}", temporary, std::strerror(errno));
    }
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
  const fs::path parent = fs::path(path).parent_path();
  fsync_directory(parent.empty() ? fs::path(".") : parent);
}

// The file's bytes; nothing when it does not exist (yet, or any more) or is
// too large to be ours.
std::optional<std::string> read_if_present(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  // ESTALE: NFS's answer for a file replaced while we looked it up.
  if (fd < 0 && (errno == ENOENT || errno == ESTALE)) return std::nullopt;
  if (fd < 0) fail_file(path, "cannot open the rendezvous file: {}", std::strerror(errno));
  std::string content;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0 && content.size() + static_cast<size_t>(n) <= kMaxFileBytes) {
      content.append(buffer, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      ::close(fd);
      if (n == 0) return content;
      return std::nullopt;  // a read error (retried by the caller's next poll), or too large
    }
  }
}

std::vector<std::byte> encode(int world_size, const std::string& token, std::span<const std::byte> blob) {
  std::vector<std::byte> bytes;
  append_u32(bytes, kMagic);
  append_u32(bytes, kProtocolVersion);
  append_u32(bytes, static_cast<uint32_t>(world_size));
  append_u32(bytes, static_cast<uint32_t>(token.size()));
  append_u32(bytes, static_cast<uint32_t>(blob.size()));
  append_bytes(bytes, as_bytes(token));
  append_bytes(bytes, blob);
  append_u32(bytes, crc32(bytes.data(), bytes.size()));
  return bytes;
}

struct Published {
  std::string problem;  // why the file is not a valid rendezvous file; "" when it is
  int world_size = 0;
  std::string token;
  std::vector<std::byte> blob;
};

Published unusable(std::string problem) {
  Published file;
  file.problem = std::move(problem);
  return file;
}

Published decode(const std::string& content) {
  const std::span<const std::byte> bytes = as_bytes(content);
  if (bytes.size() < kHeaderBytes + 4 || read_u32(bytes, 0) != kMagic) return unusable("not an emix rendezvous file");
  const uint32_t version = read_u32(bytes, 4);
  if (version != kProtocolVersion) return unusable(fmt::format("rendezvous file version {}", version));
  const size_t token_bytes = read_u32(bytes, 12), blob_bytes = read_u32(bytes, 16);
  if (token_bytes > kMaxTokenBytes || blob_bytes > kMaxBlobBytes ||
      bytes.size() != kHeaderBytes + token_bytes + blob_bytes + 4) {
    return unusable("inconsistent lengths");
  }
  const size_t crc_offset = bytes.size() - 4;
  if (crc32(bytes.data(), crc_offset) != read_u32(bytes, crc_offset)) return unusable("CRC mismatch");
  const auto token = bytes.subspan(kHeaderBytes, token_bytes);
  const auto blob = bytes.subspan(kHeaderBytes + token_bytes, blob_bytes);
  return {"", static_cast<int>(read_u32(bytes, 8)), as_text(token), {blob.begin(), blob.end()}};
}

// Removes the file and the acknowledgements, so that no later launch finds them.
void remove_files(const std::string& path, int world_size) {
  ::unlink(path.c_str());
  for (int r = 1; r < world_size; ++r) ::unlink(ack_path(path, r).c_str());
}

// ------------------------------------------------------------- rank 0 ----

void wait_for_acks(const ProcessIdentity& identity, const RendezvousOptions& options, const Deadline& deadline) {
  std::vector<int> waiting;
  for (int r = 1; r < identity.world_size; ++r) waiting.push_back(r);
  Backoff backoff;
  for (;;) {
    std::erase_if(waiting, [&](int r) { return read_if_present(ack_path(options.file, r)) == options.run_token; });
    if (waiting.empty()) return;
    if (deadline.passed()) {
      fail("{}: rendezvous file {}: no acknowledgement from rank(s) {} after {} (did they start, with the same "
           "EMIX_RENDEZVOUS_FILE and run token '{}'?)",
           who(identity), options.file, rank_list(waiting), deadline.text(), options.run_token);
    }
    backoff.sleep(deadline);
  }
}

std::vector<std::byte> publish(const ProcessIdentity& identity, std::span<const std::byte> blob,
                               const RendezvousOptions& options) {
  const Deadline deadline(options.timeout);
  try {
    write_atomically(options.file, encode(identity.world_size, options.run_token, blob));
    wait_for_acks(identity, options, deadline);
  } catch (...) {
    remove_files(options.file, identity.world_size);
    throw;
  }
  remove_files(options.file, identity.world_size);
  return {blob.begin(), blob.end()};
}

// ------------------------------------------------------- other ranks ----

std::vector<std::byte> fetch(const ProcessIdentity& identity, const RendezvousOptions& options) {
  const Deadline deadline(options.timeout);
  Backoff backoff;
  for (;;) {
    std::string found = "no file";  // at the last look, for the timeout's message
    if (const std::optional<std::string> content = read_if_present(options.file)) {
      Published file = decode(*content);
      if (file.problem.empty() && file.token == options.run_token) {
        if (file.world_size != identity.world_size) {
          fail("{}: rendezvous file {} is for {} ranks: the ranks disagree on the world size", who(identity),
               options.file, file.world_size);
        }
        write_atomically(ack_path(options.file, identity.rank), as_bytes(options.run_token));
        return std::move(file.blob);
      }
      // Another launch's file (or a damaged one) is never taken: keep waiting for ours.
      found = file.problem.empty() ? fmt::format("only a file of another launch (run token '{}')", file.token)
                                   : fmt::format("only an unusable file ({})", file.problem);
    }
    if (deadline.passed()) {
      fail("{}: no rendezvous file {} with run token '{}' after {}: found {} (is rank 0 running, with the same "
           "EMIX_RENDEZVOUS_FILE and run token?)",
           who(identity), options.file, options.run_token, deadline.text(), found);
    }
    backoff.sleep(deadline);
  }
}

}  // namespace

std::vector<std::byte> file_broadcast(const ProcessIdentity& identity, std::span<const std::byte> root_blob,
                                      const RendezvousOptions& options) {
  if (options.run_token.empty()) {
    fail("{}: the file rendezvous (EMIX_RENDEZVOUS_FILE={}) needs a run token to tell this launch's file from one "
         "an earlier launch left behind, and the launcher provides none: set EMIX_RUN_ID to a value unique to this "
         "launch (the same on every rank)",
         who(identity), options.file);
  }
  return identity.rank == 0 ? publish(identity, root_blob, options) : fetch(identity, options);
}

}  // namespace emix::rendezvous
