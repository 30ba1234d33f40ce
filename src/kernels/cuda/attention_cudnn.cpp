// Causal self-attention through cuDNN 9's fused flash attention, built with
// the backend graph API (no cudnn-frontend). cuDNN recognizes the attention
// pattern in an operation graph of matmuls, pointwise ops and reductions and
// runs it as one fused kernel that never materializes the T×T scores:
//   forward:  S = Q·Kᵀ · scale, causal mask (generated row/column indices,
//             S where row ≥ column, −∞ elsewhere), softmax as
//             max / exp(S − max) / sum, stats = max + log(sum) (the per-row
//             log-sum-exp, the only state kept for the backward), O = P·V;
//   backward: P = exp(S − stats) recomputed under the same mask,
//             dV = Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − Σ dO⊙O) · scale, dK = dSᵀ·Q,
//             dQ = dS·K.
// Q, K, V are read in place from the interleaved qkv [B,T,3C] through their
// strides (dims [B,NH,T,hs], strides {T·3C, hs, 3C, 1}), O and dO are
// [B,T,C] and dQ, dK, dV are written interleaved into dqkv the same way.
//
// How the backward graph ends picks cuDNN's algorithm for dQ. With dS·K
// written into a non-virtual fp32 tensor (kDQAccum, in our workspace) and
// then converted into dQ, cuDNN runs its single-kernel backward, which adds
// each key block's share of dQ with atomics: the fastest, but the order of
// the sums, and so the bits, change from run to run. With dS·K written
// straight into dQ, cuDNN runs its "dP workspace" algorithm instead: dS is
// kept in a bf16 workspace of about B·NH·T·T values and dQ is its own
// product, summed in a fixed order, so the backward is bitwise reproducible.
// That graph difference is the backend's signal (cudnn-frontend builds the
// same two graphs: "non-virtual dQ_accum is how the backend API signals" the
// atomic algorithm, and its set_deterministic_algorithm forces the dP
// workspace one). The deterministic choice also skips any engine cuDNN marks
// CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC, and is refused on compute
// capability 10 and later, where cudnn-frontend pins a specific engine
// configuration this file does not build.
//
// Plans are built once per (B, T, C, NH) and cached with the descriptors
// they were built from.
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <spdlog/spdlog.h>

#include "core/error.hpp"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/growing_buffer.cuh"

namespace emix::cuda {
namespace {

using Dims = std::array<int64_t, 4>;

bool is_not_supported(cudnnStatus_t status) { return CUDNN_STATUS_CATEGORY(status) == CUDNN_STATUS_NOT_SUPPORTED; }

// Names cuDNN's status and its own explanation of the last failure; "not
// supported" marks the refusals of a shape or device (as opposed to errors).
[[noreturn]] void fail_cudnn(cudnnStatus_t status, const std::string& where, std::string_view what) {
  std::string detail(1024, '\0');
  cudnnGetLastErrorString(detail.data(), detail.size());
  detail.resize(std::strlen(detail.c_str()));
  fail("cuDNN attention{} ({}): {} failed with {}{}{}", is_not_supported(status) ? " is not supported" : " error",
       where, what, cudnnGetErrorString(status), detail.empty() ? "" : ": ", detail);
}

void check_cudnn(cudnnStatus_t status, const std::string& where, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) fail_cudnn(status, where, what);
}

// An owned backend descriptor.
class Descriptor {
 public:
  Descriptor(cudnnBackendDescriptorType_t type, const std::string& where) {
    check_cudnn(cudnnBackendCreateDescriptor(type, &descriptor_), where, "cudnnBackendCreateDescriptor");
  }
  ~Descriptor() {
    if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return descriptor_; }

 private:
  cudnnBackendDescriptor_t descriptor_ = nullptr;
};

// A finalized execution plan and everything it was built from.
struct Plan {
  std::vector<std::unique_ptr<Descriptor>> descriptors;  // tensors, ops, graph, config
  std::unique_ptr<Descriptor> plan;
  int64_t workspace_bytes = 0;
};

// Builds one operation graph: tensors by unique id, operations in order.
class GraphBuilder {
 public:
  GraphBuilder(cudnnHandle_t handle, std::string where) : handle_(handle), where_(std::move(where)) {}

