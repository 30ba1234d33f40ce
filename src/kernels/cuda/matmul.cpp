// Linear layers through cuBLASLt (interface: matmul.cuh). bf16 A, B, C and D
// (fp32 C and D for the batched products), fp32 accumulation
// (CUBLAS_COMPUTE_32F) and fp32 alpha/beta.
//
// cuBLASLt is column-major; our matrices are row-major. A row-major [R, C]
// array with row stride C is, as the same bytes, the column-major C × R
// matrix (its transpose) with leading dimension C. So each product is written
// for the transposes, D = op(A)·op(B) being m × n with k summed:
//   forward          outᵀ[OC,N]  = W[OC,IC] · inpᵀ[IC,N]
//                    A = weight (stored IC × OC, ld IC), op T;  B = inp (IC × N, ld IC), op N;
//                    D = out (OC × N, ld OC);  m = OC, n = N, k = IC;  bias has D's OC rows.
//   backward, data   dinpᵀ[IC,N] = Wᵀ[IC,OC] · doutᵀ[OC,N]
//                    A = weight (IC × OC, ld IC), op N;  B = dout (OC × N, ld OC), op N;
//                    D = dinp (IC × N, ld IC);  m = IC, n = N, k = OC.
//   backward, weight dWᵀ[IC,OC] += inpᵀ[IC,N] · dout[N,OC]
//                    A = inp (IC × N, ld IC), op N;  B = dout (OC × N, ld OC), op T;
//                    C = D = dweight (IC × OC, ld IC), beta 1;  m = IC, n = OC, k = N.
// The GELU input matrices (pre_gelu) have D's shape and leading dimension:
// ld OC forward, ld IC for the data gradient. cuBLASLt wants that ld to be a
// multiple of 8; otherwise, or where no algorithm offers the fused epilogue,
// the GELU runs as its own kernel (gelu.cuh) after a plain product.
//
// The reference attention's per-head products (batched()) go through the
// same path with fp32 D and every layout strided-batched
// (CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET).
//
// Descriptors, layouts and the heuristic's algorithm are built once per
// (product, GEMM shape with leading dimensions and batch strides, epilogue,
// operand alignments) and kept, so a steady-state call sets the epilogue
// pointers and launches; the same algorithm every time also keeps the sums'
// order, and so the bits, the same from run to run. The workspace and the
// bias-gradient scratch are shared by all calls: calls on one Matmul must be
// ordered on one stream.
#include "kernels/cuda/matmul.cuh"

#include <cublasLt.h>

#include <bit>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/error.hpp"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/growing_buffer.cuh"
#include "kernels/cuda/matmul_bias_grad.cuh"

namespace emix::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

enum class Product : uint8_t { forward, backward_data, backward_weight, batched };

const char* product_name(Product product) {
  switch (product) {
    case Product::forward: return "forward out = inp·Wᵀ";
    case Product::backward_data: return "backward dinp = dout·W";
    case Product::backward_weight: return "backward dweight += doutᵀ·inp";
    case Product::batched: return "strided-batched product (reference attention)";
  }
  return "?";
}

// The product as cuBLASLt sees it (see the file comment): D = op(A)·op(B)
// (+ beta·D), m × n with k summed, operands column-major with leading
// dimensions lda, ldb, ldd; `batch` such products, member i of each operand
// stride_* elements after member i − 1 (batch 1: a single product).
struct Gemm {
  cublasOperation_t op_a, op_b;
  int m, n, k;
  int64_t lda, ldb, ldd;
  cudaDataType_t type_d;
  float beta;
  int batch;
  int64_t stride_a, stride_b, stride_d;
  bool operator==(const Gemm&) const = default;

  // Rows and columns of A and B as stored.
  int rows_a() const { return op_a == CUBLAS_OP_N ? m : k; }
  int cols_a() const { return op_a == CUBLAS_OP_N ? k : m; }
  int rows_b() const { return op_b == CUBLAS_OP_N ? k : n; }
  int cols_b() const { return op_b == CUBLAS_OP_N ? n : k; }
};

// A linear layer's product: one bf16 product, operands stored with ld = rows.
Gemm linear_gemm(Product product, int N, int IC, int OC) {
  const auto single = [](cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, float beta) {
    Gemm g{op_a, op_b, m, n, k, 0, 0, m, CUDA_R_16BF, beta, 1, 0, 0, 0};
    g.lda = g.rows_a();
    g.ldb = g.rows_b();
    return g;
  };
  switch (product) {
    case Product::forward: return single(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, 0.0f);
    case Product::backward_data: return single(CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, 0.0f);
    case Product::backward_weight: return single(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, 1.0f);
    case Product::batched: break;
  }
  fail("linear_gemm: not a linear layer's product");
}

