// The rendezvous options from the environment and the choice of rendezvous
// method (see rendezvous.hpp).
#include "distributed/rendezvous.hpp"

#include <algorithm>
#include <thread>

#include "core/env.hpp"
#include "core/error.hpp"
#include "distributed/rendezvous_internal.hpp"

namespace emix {

std::string run_token_from_environment() {
  if (std::string id = env_string("EMIX_RUN_ID"); !id.empty()) return id;
  const std::string job = env_string("SLURM_JOB_ID"), step = env_string("SLURM_STEP_ID");
  if (!job.empty() && !step.empty()) return "slurm-" + job + "." + step;
  // torchrun's --rdzv-id defaults to "none" in every launch: no identity.
  if (std::string id = env_string("TORCHELASTIC_RUN_ID"); !id.empty() && id != "none") return "torchelastic-" + id;
  if (std::string ns = env_string("PMIX_NAMESPACE"); !ns.empty()) return "pmix-" + ns;
  return "";
}

RendezvousOptions rendezvous_options_from_environment() {
  RendezvousOptions options;
  options.file = env_string("EMIX_RENDEZVOUS_FILE");
  options.master_addr = env_string("MASTER_ADDR");
  options.master_port = env_string("MASTER_PORT");
  options.run_token = run_token_from_environment();
  if (const int seconds = env_int("EMIX_RENDEZVOUS_TIMEOUT"); seconds >= 0) {
    if (seconds == 0) fail("EMIX_RENDEZVOUS_TIMEOUT=0: the rendezvous timeout must be at least 1 second");
    options.timeout = std::chrono::seconds(seconds);
  }
  return options;
}

std::vector<std::byte> rendezvous_broadcast(const ProcessIdentity& identity, std::span<const std::byte> root_blob,
                                            const RendezvousOptions& options) {
  const std::string me = rendezvous::who(identity);
  if (identity.world_size < 1 || identity.rank < 0 || identity.rank >= identity.world_size) {
    fail("rendezvous: rank {} of {} is not a rank of the world", identity.rank, identity.world_size);
  }
  if (identity.rank == 0 && root_blob.size() > rendezvous::kMaxBlobBytes) {
    fail("{}: a rendezvous blob of {} bytes exceeds the limit of {}", me, root_blob.size(), rendezvous::kMaxBlobBytes);
  }
  if (options.run_token.size() > rendezvous::kMaxTokenBytes) {
    fail("{}: the run token (EMIX_RUN_ID or the launcher's job id) has {} bytes, more than {}", me,
         options.run_token.size(), rendezvous::kMaxTokenBytes);
  }
  if (identity.world_size == 1) return {root_blob.begin(), root_blob.end()};
  if (!options.file.empty()) return rendezvous::file_broadcast(identity, root_blob, options);
  if (!options.master_addr.empty() && !options.master_port.empty()) {
    return rendezvous::tcp_broadcast(identity, root_blob, options);
  }
  if (!options.master_addr.empty() || !options.master_port.empty()) {
    fail("{}: {} is set but {} is not: the TCP rendezvous needs both", me,
         options.master_addr.empty() ? "MASTER_PORT" : "MASTER_ADDR",
         options.master_addr.empty() ? "MASTER_ADDR" : "MASTER_PORT");
  }
  fail("{} (from {}): no way to reach rank 0 without MPI: set EMIX_RENDEZVOUS_FILE to a path on a filesystem every "
       "rank shares (with EMIX_RUN_ID unique to this launch unless the launcher provides a job id), or MASTER_ADDR "
       "and MASTER_PORT to rank 0's host and a free TCP port",
       me, identity.source);
}

namespace rendezvous {

int ms_until(Clock::time_point t) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(t - Clock::now());
  return static_cast<int>(std::clamp(left, std::chrono::milliseconds(0), std::chrono::milliseconds(INT32_MAX)).count());
}

std::string Deadline::text() const { return fmt::format("{:g} s", static_cast<double>(timeout.count()) / 1000.0); }

std::string who(const ProcessIdentity& identity) {
  return fmt::format("rank {} of {}", identity.rank, identity.world_size);
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string text;
  for (int r : ranks) text += (text.empty() ? "" : ", ") + std::to_string(r);
  return text;
}

void Backoff::sleep(const Deadline& deadline) {
  std::this_thread::sleep_until(deadline.within(next_));
  next_ = std::min(next_ * 2, std::chrono::milliseconds(500));
}

void append_u32(std::vector<std::byte>& out, uint32_t value) {
  for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<std::byte>((value >> shift) & 0xFFu));
}

void append_bytes(std::vector<std::byte>& out, std::span<const std::byte> bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

uint32_t read_u32(std::span<const std::byte> bytes, size_t offset) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(bytes[offset + static_cast<size_t>(i)]) << (8 * i);
  return value;
}

std::span<const std::byte> as_bytes(const std::string& text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

std::string as_text(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace rendezvous
}  // namespace emix