  // A tensor in device memory (is_virtual false) or one that only links two
  // operations inside the fused kernel.
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides,
                                  bool is_virtual) {
    return make_tensor(uid, type, dims, strides, is_virtual, false);
  }
  // A virtual tensor (packed row-major unless strides are given) with the
  // next free id.
  cudnnBackendDescriptor_t intermediate(cudnnDataType_t type, const Dims& dims) {
    return intermediate(type, dims, packed_strides(dims));
  }
  cudnnBackendDescriptor_t intermediate(cudnnDataType_t type, const Dims& dims, const Dims& strides) {
    return make_tensor(next_virtual_uid_++, type, dims, strides, true, false);
  }
  // An fp32 scalar passed by value (host memory in the variant pack).
  cudnnBackendDescriptor_t scalar(int64_t uid) {
    return make_tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
    Descriptor& matmul = add(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    set(matmul, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    finalize(matmul, "matmul descriptor");
    Descriptor& op = add(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set_descriptor(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    set_descriptor(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    set_descriptor(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    set_descriptor(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, matmul.get());
    finalize(op, "matmul operation");
    ops_.push_back(op.get());
  }

  // y = mode(x[, b]); `select` is the mask of BINARY_SELECT (y = select ? x : b);
  // axis is GEN_INDEX's.
  void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t b = nullptr, cudnnBackendDescriptor_t select = nullptr,
                 cudnnDataType_t compute = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Descriptor& pointwise = add(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(pointwise, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(pointwise, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    if (axis >= 0) set(pointwise, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    finalize(pointwise, "pointwise descriptor");
    Descriptor& op = add(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set_descriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pointwise.get());
    set_descriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b != nullptr) set_descriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
    if (select != nullptr) set_descriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, select);
    set_descriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    finalize(op, "pointwise operation");
    ops_.push_back(op.get());
  }

  void reduction(cudnnReduceTensorOp_t reduce, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    Descriptor& reduction = add(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    set(reduction, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce);
    set(reduction, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    finalize(reduction, "reduction descriptor");
    Descriptor& op = add(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set_descriptor(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    set_descriptor(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    set_descriptor(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, reduction.get());
    finalize(op, "reduction operation");
    ops_.push_back(op.get());
  }

  // y views x with other dims and strides (here: a transpose).
  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    Descriptor& op = add(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set_descriptor(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    set_descriptor(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    finalize(op, "reshape operation");
    ops_.push_back(op.get());
  }

  // scores where row ≥ column (t2 ≤ t), −∞ elsewhere: the causal mask as
  // cuDNN's flash attention expects to find it.
  cudnnBackendDescriptor_t causal_mask(cudnnBackendDescriptor_t scores, cudnnBackendDescriptor_t negative_infinity,
                                       const Dims& score_dims) {
    cudnnBackendDescriptor_t row = intermediate(CUDNN_DATA_INT32, score_dims);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, row, scores, nullptr, nullptr, CUDNN_DATA_FLOAT, 2);
    cudnnBackendDescriptor_t column = intermediate(CUDNN_DATA_INT32, score_dims);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, column, scores, nullptr, nullptr, CUDNN_DATA_FLOAT, 3);
    cudnnBackendDescriptor_t keep = intermediate(CUDNN_DATA_BOOLEAN, score_dims);
    pointwise(CUDNN_POINTWISE_CMP_GE, keep, row, column, nullptr, CUDNN_DATA_BOOLEAN);
    cudnnBackendDescriptor_t masked = intermediate(CUDNN_DATA_FLOAT, score_dims);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, masked, scores, negative_infinity, keep);
    return masked;
  }

  // The operation graph, the heuristics' engine configurations in order, and
  // the first of them that finalizes into a plan. With `deterministic`, the
  // engines cuDNN marks CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC come last:
  // the graph itself (dQ written directly, cuDNN's dP-workspace algorithm) is
  // what cudnn-frontend relies on for determinism on Hopper, and whether
  // cuDNN also marks the fused engine is not documented, so such an engine is
  // used with a warning rather than refused (CudaAttention's bit-identity
  // test shows which way it is).
  Plan build(bool deterministic) {
    Descriptor& graph = add(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_);
    set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops_.size()),
        ops_.data());
    finalize(graph, "operation graph");
    const cudnnBackendDescriptor_t graph_descriptor = graph.get();

    // A refusal (of the heuristics or of an engine) only moves on to the
    // next candidate; the last status is what the error reports.
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    std::vector<std::unique_ptr<Descriptor>> candidates, marked;
    for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      for (std::unique_ptr<Descriptor>& config : engine_configs(graph_descriptor, mode, &last)) {
        const bool defer = deterministic && marked_nondeterministic(config->get());
        (defer ? marked : candidates).push_back(std::move(config));
      }
    }
    const size_t proposed = candidates.size() + marked.size();
    for (std::unique_ptr<Descriptor>& config : candidates) {
      if (std::optional<Plan> plan = finalize_plan(std::move(config), &last)) return std::move(*plan);
    }
    for (std::unique_ptr<Descriptor>& config : marked) {
      if (std::optional<Plan> plan = finalize_plan(std::move(config), &last)) {
        spdlog::warn("cuDNN attention ({}): no engine without CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC accepted the "
                     "deterministic graph ({} of {} proposed carry the note); using a marked one, so bitwise "
                     "reproducibility rests on the graph alone",
                     where_, marked.size(), proposed);
        return std::move(*plan);
      }
    }
    fail_cudnn(is_not_supported(last) || proposed == 0 ? CUDNN_STATUS_NOT_SUPPORTED : last, where_,
               proposed == 0 ? std::string("finding an engine (the heuristics proposed none)")
                             : fmt::format("finalizing an execution plan (none of the {} proposed engines accepted "
                                           "the graph; {} of them marked nondeterministic)",
                                           proposed, marked.size()));
  }

 private:
  static Dims packed_strides(const Dims& dims) { return {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1}; }

  // The engine configurations heuristics `mode` proposes for the graph, best
  // first; none (with *status set to the refusal) when the heuristics refuse it.
  std::vector<std::unique_ptr<Descriptor>> engine_configs(cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                                                          cudnnStatus_t* status) {
    Descriptor& heuristics = add(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    set_descriptor(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
    set(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    std::vector<std::unique_ptr<Descriptor>> configs;
    const cudnnStatus_t finalized = cudnnBackendFinalize(heuristics.get());
    if (finalized != CUDNN_STATUS_SUCCESS) {
      *status = finalized;
      return configs;
    }
    int64_t count = 0;
    check_cudnn(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         0, &count, nullptr),
                where_, "counting the engine heuristics' results");
    std::vector<cudnnBackendDescriptor_t> results;
    for (int64_t i = 0; i < count; ++i) {
      configs.push_back(std::make_unique<Descriptor>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, where_));
      results.push_back(configs.back()->get());
    }
    int64_t returned = 0;
    check_cudnn(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         count, &returned, results.data()),
                where_, "reading the engine heuristics' results");
    configs.resize(static_cast<size_t>(std::min(returned, count)));
    return configs;
  }

  // The execution plan of one engine configuration, or nullopt (with *status
  // set) when the engine refuses the graph.
  std::optional<Plan> finalize_plan(std::unique_ptr<Descriptor> config, cudnnStatus_t* status) {
    auto plan = std::make_unique<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, where_);
    const cudnnBackendDescriptor_t config_descriptor = config->get();
    set(*plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_);
    set(*plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &config_descriptor);
    const cudnnStatus_t finalized = cudnnBackendFinalize(plan->get());
    if (finalized != CUDNN_STATUS_SUCCESS) {
      *status = finalized;
      return std::nullopt;
    }
    Plan result;
    int64_t count = 0;
    check_cudnn(cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                         &count, &result.workspace_bytes),
                where_, "reading the plan's workspace size");
    result.plan = std::move(plan);
    result.descriptors = std::move(descriptors_);
    result.descriptors.push_back(std::move(config));
    return result;
  }

  // Whether cuDNN lists CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC among the
  // numerical notes of the configuration's engine.
  bool marked_nondeterministic(cudnnBackendDescriptor_t config) {
    Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR, where_);
    cudnnBackendDescriptor_t engine_descriptor = engine.get();
    int64_t count = 0;
    check_cudnn(cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count,
                                         &engine_descriptor),
                where_, "reading an engine configuration's engine");
    std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
    check_cudnn(cudnnBackendGetAttribute(engine_descriptor, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                         static_cast<int64_t>(notes.size()), &count, notes.data()),
                where_, "reading an engine's numerical notes");
    const auto end = notes.begin() + std::clamp<int64_t>(count, 0, static_cast<int64_t>(notes.size()));
    return std::find(notes.begin(), end, CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) != end;
  }

  Descriptor& add(cudnnBackendDescriptorType_t type) {
    descriptors_.push_back(std::make_unique<Descriptor>(type, where_));
    return *descriptors_.back();
  }
  void set(Descriptor& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
           const void* values) {
    check_cudnn(cudnnBackendSetAttribute(d.get(), name, type, count, values), where_, "cudnnBackendSetAttribute");
  }
  void set_descriptor(Descriptor& d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t value) {
    set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value);
  }
  void finalize(Descriptor& d, const char* what) {
    const cudnnStatus_t status = cudnnBackendFinalize(d.get());
    if (status != CUDNN_STATUS_SUCCESS) fail_cudnn(status, where_, (std::string("finalizing the ") + what).c_str());
  }

  cudnnBackendDescriptor_t make_tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides,
                                       bool is_virtual, bool by_value) {
    Descriptor& t = add(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t alignment = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    finalize(t, "tensor descriptor");
    return t.get();
  }

  cudnnHandle_t handle_;
  std::string where_;
  std::vector<std::unique_ptr<Descriptor>> descriptors_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_virtual_uid_ = 1000;
};

// Unique ids of the tensors in device (or, for scalars, host) memory.
enum TensorId : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kDO,
  kDQ,
  kDK,
  kDV,
  kRowDotSum,  // Σ_d dO·O per row (workspace)
  kDQAccum,    // dQ in fp32 (workspace; the atomic, nondeterministic backward only)
  kScale,
  kNegativeInfinity,
  kOne,
};

constexpr size_t kWorkspaceAlignment = 256;

size_t aligned(size_t bytes) { return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; }

struct Shape {
  int64_t B, T, C, NH, hs;

  Dims heads() const { return {B, NH, T, hs}; }
  Dims scores() const { return {B, NH, T, T}; }
  Dims rows() const { return {B, NH, T, 1}; }
  // Q, K, V (and dQ, dK, dV) inside the interleaved [B,T,3C] rows.
  Dims qkv_strides() const { return {T * 3 * C, hs, 3 * C, 1}; }
  // Kᵀ or Vᵀ [B,NH,hs,T] read from the same rows.
  Dims transposed_qkv_strides() const { return {T * 3 * C, hs, 1, 3 * C}; }
  // O and dO inside [B,T,C].
  Dims out_strides() const { return {T * C, hs, C, 1}; }
  Dims row_strides() const { return {NH * T, T, 1, 1}; }
  size_t row_dot_sum_bytes() const { return static_cast<size_t>(B * NH * T) * sizeof(float); }
  size_t dq_accum_bytes() const { return static_cast<size_t>(B * NH * T * hs) * sizeof(float); }
  std::string describe() const { return fmt::format("B={} T={} C={} NH={}", B, T, C, NH); }
};

// The compute capability's major number of the current device.
int compute_capability_major() {
  int device = 0;
  int major = 0;
  EMIX_CUDA_CHECK(cudaGetDevice(&device));
  EMIX_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major;
}

class CudnnAttention final : public Attention {
 public:
  explicit CudnnAttention(bool deterministic) : deterministic_(deterministic) {
    // cuDNN's dP-workspace backward is deterministic on Hopper (sm_90); newer
    // architectures need a pinned engine configuration this backend does not
    // build, and older ones have no such guarantee.
    const int major = deterministic_ ? compute_capability_major() : 9;
    if (major != 9) {
      fail(
          "cuDNN attention with a deterministic backward is supported here on compute capability 9.x (Hopper) "
          "only, not {}.x (set cuda.deterministic false, or cuda.attention \"reference\")",
          major);
    }
    check_cudnn(cudnnCreate(&handle_), "creating the handle", "cudnnCreate");
  }
  ~CudnnAttention() override {
    plans_.clear();  // descriptors before the handle they were built with
    cudnnDestroy(handle_);
  }
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  size_t saved_bytes(int B, int T, int C, int NH) const override {
    (void)C;
    return static_cast<size_t>(B) * NH * T * sizeof(float);  // the log-sum-exp stats
  }
  // The backward's row sums and either the fp32 dQ accumulator (atomic) or,
  // for the deterministic plan's own workspace, its dS of B·NH·T·T bf16
  // values; the forward's workspace is small beside them.
  size_t scratch_bytes(int B, int T, int C, int NH) const override {
    const Shape s{B, T, C, NH, C / NH};
    const size_t dp_workspace = static_cast<size_t>(B) * NH * T * T * sizeof(bf16);
    return s.row_dot_sum_bytes() + (deterministic_ ? dp_workspace : s.dq_accum_bytes());
  }

  void forward(bf16* out, void* saved, const bf16* qkv, int B, int T, int C, int NH, cudaStream_t stream) override {
    const Shape s = shape(B, T, C, NH);
    Plans& plans = plans_for(s);
    if (!plans.forward) plans.forward = std::make_unique<Plan>(build_forward(s));
    const Plan& plan = *plans.forward;
    void* workspace = workspace_.get(aligned(static_cast<size_t>(plan.workspace_bytes)), stream);
    const std::vector<int64_t> uids = {kQ, kK, kV, kO, kStats, kScale, kNegativeInfinity};
    const std::vector<void*> pointers = {
        const_cast<bf16*>(qkv), const_cast<bf16*>(qkv + C), const_cast<bf16*>(qkv + 2 * C), out, saved, &scale_,
        &negative_infinity_};
    execute(plan, uids, pointers, workspace, stream, s);
  }

  void backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const void* saved, int B, int T, int C,
                int NH, cudaStream_t stream) override {
    const Shape s = shape(B, T, C, NH);
    Plans& plans = plans_for(s);
    if (!plans.backward) plans.backward = std::make_unique<Plan>(build_backward(s));
    const Plan& plan = *plans.backward;
    // [plan's own workspace | row dot sums | fp32 dQ (the atomic backward only)]
    const size_t plan_bytes = aligned(static_cast<size_t>(plan.workspace_bytes));
    const size_t row_dot_sum_bytes = aligned(s.row_dot_sum_bytes());
    const size_t dq_accum_bytes = deterministic_ ? 0 : s.dq_accum_bytes();
    char* workspace = workspace_.get(plan_bytes + row_dot_sum_bytes + dq_accum_bytes, stream);
    char* row_dot_sum = workspace + plan_bytes;
    std::vector<int64_t> uids = {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kRowDotSum,
                                 kScale, kNegativeInfinity, kOne};
    std::vector<void*> pointers = {const_cast<bf16*>(qkv),
                                   const_cast<bf16*>(qkv + C),
                                   const_cast<bf16*>(qkv + 2 * C),
                                   const_cast<bf16*>(out),
                                   const_cast<bf16*>(dout),
                                   const_cast<void*>(saved),
                                   dqkv,
                                   dqkv + C,
                                   dqkv + 2 * C,
                                   row_dot_sum,
                                   &scale_,
                                   &negative_infinity_,
                                   &one_};
    if (!deterministic_) {
      char* dq_accum = row_dot_sum + row_dot_sum_bytes;
      // cuDNN accumulates dQ into this buffer (before 9.6 it did not zero it).
      EMIX_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, dq_accum_bytes, stream));
      uids.push_back(kDQAccum);
      pointers.push_back(dq_accum);
    }
    execute(plan, uids, pointers, workspace, stream, s);
  }

 private:
  struct Plans {
    std::unique_ptr<Plan> forward, backward;
  };

  Shape shape(int B, int T, int C, int NH) {
    if (B <= 0 || T <= 0 || NH <= 0 || C % NH != 0 || (C / NH) % 8 != 0) {
      fail(
          "cuDNN attention is not supported for B={} T={} C={} NH={}: needs C divisible by NH and a head size "
          "divisible by 8",
          B, T, C, NH);
    }
    const Shape s{B, T, C, NH, C / NH};
    scale_ = 1.0f / std::sqrt(static_cast<float>(s.hs));
    return s;
  }

  Plans& plans_for(const Shape& s) { return plans_[std::make_tuple(s.B, s.T, s.C, s.NH)]; }

  Plan build_forward(const Shape& s) {
    GraphBuilder g(handle_, "forward, " + s.describe());
    const Dims kt_dims = {s.B, s.NH, s.hs, s.T};
    auto q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides(), false);
    auto kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, kt_dims, s.transposed_qkv_strides(), false);
    auto v = g.tensor(kV, CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides(), false);
    auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, s.heads(), s.out_strides(), false);
    auto stats = g.tensor(kStats, CUDNN_DATA_FLOAT, s.rows(), s.row_strides(), false);
    auto scale = g.scalar(kScale);
    auto negative_infinity = g.scalar(kNegativeInfinity);

    auto products = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.matmul(q, kt, products);
    auto scores = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_MUL, scores, products, scale);
    auto masked = g.causal_mask(scores, negative_infinity, s.scores());
    auto row_max = g.intermediate(CUDNN_DATA_FLOAT, s.rows());
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, row_max);
    auto shifted = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_SUB, shifted, masked, row_max);
    auto exps = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_EXP, exps, shifted);
    auto row_sum = g.intermediate(CUDNN_DATA_FLOAT, s.rows());
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, exps, row_sum);
    auto log_sum = g.intermediate(CUDNN_DATA_FLOAT, s.rows());
    g.pointwise(CUDNN_POINTWISE_LOG, log_sum, row_sum);
    g.pointwise(CUDNN_POINTWISE_ADD, stats, row_max, log_sum);
    // The second product takes the probabilities in the inputs' type.
    auto probabilities = g.intermediate(CUDNN_DATA_BFLOAT16, s.scores());
    g.pointwise(CUDNN_POINTWISE_DIV, probabilities, exps, row_sum);
    g.matmul(probabilities, v, o);
    return g.build(deterministic_);
  }

  Plan build_backward(const Shape& s) {
    GraphBuilder g(handle_, "backward, " + s.describe());
    const Dims transposed_dims = {s.B, s.NH, s.hs, s.T};
    const Dims transposed_score_strides = {s.NH * s.T * s.T, s.T * s.T, 1, s.T};
    auto q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides(), false);
    auto kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, transposed_dims, s.transposed_qkv_strides(), false);
    auto vt = g.tensor(kV, CUDNN_DATA_BFLOAT16, transposed_dims, s.transposed_qkv_strides(), false);
    auto o = g.tensor(kO, CUDNN_DATA_BFLOAT16, s.heads(), s.out_strides(), false);
    auto d_o = g.tensor(kDO, CUDNN_DATA_BFLOAT16, s.heads(), s.out_strides(), false);
    auto stats = g.tensor(kStats, CUDNN_DATA_FLOAT, s.rows(), s.row_strides(), false);
    auto dq = g.tensor(kDQ, CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides(), false);
    auto dk = g.tensor(kDK, CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides(), false);
    auto dv = g.tensor(kDV, CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides(), false);
    auto row_dot_sum = g.tensor(kRowDotSum, CUDNN_DATA_FLOAT, s.rows(), s.row_strides(), false);
    auto scale = g.scalar(kScale);
    auto negative_infinity = g.scalar(kNegativeInfinity);
    auto one = g.scalar(kOne);

    // Σ_t2 att·datt of the softmax backward equals Σ_d dO·O per row.
    auto do_o = g.intermediate(CUDNN_DATA_FLOAT, s.heads());
    g.pointwise(CUDNN_POINTWISE_MUL, do_o, d_o, o);
    auto do_o_sum = g.intermediate(CUDNN_DATA_FLOAT, s.rows());
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, do_o, do_o_sum);
    g.pointwise(CUDNN_POINTWISE_MUL, row_dot_sum, do_o_sum, one);

    // The probabilities again, from the saved log-sum-exp.
    auto products = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.matmul(q, kt, products);
    auto scores = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_MUL, scores, products, scale);
    auto shifted = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_SUB, shifted, scores, stats);
    auto masked = g.causal_mask(shifted, negative_infinity, s.scores());
    auto probabilities = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_EXP, probabilities, masked);

    // dV = Pᵀ·dO.
    auto probabilities_t = g.intermediate(CUDNN_DATA_BFLOAT16, s.scores(), transposed_score_strides);
    g.reshape(probabilities, probabilities_t);
    g.matmul(probabilities_t, d_o, dv);

    // dS = P ⊙ (dO·Vᵀ − Σ dO⊙O) · scale.
    auto dprobabilities = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.matmul(d_o, vt, dprobabilities);
    auto centered = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_SUB, centered, dprobabilities, row_dot_sum);
    auto dscores_unscaled = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_MUL, dscores_unscaled, centered, probabilities);
    auto dscores = g.intermediate(CUDNN_DATA_FLOAT, s.scores());
    g.pointwise(CUDNN_POINTWISE_MUL, dscores, dscores_unscaled, scale);

    // dK = dSᵀ·Q.
    auto dscores_t = g.intermediate(CUDNN_DATA_BFLOAT16, s.scores(), transposed_score_strides);
    g.reshape(dscores, dscores_t);
    g.matmul(dscores_t, q, dk);

    // dQ = dS·K: straight into dqkv (the deterministic dP-workspace
    // algorithm), or accumulated in fp32 and then rounded into dqkv (the
    // atomic one); see the file comment.
    auto k = g.intermediate(CUDNN_DATA_BFLOAT16, s.heads(), s.qkv_strides());
    g.reshape(kt, k);
    if (deterministic_) {
      g.matmul(dscores, k, dq);
    } else {
      auto dq_accum =
          g.tensor(kDQAccum, CUDNN_DATA_FLOAT, s.heads(), {s.NH * s.T * s.hs, s.T * s.hs, s.hs, 1}, false);
      g.matmul(dscores, k, dq_accum);
      g.pointwise(CUDNN_POINTWISE_IDENTITY, dq, dq_accum);
    }
    return g.build(deterministic_);
  }

  void execute(const Plan& plan, const std::vector<int64_t>& uids, const std::vector<void*>& pointers, void* workspace,
               cudaStream_t stream, const Shape& s) {
    const std::string where = "executing, " + s.describe();
    check_cudnn(cudnnSetStream(handle_, stream), where, "cudnnSetStream");
    Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, where);
    check_cudnn(cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                         static_cast<int64_t>(uids.size()), uids.data()),
                where, "setting the variant pack's ids");
    check_cudnn(cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                         static_cast<int64_t>(pointers.size()), pointers.data()),
                where, "setting the variant pack's pointers");
    check_cudnn(
        cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace),
        where, "setting the variant pack's workspace");
    check_cudnn(cudnnBackendFinalize(pack.get()), where, "finalizing the variant pack");
    check_cudnn(cudnnBackendExecute(handle_, plan.plan->get(), pack.get()), where, "cudnnBackendExecute");
  }

  bool deterministic_;
  cudnnHandle_t handle_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, Plans> plans_;
  GrowingBuffer<char> workspace_;
  // Scalars passed by value: the variant pack points at them.
  float scale_ = 1.0f;
  float negative_infinity_ = -std::numeric_limits<float>::infinity();
  float one_ = 1.0f;
};

}  // namespace

std::unique_ptr<Attention> make_cudnn_attention(bool deterministic) {
  return std::make_unique<CudnnAttention>(deterministic);
}

}  // namespace emix::cuda
