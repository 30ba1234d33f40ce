#pragma once
// A rendezvous that gives every rank a small blob created by rank 0, without
// MPI (who the ranks are: process_identity.hpp).
//
// Why: a GPU run's NCCL communicator needs NCCL's unique id (an opaque
// 128-byte blob that rank 0 creates) on every rank before
// ncclCommInitRank, and many clusters launch without MPI (srun without PMI,
// torchrun-style launchers). So the blob travels over one of two channels:
//
//   * TCP (MASTER_ADDR, MASTER_PORT): rank 0 listens on MASTER_PORT (every
//     interface, IPv6 and IPv4); each other rank connects to
//     MASTER_ADDR:MASTER_PORT, retrying until the timeout (rank 0 may start
//     last), says hello (magic, protocol version, run token, its rank, the
//     world size), and receives the blob once every rank has said hello.
//     rank 0 checks every hello: an emix client with another run token,
//     world size or protocol, a rank out of range or a rank seen twice is an
//     error on rank 0 naming the peer, and every connected rank receives the
//     error too instead of waiting. A connection that is not an emix client
//     (wrong magic, or no hello within a few seconds) is dropped.
//   * A file on a filesystem every rank shares (EMIX_RENDEZVOUS_FILE): rank 0
//     writes it atomically (a temporary file, fsync, rename) with the run
//     token, world size, blob and a CRC-32; the other ranks poll until a
//     file with their token and a valid CRC appears, then each writes an
//     acknowledgement <file>.ack.<rank>; once rank 0 has every
//     acknowledgement it removes the file and the acknowledgements.
//
// The run token tells this launch's file or connection from one left by an
// earlier launch: a run killed mid-rendezvous leaves its file behind, and a
// stale rank of an earlier run may still be connecting to the same port. A
// file carries no other clue (the path is typically fixed in a job script),
// so the file method requires a token and refuses to run without one; a
// stale TCP peer cannot be confused with a current one as easily (it needs
// the same port to be listened on right now) and its world size usually
// differs, so TCP accepts an empty token. The token is EMIX_RUN_ID when set,
// else the launcher's identity of this launch (see run_token_from_environment).
//
// Every wait is bounded: EMIX_RENDEZVOUS_TIMEOUT seconds (default 300), and
// the error says what was waited for.
#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "distributed/process_identity.hpp"

namespace emix {

struct RendezvousOptions {
  // The method: `file` when not empty, else TCP when master_addr and
  // master_port are set, else an error saying how to choose one.
  std::string file;         // EMIX_RENDEZVOUS_FILE
  std::string master_addr;  // MASTER_ADDR: rank 0's host name or address
  std::string master_port;  // MASTER_PORT
  std::string run_token;    // see the header comment; at most 255 bytes
  std::chrono::milliseconds timeout = std::chrono::seconds(300);  // EMIX_RENDEZVOUS_TIMEOUT (seconds)
};

// EMIX_RENDEZVOUS_FILE, MASTER_ADDR, MASTER_PORT, EMIX_RENDEZVOUS_TIMEOUT and
// run_token_from_environment().
RendezvousOptions rendezvous_options_from_environment();

// EMIX_RUN_ID if set; else "slurm-<SLURM_JOB_ID>.<SLURM_STEP_ID>" (srun),
// "torchelastic-<TORCHELASTIC_RUN_ID>" (torchrun with a real rendezvous id:
// its default "none" is the same for every launch and is ignored) or
// "pmix-<PMIX_NAMESPACE>" (Open MPI 4+ and other PMIx launchers); "" when
// none of these is set.
std::string run_token_from_environment();

// Collective over the `identity.world_size` processes: every rank returns
// rank 0's `root_blob` (other ranks' root_blob is ignored). Small blobs only
// (at most 1 MiB). World size 1 returns the blob without any I/O.
std::vector<std::byte> rendezvous_broadcast(const ProcessIdentity& identity, std::span<const std::byte> root_blob,
                                            const RendezvousOptions& options);

}  // namespace emix
