#pragma once
// Who this process is in a multi-process launch, from the launcher's
// environment: the one place that reads it. The communicator uses it to
// choose between the local and the MPI backend (and for the local rank that
// selects a GPU); the rendezvous (rendezvous.hpp) to know its rank and peers.
#include <string>

namespace emix {

struct ProcessIdentity {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // among the processes of this node (selects the GPU)
  std::string source;  // the variables it came from, for messages
  // Started by a launcher that also starts an MPI runtime (mpirun, srun),
  // false for torchrun-style launchers: several processes without MPI.
  bool mpi_launcher = false;
};

// From the first family of launcher variables that is set:
//   RANK, WORLD_SIZE, LOCAL_RANK                  torchrun-style launchers
//   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK      Open MPI's mpirun
//   PMI_RANK, PMI_SIZE (MPI_LOCALRANKID or SLURM_LOCALID)   MPICH/Hydra, srun with PMI
//   SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID     srun (only with SLURM_STEP_ID set:
//                                                 a batch script alone is one process)
// The innermost launcher comes first: torchrun started by srun, or mpirun's
// ranks started through Slurm, inherit the outer launcher's SLURM_*
// variables, which describe the outer tasks, not these processes. None set:
// rank 0 of 1. An unset local rank is 0. Errors name the variable and value
// (not an integer, rank not below the world size, one of a pair missing).
ProcessIdentity read_process_identity();

}  // namespace emix
