"""Signals that stop a run cleanly: SIGINT (Ctrl-C), SIGTERM (schedulers, `kill`) and SIGUSR1 (SLURM's
pre-emption warning with `--signal=USR1@90`). The handler only notes the signal: the loop finishes the
step under way, saves a whole checkpoint and exits with the resume command. A second signal stops at
once (KeyboardInterrupt); checkpoints are renamed into place whole, so the last one is kept either way.
A different signal after the first is not a second request: `accelerate launch` (torchrun) answers a
Ctrl-C by sending SIGTERM to its workers, which are already finishing their step (it waits 30 s, then
kills them)."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupts:
    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received == signum:
            raise KeyboardInterrupt
        if self.received is not None:
            return
        self.received = signum

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._old = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
