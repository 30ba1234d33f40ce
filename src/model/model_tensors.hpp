#pragma once
// Pointers to each named tensor inside one flat buffer laid out as
// ParameterLayout: F is const float / float for the CPU model's parameters
// and gradients, bf16 for the GPU model's. Per-layer tensors are stacked
// [n_layer, ...], so block l's slice starts l·(count/n_layer) in.
#include <cstddef>
#include <string_view>
#include <vector>

#include "model/gpt2_config.hpp"

namespace emix {

// One block's tensors.
template <typename F>
struct BlockTensors {
  F *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
};

template <typename F>
struct ModelTensors {
  F *wte, *wpe, *lnfw, *lnfb;
  std::vector<BlockTensors<F>> blocks;
};

template <typename F>
ModelTensors<F> tensors_in(F* base, const ParameterLayout& layout, int n_layer) {
  auto whole = [&](std::string_view name) { return base + layout.find(name).offset; };
  auto of_block = [&](std::string_view name, int l) {
    const TensorInfo& t = layout.find(name);
    return base + t.offset + static_cast<size_t>(l) * (t.count / static_cast<size_t>(n_layer));
  };
  ModelTensors<F> m{whole("wte"), whole("wpe"), whole("lnfw"), whole("lnfb"), {}};
  for (int l = 0; l < n_layer; ++l) {
    m.blocks.push_back({of_block("ln1w", l), of_block("ln1b", l), of_block("qkvw", l), of_block("qkvb", l),
                        of_block("attprojw", l), of_block("attprojb", l), of_block("ln2w", l), of_block("ln2b", l),
                        of_block("fcw", l), of_block("fcb", l), of_block("fcprojw", l), of_block("fcprojb", l)});
  }
  return m;
}

}  // namespace emix
