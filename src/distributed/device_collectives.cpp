#include "distributed/device_collectives.hpp"

#include "core/error.hpp"

namespace emix {
namespace {

HostStagedCollectivesFactory& host_staged_factory() {
  static HostStagedCollectivesFactory factory = nullptr;
  return factory;
}

}  // namespace

bool register_host_staged_collectives(HostStagedCollectivesFactory factory) {
  host_staged_factory() = factory;
  return true;
}

std::unique_ptr<DeviceCollectives> make_host_staged_collectives(Communicator& comm) {
  if (host_staged_factory() == nullptr) fail("collectives on GPU buffers need a build with the CUDA backend");
  return host_staged_factory()(comm);
}

}  // namespace emix
