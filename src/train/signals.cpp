#include "train/signals.hpp"

#include <atomic>
#include <csignal>

namespace emix {
namespace {
// sig_atomic_t-compatible lock-free atomic: the only thing a handler may touch.
std::atomic<int> pending_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGUSR1};

extern "C" void on_stop_signal(int signal) {
  pending_signal.store(signal);
  // The next stop signal, of any of the three kinds (a Ctrl-C after the
  // scheduler's SIGTERM), terminates. signal() is async-signal-safe.
  for (int stop : kStopSignals) std::signal(stop, SIG_DFL);
}
}  // namespace

void install_stop_signal_handlers() {
  for (int stop : kStopSignals) std::signal(stop, on_stop_signal);
}

bool stop_requested() { return pending_signal.load() != 0; }
int stop_signal() { return pending_signal.load(); }
void request_stop() { pending_signal.store(-1); }
void clear_stop_request() { pending_signal.store(0); }

}  // namespace emix