// Everything a cached plan depends on. Alignments are log2 of the largest
// power of two (up to 256 bytes) dividing each operand's address and, for a
// batch, its stride in bytes (every member's address): the heuristic picks
// algorithms for the alignment it is told, so a plan is reused only for
// operands aligned at least as well.
struct PlanKey {
  Product product;
  Gemm gemm;
  cublasLtEpilogue_t epilogue;
  uint8_t align_a, align_b, align_d, align_bias, align_aux;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    const Gemm& g = key.gemm;
    uint64_t h = static_cast<uint64_t>(key.product);
    for (uint64_t part : {uint64_t(g.op_a) | uint64_t(g.op_b) << 8 | uint64_t(g.type_d) << 16, uint64_t(g.m),
                          uint64_t(g.n), uint64_t(g.k), uint64_t(g.lda), uint64_t(g.ldb), uint64_t(g.ldd),
                          uint64_t(std::bit_cast<uint32_t>(g.beta)), uint64_t(g.batch), uint64_t(g.stride_a),
                          uint64_t(g.stride_b), uint64_t(g.stride_d), uint64_t(key.epilogue),
                          uint64_t(key.align_a) | uint64_t(key.align_b) << 8 | uint64_t(key.align_d) << 16 |
                              uint64_t(key.align_bias) << 24 | uint64_t(key.align_aux) << 32}) {
      h = (h ^ part) * 0x100000001b3ull;  // FNV-1a style mixing
    }
    return static_cast<size_t>(h);
  }
};

uint8_t alignment_log2(const void* pointer, int64_t stride_bytes = 0) {
  const auto bits = reinterpret_cast<uintptr_t>(pointer) | static_cast<uintptr_t>(stride_bytes);
  return static_cast<uint8_t>(bits == 0 ? 8 : std::min(std::countr_zero(bits), 8));
}

size_t element_bytes(cudaDataType_t type) { return type == CUDA_R_32F ? 4 : 2; }

bool uses_bias(cublasLtEpilogue_t epilogue) {
  return epilogue == CUBLASLT_EPILOGUE_BIAS || epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool uses_aux(cublasLtEpilogue_t epilogue) {
  return epilogue == CUBLASLT_EPILOGUE_GELU_AUX || epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
         epilogue == CUBLASLT_EPILOGUE_DGELU;
}

const char* epilogue_name(cublasLtEpilogue_t epilogue) {
  switch (epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT: return "none";
    case CUBLASLT_EPILOGUE_BIAS: return "bias";
    case CUBLASLT_EPILOGUE_GELU_AUX: return "GELU, pre-GELU output";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return "bias and GELU, pre-GELU output";
    case CUBLASLT_EPILOGUE_DGELU: return "GELU gradient";
    default: return "other";
  }
}

std::string describe(const PlanKey& key) {
  const Gemm& g = key.gemm;
  return fmt::format("Matmul {} (GEMM m={} n={} k={}{}, epilogue: {})", product_name(key.product), g.m, g.n, g.k,
                     g.batch > 1 ? fmt::format(", batch of {}", g.batch) : std::string(), epilogue_name(key.epilogue));
}

void check_cublas(cublasStatus_t status, const char* call, const PlanKey* key) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail("cuBLASLt: {} failed with {} ({}){}", call, cublasLtGetStatusName(status), cublasLtGetStatusString(status),
       key == nullptr ? std::string() : " in " + describe(*key));
}

// Checks a cuBLASLt call, naming the function and, where given, the product.
#define EMIX_CUBLASLT(key, function, ...) check_cublas(function(__VA_ARGS__), #function, key)

// The descriptors and algorithm for one PlanKey.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  float beta = 0.0f;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (layout_d != nullptr) cublasLtMatrixLayoutDestroy(layout_d);
    if (layout_b != nullptr) cublasLtMatrixLayoutDestroy(layout_b);
    if (layout_a != nullptr) cublasLtMatrixLayoutDestroy(layout_a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

template <typename T>
void set_attribute(const PlanKey& key, cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                   const T& value) {
  EMIX_CUBLASLT(&key, cublasLtMatmulDescSetAttribute, desc, attribute, &value, sizeof(value));
}

}  // namespace

