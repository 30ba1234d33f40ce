#include "distributed/process_identity.hpp"

#include <vector>

#include "core/env.hpp"
#include "core/error.hpp"

namespace emix {
namespace {

// One launcher's variables. Its rank and size are both required once either
// is set; its local rank is the first of `local` that is set.
struct IdentityFamily {
  const char* rank;
  const char* size;
  std::vector<const char*> local;
  const char* requires_also;  // the family counts only when this is set too
  bool mpi_launcher;
};

// Innermost launcher first (see read_process_identity in the header).
const std::vector<IdentityFamily>& identity_families() {
  static const std::vector<IdentityFamily> families = {
      {"RANK", "WORLD_SIZE", {"LOCAL_RANK"}, nullptr, false},
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", {"OMPI_COMM_WORLD_LOCAL_RANK"}, nullptr, true},
      {"PMI_RANK", "PMI_SIZE", {"MPI_LOCALRANKID", "SLURM_LOCALID"}, nullptr, true},
      {"SLURM_PROCID", "SLURM_NTASKS", {"SLURM_LOCALID"}, "SLURM_STEP_ID", true},
  };
  return families;
}

bool family_is_set(const IdentityFamily& family) {
  if (family.requires_also != nullptr && env_string(family.requires_also).empty()) return false;
  return !env_string(family.rank).empty() || !env_string(family.size).empty();
}

ProcessIdentity read_family(const IdentityFamily& family) {
  const std::string rank_text = env_string(family.rank), size_text = env_string(family.size);
  if (rank_text.empty()) fail("{}={} is set but {} is not", family.size, size_text, family.rank);
  if (size_text.empty()) fail("{}={} is set but {} is not", family.rank, rank_text, family.size);
  ProcessIdentity identity;
  identity.rank = env_int(family.rank);
  identity.world_size = env_int(family.size);
  identity.source = std::string(family.rank) + "/" + family.size;
  identity.mpi_launcher = family.mpi_launcher;
  if (identity.world_size < 1) fail("{}=0 is not a world size", family.size);
  if (identity.rank >= identity.world_size) {
    fail("{}={} is not below {}={}", family.rank, identity.rank, family.size, identity.world_size);
  }
  for (const char* name : family.local) {
    const int local = env_int(name);
    if (local < 0) continue;
    if (local >= identity.world_size) fail("{}={} is not below {}={}", name, local, family.size, identity.world_size);
    identity.local_rank = local;
    break;
  }
  return identity;
}

}  // namespace

ProcessIdentity read_process_identity() {
  for (const IdentityFamily& family : identity_families()) {
    if (family_is_set(family)) return read_family(family);
  }
  return ProcessIdentity{0, 1, 0, "no launcher variables", false};
}

}  // namespace emix
