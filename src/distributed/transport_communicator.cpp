// The Communicator interface over a Transport's byte movements: the sums
// are computed here, in rank order (see "Determinism" in communicator.hpp),
// so MPI and NCCL give the same bits.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "core/error.hpp"
#include "distributed/communicator.hpp"
#include "distributed/transport.hpp"

namespace emix {
namespace {

size_t segment_bytes_from_environment() {
  const char* value = std::getenv("EMIX_COMM_SEGMENT_BYTES");
  if (value == nullptr || *value == '\0') return size_t{64} << 20;
  char* end = nullptr;
  const unsigned long long bytes = std::strtoull(value, &end, 10);
  if (end == value || *end != '\0' || bytes < 16 || bytes > (size_t{1} << 30)) {
    fail("EMIX_COMM_SEGMENT_BYTES={} is not a byte count in [16, 2^30]", value);
  }
  return static_cast<size_t>(bytes);
}

class TransportCommunicator final : public Communicator {
 public:
  explicit TransportCommunicator(std::unique_ptr<Transport> transport)
      : transport_(std::move(transport)),
        rank_(transport_->rank()),
        world_(transport_->world_size()),
        segment_bytes_(segment_bytes_from_environment()) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return transport_->local_rank(); }
  std::string backend() const override { return transport_->name(); }
  DeviceCollectives* device_collectives() override { return transport_->device_collectives(); }

  void all_reduce_sum(std::span<float> data) override { all_reduce(data); }
  void all_reduce_sum(std::span<double> data) override { all_reduce(data); }

  void reduce_scatter_sum(std::span<const float> input, std::span<float> output) override {
    const size_t chunk = output.size();
    if (input.size() != chunk * static_cast<size_t>(world_)) {
      fail("reduce_scatter_sum: input has {} elements, expected world size {} x chunk {}", input.size(), world_,
           chunk);
    }
    const size_t segment = segment_elements<float>();
    for (size_t begin = 0; begin < chunk; begin += segment) {
      const size_t length = std::min(segment, chunk - begin);
      // Every rank's segment is copied out before this rank's is written:
      // output may be chunk rank() of input.
      auto send = scratch<float>(send_scratch_, length * world_);
      for (int r = 0; r < world_; ++r) {
        std::copy_n(input.data() + r * chunk + begin, length, send.data() + r * length);
      }
      reduce_scatter_block(std::span<const float>(send), output.subspan(begin, length));
    }
  }

  void all_gather(std::span<const float> input, std::span<float> output) override {
    const size_t chunk = input.size();
    if (output.size() != chunk * static_cast<size_t>(world_)) {
      fail("all_gather: output has {} elements, expected world size {} x chunk {}", output.size(), world_, chunk);
    }
    const size_t segment = segment_elements<float>();
    for (size_t begin = 0; begin < chunk; begin += segment) {
      const size_t length = std::min(segment, chunk - begin);
      auto mine = scratch<float>(send_scratch_, length);
      std::copy_n(input.data() + begin, length, mine.data());  // input may alias output
      auto gathered = scratch<float>(recv_scratch_, length * world_);
      gather_block(std::span<const float>(mine), gathered);
      for (int r = 0; r < world_; ++r) {
        std::copy_n(gathered.data() + r * length, length, output.data() + r * chunk + begin);
      }
    }
  }

  void broadcast(std::span<float> data, int root) override { broadcast_bytes(std::as_writable_bytes(data), root); }

  void broadcast_bytes(std::span<std::byte> data, int root) override {
    if (root < 0 || root >= world_) fail("broadcast: root {} is not a rank (world size {})", root, world_);
    for (size_t begin = 0; begin < data.size(); begin += segment_bytes_) {
      transport_->broadcast(data.data() + begin, std::min(segment_bytes_, data.size() - begin), root);
    }
  }

  void barrier() override { transport_->barrier(); }

