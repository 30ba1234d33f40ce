#pragma once
// `emix bench`: throughput figures for a config on one GPU, printed as a
// table (docs/benchmarks.md records them).
#include "config/config.hpp"

namespace emix {

// Times `steps` training steps of micro-batch training.batch_size × seq_len
// (after `warmup` untimed ones) on random tokens, then the optimizer step
// alone against a device-to-device copy of the same bytes, for AdamW and
// the config's optimizer. Prints ms/step, tokens/s, MFU, the time of each
// kernel group, memory in use and the optimizer's achieved bandwidth.
void run_cuda_benchmark(const Config& config, int warmup, int steps);

}  // namespace emix
