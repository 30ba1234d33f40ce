#include "data/loader.hpp"

#include <algorithm>
#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/shard.hpp"

namespace emix {

namespace {
// Purposes for derive_seed: independent random streams from one seed.
constexpr uint64_t kShardOrderStream = 1;
constexpr uint64_t kWindowOrderStream = 2;
// Window orders of this many shards are kept (a rank reads one or two at a time).
constexpr size_t kCachedWindowOrders = 4;

template <typename T>
void shuffle_in_place(std::vector<T>& values, uint64_t seed) {
  Rng rng(seed);
  for (size_t i = values.size(); i > 1; --i) std::swap(values[i - 1], values[rng.next_below(i)]);
}
}  // namespace

TokenDataset::TokenDataset(const std::string& pattern, int seq_len, int vocab_size)
    : seq_len_(seq_len), vocab_size_(vocab_size) {
  if (seq_len <= 0) fail("sequence length must be positive, got {}", seq_len);
  for (const auto& path : expand_glob(pattern)) {
    uint64_t tokens = read_shard_token_count(path);
    uint64_t windows = tokens > 0 ? (tokens - 1) / static_cast<uint64_t>(seq_len) : 0;
    if (windows > UINT32_MAX) fail_file(path, "too many windows in one shard ({})", windows);
    shards_.push_back(Shard{FileReader(path), tokens, windows});
    num_tokens_ += tokens;
    num_windows_ += windows;
  }
  if (num_windows_ == 0) {
    fail("'{}' holds {} tokens in {} shard(s): not enough for one sequence of {} tokens (+1 target)", pattern,
         num_tokens_, shards_.size(), seq_len);
  }
}

void TokenDataset::read_window(size_t shard, uint64_t window, std::span<uint16_t> out) const {
  const Shard& s = shards_[shard];
  uint64_t first_token = window * static_cast<uint64_t>(seq_len_);
  uint64_t offset = kShardHeaderBytes + first_token * sizeof(uint16_t);
  s.file.read_at(offset, out.data(), out.size() * sizeof(uint16_t));
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] >= vocab_size_) {
      fail_file(s.file.path(), "token id {} at token {} (byte offset {}) is not below the vocabulary size {}", out[i],
                first_token + i, offset + i * sizeof(uint16_t), vocab_size_);
    }
  }
}

WindowStream::WindowStream(const TokenDataset& dataset, uint64_t seed, bool shuffle)
    : dataset_(dataset), seed_(seed), shuffle_(shuffle) {
  window_buffer_.resize(static_cast<size_t>(dataset.seq_len()) + 1);
}

const std::vector<uint32_t>& WindowStream::shard_window_order(uint64_t epoch, size_t shard) {
  auto key = std::make_pair(epoch, shard);
  auto it = window_orders_.find(key);
  if (it != window_orders_.end()) return it->second;
  if (window_orders_.size() >= kCachedWindowOrders) window_orders_.erase(window_orders_.begin());
  std::vector<uint32_t> order(dataset_.windows_in_shard(shard));
  std::iota(order.begin(), order.end(), 0u);
  if (shuffle_) shuffle_in_place(order, derive_seed(seed_, kWindowOrderStream, epoch * 1000003ULL + shard));
  return window_orders_.emplace(key, std::move(order)).first->second;
}

std::pair<size_t, uint64_t> WindowStream::locate(uint64_t position) {
  uint64_t epoch = epoch_of(position);
  uint64_t index = position % dataset_.num_windows();
  if (epoch != cached_epoch_) {
    shard_order_.resize(dataset_.num_shards());
    std::iota(shard_order_.begin(), shard_order_.end(), size_t{0});
    if (shuffle_) shuffle_in_place(shard_order_, derive_seed(seed_, kShardOrderStream, epoch));
    shard_starts_.assign(1, 0);
    for (size_t shard : shard_order_) shard_starts_.push_back(shard_starts_.back() + dataset_.windows_in_shard(shard));
    cached_epoch_ = epoch;
  }
  // The last start <= index is the shard holding it (shards with no window have equal starts).
  auto slot = static_cast<size_t>(std::upper_bound(shard_starts_.begin(), shard_starts_.end(), index) - shard_starts_.begin() - 1);
  size_t shard = shard_order_[slot];
  uint64_t window = shard_window_order(epoch, shard)[index - shard_starts_[slot]];
  return {shard, window};
}

void WindowStream::read(uint64_t first, int count, std::span<int32_t> inputs, std::span<int32_t> targets) {
  const auto T = static_cast<size_t>(dataset_.seq_len());
  if (inputs.size() < count * T || targets.size() < count * T) throw std::logic_error("batch buffers too small");
  for (int row = 0; row < count; ++row) {
    auto [shard, window] = locate(first + static_cast<uint64_t>(row));
    dataset_.read_window(shard, window, window_buffer_);
    for (size_t t = 0; t < T; ++t) {
      inputs[row * T + t] = window_buffer_[t];
      targets[row * T + t] = window_buffer_[t + 1];
    }
  }
}

}  // namespace emix