  bool any(bool flag) override {
    std::vector<std::byte> flags(static_cast<size_t>(world_));
    const std::byte mine{static_cast<unsigned char>(flag ? 1 : 0)};
    transport_->all_gather(&mine, flags.data(), 1);
    return std::any_of(flags.begin(), flags.end(), [](std::byte f) { return f != std::byte{0}; });
  }

  [[noreturn]] void abort(int code) override {
    transport_->abort(code);
    std::_Exit(code);  // GCC does not carry [[noreturn]] through a virtual call
  }

 private:
  template <typename T>
  size_t segment_elements() const {
    return std::max<size_t>(1, segment_bytes_ / sizeof(T) / static_cast<size_t>(world_));
  }

  // A view of `elements` elements of type T over a reusable byte buffer.
  template <typename T>
  static std::span<T> scratch(std::vector<std::byte>& buffer, size_t elements) {
    const size_t needed = elements * sizeof(T) + alignof(std::max_align_t);
    if (buffer.size() < needed) buffer.resize(needed);
    void* base = buffer.data();
    size_t space = buffer.size();
    void* aligned = std::align(alignof(T), elements * sizeof(T), base, space);
    return {static_cast<T*>(aligned), elements};
  }

  template <typename T>
  void gather_block(std::span<const T> mine, std::span<T> gathered) {
    transport_->all_gather(reinterpret_cast<const std::byte*>(mine.data()), reinterpret_cast<std::byte*>(gathered.data()),
                           mine.size_bytes());
  }

  // send holds world x length elements (block r for rank r); output gets the
  // sum over ranks of this rank's blocks, added in rank order.
  template <typename T>
  void reduce_scatter_block(std::span<const T> send, std::span<T> output) {
    const size_t length = output.size();
    auto received = scratch<T>(recv_scratch_, length * world_);
    transport_->all_to_all(reinterpret_cast<const std::byte*>(send.data()), reinterpret_cast<std::byte*>(received.data()),
                           length * sizeof(T));
    std::copy_n(received.data(), length, output.data());
    for (int r = 1; r < world_; ++r) {
      const T* block = received.data() + r * length;
      for (size_t i = 0; i < length; ++i) output[i] += block[i];
    }
  }

  // In place sum over ranks: windows of at most world x segment elements,
  // each zero-padded to world x chunk, reduce-scattered, then all-gathered.
  template <typename T>
  void all_reduce(std::span<T> data) {
    const size_t window = segment_elements<T>() * static_cast<size_t>(world_);
    for (size_t begin = 0; begin < data.size(); begin += window) {
      const size_t length = std::min(window, data.size() - begin);
      const size_t chunk = chunk_size(length, world_);
      auto send = scratch<T>(send_scratch_, chunk * world_);
      std::copy_n(data.data() + begin, length, send.data());
      std::fill(send.begin() + length, send.end(), T(0));
      std::vector<T>& mine = sum_scratch<T>();
      mine.resize(chunk);
      reduce_scatter_block(std::span<const T>(send), std::span<T>(mine));
      auto gathered = scratch<T>(recv_scratch_, chunk * world_);
      gather_block(std::span<const T>(mine), gathered);
      std::copy_n(gathered.data(), length, data.data() + begin);
    }
  }

  template <typename T>
  std::vector<T>& sum_scratch() {
    if constexpr (std::is_same_v<T, float>) {
      return float_sum_;
    } else {
      return double_sum_;
    }
  }

  std::unique_ptr<Transport> transport_;
  int rank_;
  int world_;
  size_t segment_bytes_;
  std::vector<std::byte> send_scratch_;
  std::vector<std::byte> recv_scratch_;
  std::vector<float> float_sum_;
  std::vector<double> double_sum_;
};

}  // namespace

std::unique_ptr<Communicator> make_transport_communicator(std::unique_ptr<Transport> transport) {
  return std::make_unique<TransportCommunicator>(std::move(transport));
}

}  // namespace emix
