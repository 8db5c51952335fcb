"""Stop cleanly on SIGTERM / SIGINT / SIGUSR1 (what SLURM sends before a job's time runs out)."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)


class PreemptionGuard:
    """While active, a stop signal is recorded instead of killing the process.

    The trainer checks ``requested`` after each step, writes ``last.pt`` and raises
    ``Preempted``. A second SIGINT (Ctrl-C twice) interrupts at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Preempted(Exception):
    """The run stopped on a signal after saving ``last.pt``; exit code 128 + signal number."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped on {name} after step {step}; saved {checkpoint}. "
            "Continue with the same command and resume=auto (or resume=<run_dir>)."
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
