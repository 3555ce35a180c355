"""A build owns its stage: SIGTERM (kill, timeout, a CI or scheduler cancel) and SIGHUP (a dropped
SSH session) stop it the way Ctrl-C does.

While `stop_on_signals()` is active, either signal raises `BuildStopped` in the main thread. It is a
BaseException, like KeyboardInterrupt, so it passes every `except Exception` and reaches the
launcher's cleanup (stop the stage's process group or container with a grace period, remove the
container) and the build lock's release; the entry point then exits with 128 + the signal number.

SIGKILL cannot be caught: for that case the native stage carries a parent-death signal
(`parent_death_signal`) and Docker containers carry their build's pid, so the next build stops
them before it takes the lock (`pipeline.host.docker_engine.stop_orphan_containers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from typing import Callable, Iterator, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_PR_SET_DEATHSIG = 1  # <linux/prctl.h>


class BuildStopped(BaseException):
    """The build received SIGTERM or SIGHUP; its stage has been (or is being) stopped."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise BuildStopped on SIGTERM/SIGHUP inside the block (main thread only; elsewhere a no-op).

    A second signal during the cleanup is ignored so the grace period and the removal finish.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise BuildStopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parent_death_signal(sig: int = signal.SIGKILL) -> Optional[Callable[[], None]]:
    """A Popen `preexec_fn` that makes the child get `sig` when this process dies (even by
    SIGKILL or the OOM killer), via prctl(PR_SET_DEATHSIG). None where prctl is unavailable.

    The signal reaches the stage process itself; its own workers are in its process group, which
    the launcher stops on every catchable exit.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_DEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec
