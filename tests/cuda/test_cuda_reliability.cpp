// The trainer's fault scenarios (tests/reliability_scenarios.hpp) on the GPU
// backend: non-finite and outlier steps skipped before they reach the
// device's optimizer state, too many skips stopping with a checkpoint, a
// failed save keeping the previous checkpoint, a stop request saving.
#include "cuda_test_support.hpp"
#include "reliability_scenarios.hpp"

namespace emix {
namespace {

TEST(CudaReliability, NonFiniteStepsAreSkippedAndTrainingGoesOn) {
  EMIX_REQUIRE_GPU();
  test::check_non_finite_steps_are_skipped("cuda");
}

TEST(CudaReliability, LossSpikesAreSkippedAsOutliers) {
  EMIX_REQUIRE_GPU();
  test::check_loss_spikes_are_skipped("cuda");
}

TEST(CudaReliability, GradientNormSpikesAreSkippedAsOutliersWhenTheLossIsNormal) {
  EMIX_REQUIRE_GPU();
  test::check_gradient_norm_spikes_are_skipped("cuda");
}

TEST(CudaReliability, TooManyConsecutiveSkipsStopAfterACheckpoint) {
  EMIX_REQUIRE_GPU();
  test::check_consecutive_skips_stop_after_a_checkpoint("cuda");
}

TEST(CudaReliability, AFailedSaveKeepsThePreviousCheckpoint) {
  EMIX_REQUIRE_GPU();
  test::check_a_failed_save_keeps_the_previous_checkpoint("cuda");
}

TEST(CudaReliability, AStopRequestSavesTheLastCompletedStep) {
  EMIX_REQUIRE_GPU();
  test::check_a_stop_request_saves_and_returns("cuda");
}

}  // namespace
}  // namespace emix
