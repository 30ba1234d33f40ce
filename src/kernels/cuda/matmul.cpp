// Linear layers through cuBLASLt (interface: matmul.cuh). bf16 A, B, C and D,
// fp32 accumulation (CUBLAS_COMPUTE_32F) and fp32 alpha/beta.
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
// Descriptors, layouts and the heuristic's algorithm are built once per
// (product, N, IC, OC, epilogue, operand alignments) and kept, so a
// steady-state call sets the epilogue pointers and launches. The workspace and
// the bias-gradient scratch are shared by all calls: calls on one Matmul must
// be ordered on one stream.
#include "kernels/cuda/matmul.cuh"

#include <cublasLt.h>

#include <bit>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/error.hpp"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/matmul_bias_grad.cuh"

namespace emix::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

enum class Product : uint8_t { forward, backward_data, backward_weight };

const char* product_name(Product product) {
  switch (product) {
    case Product::forward: return "forward out = inp·Wᵀ";
    case Product::backward_data: return "backward dinp = dout·W";
    case Product::backward_weight: return "backward dweight += doutᵀ·inp";
  }
  return "?";
}

// Everything a cached plan depends on. Alignments are log2 of the largest
// power of two (up to 256 bytes) dividing each pointer: the heuristic picks
// algorithms for the alignment it is told, so a plan is reused only for
// pointers aligned at least as well.
struct PlanKey {
  Product product;
  int N, IC, OC;
  cublasLtEpilogue_t epilogue;
  uint8_t align_a, align_b, align_d, align_bias, align_aux;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    uint64_t h = static_cast<uint64_t>(key.product);
    for (uint64_t part : {uint64_t(key.N), uint64_t(key.IC), uint64_t(key.OC), uint64_t(key.epilogue),
                          uint64_t(key.align_a) | uint64_t(key.align_b) << 8 | uint64_t(key.align_d) << 16 |
                              uint64_t(key.align_bias) << 24 | uint64_t(key.align_aux) << 32}) {
      h = (h ^ part) * 0x100000001b3ull;  // FNV-1a style mixing
    }
    return static_cast<size_t>(h);
  }
};

uint8_t alignment_log2(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  return static_cast<uint8_t>(address == 0 ? 8 : std::min(std::countr_zero(address), 8));
}

// The product as cuBLASLt sees it (see the file comment).
struct Gemm {
  cublasOperation_t op_a, op_b;
  int m, n, k;
  int rows_a, cols_a, rows_b, cols_b;  // as stored, column-major, ld = rows
  float beta;
};

Gemm gemm_for(Product product, int N, int IC, int OC) {
  switch (product) {
    case Product::forward: return {CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, IC, OC, IC, N, 0.0f};
    case Product::backward_data: return {CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, IC, OC, OC, N, 0.0f};
    case Product::backward_weight: return {CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, IC, N, OC, N, 1.0f};
  }
  fail("unknown matmul product");
}

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
  const Gemm g = gemm_for(key.product, key.N, key.IC, key.OC);
  return fmt::format("Matmul {} with N={}, IC={}, OC={} (GEMM m={} n={} k={}, epilogue: {})", product_name(key.product),
                     key.N, key.IC, key.OC, g.m, g.n, g.k, epilogue_name(key.epilogue));
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
  float* bias_scratch = nullptr;
  size_t bias_scratch_floats = 0;
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
    cudaFree(bias_scratch);
    cudaFree(workspace);
    cublasLtDestroy(handle);
  }

  // Builds the plan; null where the epilogue is fused (GELU) and no algorithm
  // supports it. bias and aux are the pointers the heuristic judges alignment by.
  std::unique_ptr<Plan> make_plan(const PlanKey& key, const void* bias, const void* aux) {
    const Gemm g = gemm_for(key.product, key.N, key.IC, key.OC);
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
    EMIX_CUBLASLT(&key, cublasLtMatrixLayoutCreate, &plan->layout_a, CUDA_R_16BF, g.rows_a, g.cols_a, g.rows_a);
    EMIX_CUBLASLT(&key, cublasLtMatrixLayoutCreate, &plan->layout_b, CUDA_R_16BF, g.rows_b, g.cols_b, g.rows_b);
    EMIX_CUBLASLT(&key, cublasLtMatrixLayoutCreate, &plan->layout_d, CUDA_R_16BF, g.m, g.n, g.m);

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
  bool run(Product product, cublasLtEpilogue_t epilogue, int N, int IC, int OC, const bf16* a, const bf16* b, bf16* d,
           const bf16* bias, const void* aux, cudaStream_t stream) {
    const PlanKey key{product,
                      N,
                      IC,
                      OC,
                      epilogue,
                      alignment_log2(a),
                      alignment_log2(b),
                      alignment_log2(d),
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

  float* scratch_for_bias_grad(int N, int OC, cudaStream_t stream) {
    const size_t needed = bias_grad_scratch_floats(N, OC);
    if (needed > bias_scratch_floats) {
      // Earlier kernels on the stream may still read the old buffer.
      EMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
      EMIX_CUDA_CHECK(cudaFree(bias_scratch));
      bias_scratch = nullptr;
      bias_scratch_floats = 0;
      EMIX_CUDA_CHECK(cudaMalloc(&bias_scratch, needed * sizeof(float)));
      bias_scratch_floats = needed;
    }
    return bias_scratch;
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
  if (dbias != nullptr) bias_grad_accumulate(dbias, impl_->scratch_for_bias_grad(N, OC, stream), dout, N, OC, stream);
}

}  // namespace emix::cuda
