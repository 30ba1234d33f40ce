#include "model/gpt2_config.hpp"

#include "core/error.hpp"

namespace emix {

int pad_vocab(int vocab_size, int multiple) { return (vocab_size + multiple - 1) / multiple * multiple; }

void check_token_batch(std::span<const int32_t> ids, std::string_view what, int B, int T, const ModelConfig& c) {
  if (B <= 0 || T <= 0) fail("batch shape must be positive, got B={} T={}", B, T);
  if (T > c.block_size) fail("sequence length {} exceeds the model's block_size {}", T, c.block_size);
  if (ids.size() != static_cast<size_t>(B) * static_cast<size_t>(T)) {
    fail("{} hold {} token ids, but B·T = {}·{} = {}", what, ids.size(), B, T, static_cast<int64_t>(B) * T);
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size) fail("{} contain token id {}, outside the vocabulary (size {})", what, id, c.vocab_size);
  }
}

double training_flops_per_token(const ModelConfig& c, size_t num_parameters, int T) {
  return 6.0 * static_cast<double>(num_parameters) + 6.0 * c.n_layer * c.n_embd * static_cast<double>(T);
}

void ModelConfig::validate() const {
  auto positive = [](int value, const char* key) {
    if (value <= 0) fail("config key 'model.{}' must be positive, got {}", key, value);
  };
  positive(vocab_size, "vocab_size");
  positive(n_layer, "n_layer");
  positive(n_embd, "n_embd");
  positive(n_head, "n_head");
  positive(block_size, "block_size");
  if (vocab_size > 65536) fail("config key 'model.vocab_size' is {}, but token shards store uint16 ids (at most 65536)", vocab_size);
  if (padded_vocab_size < vocab_size) {
    fail("config key 'model.padded_vocab_size' ({}) is smaller than model.vocab_size ({})", padded_vocab_size, vocab_size);
  }
  if (n_embd % n_head != 0) fail("model.n_embd ({}) must be divisible by model.n_head ({})", n_embd, n_head);
}

ParameterLayout::ParameterLayout(const ModelConfig& c) {
  const int64_t L = c.n_layer;
  const int64_t C = c.n_embd;
  const int64_t V = c.padded_vocab_size;
  auto add = [this](std::string name, std::vector<int64_t> shape, bool decay) {
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    tensors_.push_back(TensorInfo{std::move(name), std::move(shape), total_, count, decay});
    total_ += count;
  };
  add("wte", {V, C}, true);
  add("wpe", {c.block_size, C}, true);
  add("ln1w", {L, C}, false);
  add("ln1b", {L, C}, false);
  add("qkvw", {L, 3 * C, C}, true);
  add("qkvb", {L, 3 * C}, false);
  add("attprojw", {L, C, C}, true);
  add("attprojb", {L, C}, false);
  add("ln2w", {L, C}, false);
  add("ln2b", {L, C}, false);
  add("fcw", {L, 4 * C, C}, true);
  add("fcb", {L, 4 * C}, false);
  add("fcprojw", {L, C, 4 * C}, true);
  add("fcprojb", {L, C}, false);
  add("lnfw", {C}, false);
  add("lnfb", {C}, false);
}

const TensorInfo& ParameterLayout::find(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return t;
  }
  fail("no parameter tensor named '{}'", name);
}

std::vector<std::vector<ParamRange>> gradient_groups_in_backward_order(const ParameterLayout& layout, int n_layer) {
  auto whole = [&](std::string_view name) {
    const TensorInfo& t = layout.find(name);
    return ParamRange{t.offset, t.count};
  };
  auto is_per_layer = [](const std::string& name) {
    return name != "wte" && name != "wpe" && name != "lnfw" && name != "lnfb";
  };
  std::vector<std::vector<ParamRange>> groups;
  groups.push_back({whole("lnfw"), whole("lnfb")});
  for (int layer = n_layer - 1; layer >= 0; --layer) {
    std::vector<ParamRange> block;
    for (const TensorInfo& t : layout.tensors()) {
      if (!is_per_layer(t.name)) continue;
      const size_t per_layer = t.count / static_cast<size_t>(n_layer);
      block.push_back(ParamRange{t.offset + static_cast<size_t>(layer) * per_layer, per_layer});
    }
    groups.push_back(std::move(block));
  }
  groups.push_back({whole("wte"), whole("wpe")});
  return groups;
}

}  // namespace emix
