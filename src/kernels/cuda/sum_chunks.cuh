#pragma once
// The sum at the end of the gradients' reduce-scatter (DeviceCollectives):
// each rank has received every rank's bf16 values of its chunk, and adds
// them in fp32, in rank order, rounding once to the nearest bf16. The host
// communicator adds floats in the same order (communicator.hpp), so the
// bits depend on the number of ranks only.
#include "kernels/cuda/common.cuh"

namespace emix::cuda {

// out[i] = bf16_rn(chunks[0·length + i] + chunks[1·length + i] + ... ), the
// additions in fp32 from rank 0 up; chunks holds world × length values.
// out may not overlap chunks.
void sum_bf16_chunks(bf16* out, const bf16* chunks, int world, size_t length, cudaStream_t stream);

}  // namespace emix::cuda
