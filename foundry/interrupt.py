"""Stopping cleanly on SIGTERM, the signal a cluster scheduler (Slurm, Kubernetes, a spot-instance reclaim)
sends some seconds before it kills a job (torch-free).

    with StopOnSignal() as stop:          training: the loop asks `stop.requested` after each step, saves a
        ...                               checkpoint and raises Interrupted; a second SIGTERM kills at once
    with signals_interrupt():             the sweep: SIGTERM raises Interrupted where the process is, so
        run_sweep(...)                    the Ctrl-C path (stop the workers, exit, resume later) runs

`Interrupted` is a KeyboardInterrupt, so whatever already handles Ctrl-C (the sweep's worker pool, a trial
worker, the store's recorded_run) handles a SIGTERM the same way. Handlers are installed only in the main
thread (Python delivers signals there) and the previous handler is restored on exit.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_CODE = 128 + signal.SIGTERM   # the shell's convention for "ended by SIGTERM" (143)


class Interrupted(KeyboardInterrupt):
    """A run stopped on a signal; the message says where its state was saved and how to continue."""


class StopOnSignal:
    """Records a SIGTERM instead of dying; `requested` is the signal's name once one arrived. A second
    SIGTERM while the first is being handled falls back to the default action (the process ends), so an
    impatient scheduler is never blocked; checkpoints are atomic, so that loses only the step in flight."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals, self.requested, self._old = signals, None, {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.requested = signal.Signals(signum).name

    def install(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def __enter__(self) -> "StopOnSignal":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


@contextmanager
def signals_interrupt(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, SIGTERM raises Interrupted in the main thread (as Ctrl-C raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_it(signum, frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, raise_it) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
