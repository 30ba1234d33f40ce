// libFuzzer target: see fuzz_checkpoint in fuzz_entries.hpp for the input format.
#include "fuzz_entries.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return emix::fuzz::fuzz_checkpoint(data, size);
}