struct Matmul::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  GrowingBuffer<float> bias_scratch;
  // A null plan: no algorithm offers this fused epilogue (callers fall back).
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;

  Impl() {
    EMIX_CUBLASLT(nullptr, cublasLtCreate, &handle);
    const cudaError_t status = cudaMalloc(&workspace, kWorkspaceBytes);
    if (status != cudaSuccess) {
      cublasLtDestroy(handle);
      fail_cuda(status, "cudaMalloc of the cuBLASLt workspace", __FILE__, __LINE__);
    }
  }
  ~Impl() {
    plans.clear();
    cudaFree(workspace);
    cublasLtDestroy(handle);
  }

  // A matrix layout, strided-batched when the product is a batch.
  void make_layout(const PlanKey& key, cublasLtMatrixLayout_t* layout, cudaDataType_t type, int rows, int cols,
                   int64_t ld, int64_t stride) {
    EMIX_CUBLASLT(&key, cublasLtMatrixLayoutCreate, layout, type, rows, cols, ld);
    if (key.gemm.batch == 1) return;
    const int32_t batch = key.gemm.batch;
    EMIX_CUBLASLT(&key, cublasLtMatrixLayoutSetAttribute, *layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
                  sizeof(batch));
    EMIX_CUBLASLT(&key, cublasLtMatrixLayoutSetAttribute, *layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                  sizeof(stride));
  }

  // Builds the plan; null where the epilogue is fused (GELU) and no algorithm
  // supports it. bias and aux are the pointers the heuristic judges alignment by.
  std::unique_ptr<Plan> make_plan(const PlanKey& key, const void* bias, const void* aux) {
    const Gemm& g = key.gemm;
    auto plan = std::make_unique<Plan>();
    plan->beta = g.beta;
    EMIX_CUBLASLT(&key, cublasLtMatmulDescCreate, &plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(g.op_a));
    set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(g.op_b));
    set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(key.epilogue));
    // Bias and GELU input default to D's type (bf16).
    if (uses_bias(key.epilogue)) set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (uses_aux(key.epilogue)) {
      set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
      set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<int64_t>(g.m));
    }
    make_layout(key, &plan->layout_a, CUDA_R_16BF, g.rows_a(), g.cols_a(), g.lda, g.stride_a);
    make_layout(key, &plan->layout_b, CUDA_R_16BF, g.rows_b(), g.cols_b(), g.ldb, g.stride_b);
    make_layout(key, &plan->layout_d, g.type_d, g.m, g.n, g.ldd, g.stride_d);

    cublasLtMatmulPreference_t raw_preference = nullptr;
    EMIX_CUBLASLT(&key, cublasLtMatmulPreferenceCreate, &raw_preference);
    const std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, decltype(&cublasLtMatmulPreferenceDestroy)> preference(
        raw_preference, &cublasLtMatmulPreferenceDestroy);
    const auto set_preference = [&](cublasLtMatmulPreferenceAttributes_t attribute, auto value) {
      EMIX_CUBLASLT(&key, cublasLtMatmulPreferenceSetAttribute, preference.get(), attribute, &value, sizeof(value));
    };
    set_preference(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(kWorkspaceBytes));
    set_preference(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t{1} << key.align_a);
    set_preference(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t{1} << key.align_b);
    set_preference(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t{1} << key.align_d);
    set_preference(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t{1} << key.align_d);

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->layout_a, plan->layout_b, plan->layout_d,
                                       plan->layout_d, preference.get(), 1, &result, &found);
    const bool fused_gelu = uses_aux(key.epilogue);
    if (fused_gelu && (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0))) {
      return nullptr;
    }
    check_cublas(status, "cublasLtMatmulAlgoGetHeuristic", &key);
    if (found == 0) fail("cuBLASLt: cublasLtMatmulAlgoGetHeuristic found no algorithm for {}", describe(key));
    plan->algo = result.algo;
    return plan;
  }

  // D = op(A)·op(B) (+ beta·D) with the given epilogue. Returns false, having
  // done nothing, when the epilogue is a fused GELU that no algorithm offers.
  bool run_gemm(Product product, const Gemm& g, cublasLtEpilogue_t epilogue, const bf16* a, const bf16* b, void* d,
                const bf16* bias, const void* aux, cudaStream_t stream) {
    const auto stride_bytes = [&](int64_t stride, size_t element) { return stride * static_cast<int64_t>(element); };
    const PlanKey key{product,
                      g,
                      epilogue,
                      alignment_log2(a, stride_bytes(g.stride_a, sizeof(bf16))),
                      alignment_log2(b, stride_bytes(g.stride_b, sizeof(bf16))),
                      alignment_log2(d, stride_bytes(g.stride_d, element_bytes(g.type_d))),
                      uses_bias(epilogue) ? alignment_log2(bias) : uint8_t{0},
                      uses_aux(epilogue) ? alignment_log2(aux) : uint8_t{0}};
    auto found = plans.find(key);
    if (found == plans.end()) found = plans.emplace(key, make_plan(key, bias, aux)).first;
    Plan* plan = found->second.get();
    if (plan == nullptr) return false;
    if (uses_bias(epilogue)) set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (uses_aux(epilogue)) set_attribute(key, plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
    const float alpha = 1.0f;
    EMIX_CUBLASLT(&key, cublasLtMatmul, handle, plan->desc, &alpha, a, plan->layout_a, b, plan->layout_b, &plan->beta, d,
                  plan->layout_d, d, plan->layout_d, &plan->algo, workspace, kWorkspaceBytes, stream);
    return true;
  }

  // A linear layer's product (see run_gemm).
  bool run(Product product, cublasLtEpilogue_t epilogue, int N, int IC, int OC, const bf16* a, const bf16* b, bf16* d,
           const bf16* bias, const void* aux, cudaStream_t stream) {
    return run_gemm(product, linear_gemm(product, N, IC, OC), epilogue, a, b, d, bias, aux, stream);
  }
};

