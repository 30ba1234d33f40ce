// World size 1, no MPI: every collective is a copy of the input (or
// nothing), so a single-process run takes the same code path as a
// multi-process one.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/process_identity.hpp"

namespace emix {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(int local_rank) : local_rank_(local_rank) {}

  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "local"; }

  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_sum(std::span<double>) override {}
  void reduce_scatter_sum(std::span<const float> input, std::span<float> output) override {
    if (input.size() != output.size()) {
      fail("reduce_scatter_sum: input has {} elements, expected world size 1 x chunk {}", input.size(),
           output.size());
    }
    copy(input, output);
  }
  void all_gather(std::span<const float> input, std::span<float> output) override {
    if (input.size() != output.size()) {
      fail("all_gather: output has {} elements, expected world size 1 x chunk {}", output.size(), input.size());
    }
    copy(input, output);
  }
  void broadcast(std::span<float>, int root) override { check_root(root); }
  void broadcast_bytes(std::span<std::byte>, int root) override { check_root(root); }
  void barrier() override {}
  bool any(bool flag) override { return flag; }
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

 private:
  static void copy(std::span<const float> input, std::span<float> output) {
    if (!input.empty() && input.data() != output.data()) std::memmove(output.data(), input.data(), input.size_bytes());
  }
  static void check_root(int root) {
    if (root != 0) fail("broadcast: root {} is not a rank (world size 1)", root);
  }

  int local_rank_;
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>(read_process_identity().local_rank);
}

}  // namespace emix
