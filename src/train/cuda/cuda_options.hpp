#pragma once
// The GPU model's options from the config's "cuda" section (which the config
// has already validated).
#include "config/config.hpp"
#include "model/cuda/gpt2_cuda.hpp"

namespace emix {

cuda::Gpt2CudaOptions gpt2_cuda_options(const CudaConfig& config);

}  // namespace emix
