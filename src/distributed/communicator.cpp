// The backend-independent part of the communication layer: derived
// operations and the choice of backend from the launcher's environment.
#include "distributed/communicator.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "distributed/process_identity.hpp"
#include "kernels/bf16_rounding.hpp"

namespace emix {

void Communicator::all_reduce_mean(std::span<float> data) {
  all_reduce_sum(data);
  const int n = world_size();
  if (n == 1) return;
  if ((n & (n - 1)) == 0) {  // power of two: 1/n is exact, so is x * (1/n)
    const float inverse = 1.0f / static_cast<float>(n);
    for (float& x : data) x *= inverse;
  } else {
    const float divisor = static_cast<float>(n);
    for (float& x : data) x /= divisor;
  }
}

double Communicator::all_reduce_sum(double value) {
  all_reduce_sum(std::span<double>(&value, 1));
  return value;
}

void Communicator::all_gather(std::span<const double> input, std::span<double> output) {
  if (output.size() != input.size() * static_cast<size_t>(world_size())) {
    fail("all_gather: {} output elements for {} ranks of {}", output.size(), world_size(), input.size());
  }
  std::fill(output.begin(), output.end(), 0.0);
  std::copy(input.begin(), input.end(), output.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(rank()) * input.size()));
  all_reduce_sum(output);
}

void Communicator::reduce_scatter_sum_bf16(std::span<const uint16_t> input, std::span<uint16_t> output) {
  std::vector<float> widened(input.size());
  std::transform(input.begin(), input.end(), widened.begin(), bf16_bits_to_float);
  std::vector<float> sum(output.size());
  reduce_scatter_sum(widened, sum);
  std::transform(sum.begin(), sum.end(), output.begin(), bf16_bits_nearest_even);
}

void Communicator::check_all(bool ok, const std::string& what) {
  const int n = world_size();
  const double mine = ok ? 0.0 : 1.0;
  std::vector<double> failed(static_cast<size_t>(n));
  all_gather(std::span<const double>(&mine, 1), failed);
  std::string ranks;
  for (int r = 0; r < n; ++r) {
    if (failed[static_cast<size_t>(r)] != 0.0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  if (ranks.empty()) return;
  if (n == 1) fail_collective("{}", what);  // one process: no rank to name
  if (!ok) fail_collective("rank {} of {}: {}", rank(), n, what);
  fail_collective("rank {} of {}: stopping because rank(s) {} failed", rank(), n, ranks);
}

namespace {

NcclCommunicatorFactory& nccl_factory() {
  static NcclCommunicatorFactory factory = nullptr;
  return factory;
}

std::unique_ptr<Communicator> make_nccl_communicator(const ProcessIdentity& identity) {
  if (nccl_factory() == nullptr) fail("the NCCL communicator needs a build with the CUDA backend");
  return nccl_factory()(identity);
}

}  // namespace

bool register_nccl_communicator(NcclCommunicatorFactory factory) {
  nccl_factory() = factory;
  return true;
}

std::unique_ptr<Communicator> make_communicator(bool gpu_run) {
  if (const char* forced = std::getenv("EMIX_COMM"); forced != nullptr && *forced != '\0') {
    const std::string backend = forced;
    if (backend == "local") return make_local_communicator();
    if (backend == "mpi") return make_mpi_communicator();
    if (backend == "nccl") return make_nccl_communicator(read_process_identity());
    fail("EMIX_COMM={} is not a backend: use local, mpi or nccl", backend);
  }
  const ProcessIdentity identity = read_process_identity();
  if (identity.world_size <= 1) return make_local_communicator();
  if (gpu_run) return make_nccl_communicator(identity);
  if (!identity.mpi_launcher) {
    fail("{} = {}/{} announces a multi-process launch without MPI (torchrun-style); CPU runs need an MPI "
         "launcher for several processes (GPU runs do not): use mpirun -np N or srun",
         identity.source, identity.rank, identity.world_size);
  }
  return make_mpi_communicator();
}

}  // namespace emix
