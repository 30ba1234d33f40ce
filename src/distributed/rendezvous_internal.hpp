#pragma once
// Shared by the two rendezvous methods (rendezvous_tcp.cpp,
// rendezvous_file.cpp): limits, the clock, and little-endian integers of the
// wire and file formats.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "distributed/rendezvous.hpp"

namespace emix::rendezvous {

// "EMXR" read as a little-endian u32: the first bytes of every message and
// file, so anything else on the port or at the path is recognized as foreign.
inline constexpr uint32_t kMagic = 0x52584D45u;
// Bumped whenever a message or the file layout changes.
inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kMaxBlobBytes = size_t{1} << 20;
inline constexpr size_t kMaxTokenBytes = 255;

using Clock = std::chrono::steady_clock;

// The end of a bounded wait and how it is described in errors.
struct Deadline {
  Clock::time_point end;
  std::chrono::milliseconds timeout;

  explicit Deadline(std::chrono::milliseconds t) : end(Clock::now() + t), timeout(t) {}
  bool passed() const { return Clock::now() >= end; }
  // The deadline, or `limit` from now if that comes first (one step of a
  // longer wait, such as a connection attempt).
  Clock::time_point within(std::chrono::milliseconds limit) const { return std::min(end, Clock::now() + limit); }
  // "300 s", "1.5 s"
  std::string text() const;
};

// Milliseconds from now until `t`, rounded up, 0 when past (poll() takes an int).
int ms_until(Clock::time_point t);

// "rank 2 of 4", the prefix of every error.
std::string who(const ProcessIdentity& identity);
// "1, 3"
std::string rank_list(const std::vector<int>& ranks);

// Sleeps between polls of a file or connection attempts: 10 ms at first,
// growing to 500 ms, so a quick rendezvous is quick and a long wait on a
// shared filesystem does not hammer its server; never past the deadline.
class Backoff {
 public:
  void sleep(const Deadline& deadline);

 private:
  std::chrono::milliseconds next_{10};
};

void append_u32(std::vector<std::byte>& out, uint32_t value);
void append_bytes(std::vector<std::byte>& out, std::span<const std::byte> bytes);
// The u32 at `offset` of `bytes` (the caller checks the length).
uint32_t read_u32(std::span<const std::byte> bytes, size_t offset);

std::span<const std::byte> as_bytes(const std::string& text);
std::string as_text(std::span<const std::byte> bytes);

std::vector<std::byte> tcp_broadcast(const ProcessIdentity& identity, std::span<const std::byte> root_blob,
                                     const RendezvousOptions& options);
std::vector<std::byte> file_broadcast(const ProcessIdentity& identity, std::span<const std::byte> root_blob,
                                      const RendezvousOptions& options);

}  // namespace emix::rendezvous
