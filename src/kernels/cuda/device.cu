#include "kernels/cuda/device.hpp"

#include <cuda_runtime.h>

#include "core/error.hpp"
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

std::vector<DeviceInfo> list_devices(std::string* why_none) {
  std::vector<DeviceInfo> devices;
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (why_none != nullptr) *why_none = cudaGetErrorString(status);
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    devices.push_back(DeviceInfo{i, prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem});
  }
  if (devices.empty() && why_none != nullptr) *why_none = "no CUDA device is visible";
  return devices;
}

DeviceInfo current_device() {
  int index = 0;
  EMIX_CUDA_CHECK(cudaGetDevice(&index));
  for (const DeviceInfo& device : list_devices()) {
    if (device.index == index) return device;
  }
  fail("CUDA device {} is current but not listed", index);
}

void select_device_for_local_rank(int local_rank) {
  int count = 0;
  EMIX_CUDA_CHECK(cudaGetDeviceCount(&count));
  const int device = count == 1 ? 0 : local_rank;
  if (device >= count) {
    fail("local rank {} on a node that shows {} GPUs: start one rank per GPU on each node", local_rank, count);
  }
  EMIX_CUDA_CHECK(cudaSetDevice(device));
}

double dense_bf16_peak_flops(const std::string& device_name) {
  struct Peak {
    const char* name_part;
    double flops;
  };
  // More specific names first: "H100 PCIe" before the SXM part's "H100".
  static const Peak peaks[] = {
      {"H100 PCIe", 756e12}, {"H100 NVL", 835e12}, {"H100", 989e12}, {"H200", 989e12},
      {"A100", 312e12},      {"L40S", 362e12},     {"B200", 2250e12},
  };
  for (const Peak& peak : peaks) {
    if (device_name.find(peak.name_part) != std::string::npos) return peak.flops;
  }
  return 0.0;
}

}  // namespace emix::cuda
