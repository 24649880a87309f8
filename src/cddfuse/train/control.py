"""When a run stops early: stop requests (SIGTERM, Ctrl-C) and the ``--max-time`` budget.

Both end the run the same way, cleanly at the next step with a checkpoint (the trainer asks
:meth:`TimeBudget.short` and :attr:`StopFlag.requested` before every step and before each
validation, and all ranks agree on the answer).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["StopFlag", "TimeBudget", "BudgetExceeded"]


class StopFlag:
    """SIGTERM / first Ctrl-C ask for a clean stop at the next step (with a checkpoint); a second
    Ctrl-C aborts at once (``KeyboardInterrupt``). Handlers are only installed in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\ncddfuse train: {signal.Signals(signum).name} received; stopping after this step "
              "with a checkpoint (Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class BudgetExceeded(Exception):
    """Raised inside a step guarded by :meth:`TimeBudget.first_step_guard` when the budget runs out."""


class TimeBudget:
    """The wall-clock budget of this session (``max_time`` seconds from ``start_time``, a
    ``time.monotonic()`` value), with running estimates of what the next step, a checkpoint and a
    validation take, so that the run stops while it can still save.

    Args:
        start_time: when the session started (the command's start); ``None``: now.
        max_time: budget in seconds; ``None``: no limit (:meth:`short` is then always false).
        checkpoint_s: first estimate of a checkpoint's duration (replaced once one is written).
    """

    def __init__(self, start_time: float | None, max_time: float | None, checkpoint_s: float) -> None:
        self.start_time = time.monotonic() if start_time is None else start_time
        self.max_time = max_time
        self.step_s: float | None = None  # moving average of a step's duration
        self.checkpoint_s = checkpoint_s
        self.last_checkpoint_s = 0.0  # the last checkpoint's duration (its file alone)
        self.validation_s = 0.0  # last validation's duration
        self.exit_s = 1.0  # what the process takes to end after the last checkpoint (see note_startup)

    def session_time(self) -> float:
        """Seconds since the session started."""
        return time.monotonic() - self.start_time

    def note_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.7 * self.step_s + 0.3 * seconds

    def note_checkpoint(self, seconds: float) -> None:
        self.last_checkpoint_s = seconds
        self.checkpoint_s = max(0.5 * self.checkpoint_s, seconds)

    def note_startup(self, seconds: float) -> None:
        """The session took ``seconds`` from its start to its first step (interpreter, imports, data,
        model). Ending the process (freeing the model, the optimizer and the threads) is slow where
        starting was -- on a busy machine both take several times longer -- so a fifth of it (at least
        1 s) is kept for the exit."""
        self.exit_s = max(1.0, 0.2 * seconds)

    def short(self, extra_s: float = 0.0) -> bool:
        """Whether the time left is too short for one more step (plus ``extra_s``) and a checkpoint."""
        if self.max_time is None:
            return False
        remaining = self.max_time - self.session_time()
        need = 1.25 * (self.step_s or 0.0) + 1.5 * self.checkpoint_s + extra_s + self.exit_s
        return remaining < need

    def guards_step(self, single_process: bool = True) -> bool:
        """Whether :meth:`first_step_guard` would watch the next step (see there)."""
        return (self.max_time is not None and self.step_s is None and single_process
                and threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"))

    def first_step_guard(self, single_process: bool = True) -> contextlib.AbstractContextManager[None]:
        """Stop a step whose duration is not known yet before the budget runs out.

        Until one step has been timed, :meth:`short` cannot know whether the next one fits: a budget
        smaller than the start-up plus the first step would otherwise be overrun by most of that step.
        While no step time is known, the step runs under a timer that raises :class:`BudgetExceeded`
        when only the time for a checkpoint and the exit is left (or at once when even that is gone); the
        caller then puts back the state from before the step and stops. Once a step has been timed, or
        without a budget, off the main thread, without ``setitimer`` or with several processes (every
        rank would have to agree), this does nothing.
        """
        if not self.guards_step(single_process):
            return contextlib.nullcontext()
        assert self.max_time is not None
        return self._guard(self.max_time - self.session_time() - 1.5 * self.checkpoint_s - self.exit_s)

    @staticmethod
    @contextlib.contextmanager
    def _guard(left: float) -> Iterator[None]:
        if left <= 0:
            raise BudgetExceeded
        armed = [True]

        def ring(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
            if armed[0]:
                raise BudgetExceeded

        old = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
            armed[0] = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
