#pragma once
// The shape of a GPT-2 model, and the layout of its parameters in one flat
// float buffer. The layout is llm.c's tensor order (the golden data's), so a
// checkpoint, a golden params.bin and the GPU buffers share one layout.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace emix {

struct ModelConfig {
  int vocab_size = 50257;
  // Rows of wte; >= vocab_size. Extra rows are zero and their logits are
  // masked out, they only make the output matmul faster.
  int padded_vocab_size = 50304;
  int n_layer = 4;
  int n_embd = 128;
  int n_head = 4;
  int block_size = 256;  // maximum sequence length (rows of wpe)

  int head_size() const { return n_embd / n_head; }
  // Checks the shape is usable; throws naming the offending key.
  void validate() const;
};

// The smallest multiple of `multiple` that is >= vocab_size.
int pad_vocab(int vocab_size, int multiple);

// Checks a batch of B sequences of T token ids for a model: positive shape,
// T <= block_size, B·T ids, each < vocab_size; throws naming `what`
// ("inputs", "targets") and the offending value. Both backends call it.
void check_token_batch(std::span<const int32_t> ids, std::string_view what, int B, int T, const ModelConfig& config);

// Training FLOPs per token, for MFU: 6 per parameter (forward 2, backward 4)
// plus the attention scores and their use, 6·L·C·T.
double training_flops_per_token(const ModelConfig& config, size_t num_parameters, int T);

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // per-layer tensors have n_layer as first dim
  size_t offset = 0;           // in elements, into the flat buffer
  size_t count = 0;
  bool weight_decay = false;   // matrices and embeddings decay; LN and biases do not
};

class ParameterLayout {
 public:
  explicit ParameterLayout(const ModelConfig& config);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t num_parameters() const { return total_; }
  const TensorInfo& find(std::string_view name) const;

 private:
  std::vector<TensorInfo> tensors_;
  size_t total_ = 0;
};

// A run of consecutive elements of the flat parameter buffer.
struct ParamRange {
  size_t begin = 0;
  size_t count = 0;
};

// The parameters in the order a backward pass finishes their gradients, one
// group per point where a group is complete: the final LayerNorm, then each
// block from the last to the first (slice `layer` of every per-layer
// tensor), then the two embeddings (wte's gradient also gets the output
// head's part, first). The groups cover every parameter exactly once; within
// a group the ranges ascend. Data parallelism sends each group to its owners
// while the backward goes on (ModelBackend::report_gradients_of_next_backward).
std::vector<std::vector<ParamRange>> gradient_groups_in_backward_order(const ParameterLayout& layout, int n_layer);

}  // namespace emix
