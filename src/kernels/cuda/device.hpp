#pragma once
// What the CUDA runtime reports about the visible devices, for the startup
// log and for choosing a device. Built only when nvcc is found.
#include <string>
#include <vector>

namespace emix::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int multiprocessors = 0;
  size_t total_memory_bytes = 0;
};

// Every visible device; empty (never throws) when there is no driver or GPU,
// with the runtime's reason in `why_none`.
std::vector<DeviceInfo> list_devices(std::string* why_none = nullptr);
// The device this thread uses (cudaSetDevice: a rank's GPU under NCCL).
// Throws emix::Error where there is none.
DeviceInfo current_device();

// Makes the GPU of a rank with this local rank current: device local_rank,
// or device 0 where the node shows only one (a launcher that sets
// CUDA_VISIBLE_DEVICES per rank, or several ranks sharing one GPU through a
// host communicator). Throws emix::Error where the rank has no device.
void select_device_for_local_rank(int local_rank);

// The dense (not sparse) bf16 tensor-core peak in FLOP/s of a device, from
// the vendors' datasheets, matched by name (the runtime reports no such
// figure); 0 for a device not in the table. For MFU.
double dense_bf16_peak_flops(const std::string& device_name);

}  // namespace emix::cuda
