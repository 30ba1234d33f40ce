#pragma once
// SIGINT, SIGTERM and SIGUSR1 (the usual preemption warning of schedulers)
// request a graceful stop: the trainer finishes its step,
// writes a checkpoint and exits 0. A second signal (any of the three) kills
// the process the usual way, for when the save itself hangs.
namespace emix {

void install_stop_signal_handlers();
bool stop_requested();
int stop_signal();  // the signal that asked to stop, 0 if none
void request_stop();
void clear_stop_request();

}  // namespace emix