Matmul::Matmul() : impl_(std::make_unique<Impl>()) {}
Matmul::~Matmul() = default;

void Matmul::forward(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int N, int IC, int OC,
                     bf16* pre_gelu, cudaStream_t stream) {
  const cublasLtEpilogue_t plain = bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (pre_gelu == nullptr) {
    impl_->run(Product::forward, plain, N, IC, OC, weight, inp, out, bias, nullptr, stream);
    return;
  }
  const cublasLtEpilogue_t fused = bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  if (OC % 8 == 0 && impl_->run(Product::forward, fused, N, IC, OC, weight, inp, out, bias, pre_gelu, stream)) return;
  impl_->run(Product::forward, plain, N, IC, OC, weight, inp, pre_gelu, bias, nullptr, stream);
  gelu_forward(out, pre_gelu, static_cast<size_t>(N) * OC, stream);
}

void Matmul::backward(bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout, const bf16* inp, const bf16* weight,
                      int N, int IC, int OC, const bf16* pre_gelu, cudaStream_t stream) {
  const bool fused_gelu = pre_gelu != nullptr && IC % 8 == 0 &&
                          impl_->run(Product::backward_data, CUBLASLT_EPILOGUE_DGELU, N, IC, OC, weight, dout, dinp,
                                     nullptr, pre_gelu, stream);
  if (!fused_gelu) {
    impl_->run(Product::backward_data, CUBLASLT_EPILOGUE_DEFAULT, N, IC, OC, weight, dout, dinp, nullptr, nullptr,
               stream);
    if (pre_gelu != nullptr) gelu_backward(dinp, pre_gelu, dinp, static_cast<size_t>(N) * IC, stream);
  }
  impl_->run(Product::backward_weight, CUBLASLT_EPILOGUE_DEFAULT, N, IC, OC, inp, dout, dweight, nullptr, nullptr,
             stream);
  if (dbias != nullptr) {
    float* scratch = impl_->bias_scratch.get(bias_grad_scratch_floats(N, OC), stream);
    bias_grad_accumulate(dbias, scratch, dout, N, OC, stream);
  }
}

void Matmul::batched(const Batched& p, const bf16* a, const bf16* b, float* c, cudaStream_t stream) {
  const Gemm g{p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
               p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
               p.m,
               p.n,
               p.k,
               p.lda,
               p.ldb,
               p.ldc,
               CUDA_R_32F,
               0.0f,
               p.batch,
               p.stride_a,
               p.stride_b,
               p.stride_c};
  impl_->run_gemm(Product::batched, g, CUBLASLT_EPILOGUE_DEFAULT, a, b, c, nullptr, nullptr, stream);
}

}  // namespace emix::cuda
