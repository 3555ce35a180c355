"""Stall watchdog: stop a stage that has printed nothing for longer than its limit.

A hung DFC (the field report: an optimizer that never returns on an L4) looks exactly like a slow
one, except that it stops printing. The launcher feeds every chunk of stage output to a
`StallWatchdog`; when the silence exceeds the stage's limit the watchdog calls `on_stall` once
(the launcher then stops the process or container) and the launcher reports the stall.

Limits are per stage kind and come from the seed conversion log
(../shared/reference/seed-dfc-conversion-log.txt); every limit is overridable per StageCommand.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping, Optional

MINUTE = 60.0

# parse: ONNX translation prints "completion time: 00:00:01.00"; even base takes seconds.
# 10 minutes of silence is far outside anything a healthy parse does.
PARSE_STALL_LIMIT_S = 10 * MINUTE
# optimize: the longest single algorithm in the seed log is Quantization-Aware Fine-Tuning
# (13m 27s), Statistics Collector 9m 59s; both print progress bars while they work, but a
# tqdm bar on a pipe may only flush on completion, so allow a whole algorithm to be silent.
OPTIMIZE_STALL_LIMIT_S = 30 * MINUTE
# compile: "Successfully built optimization options - 12m 31s" came after silence, the partition
# search printed nothing for up to 4m 37s per attempt, and the mapper announces
# "time per context: 59m 59s", i.e. one context may be searched silently for an hour.
COMPILE_STALL_LIMIT_S = 75 * MINUTE
# export: a torch -> ONNX export of tiny/base is well under a minute; a first model download
# through Hugging Face can sit quietly on a slow link.
EXPORT_STALL_LIMIT_S = 20 * MINUTE
# calib: espeak-ng + feature extraction of a few hundred clips, progress shown per batch.
CALIB_STALL_LIMIT_S = 20 * MINUTE
# anything else (tests, probes, future stages)
DEFAULT_STALL_LIMIT_S = 30 * MINUTE

STALL_LIMITS_S: Mapping[str, float] = {
    "parse": PARSE_STALL_LIMIT_S,
    "optimize": OPTIMIZE_STALL_LIMIT_S,
    "compile": COMPILE_STALL_LIMIT_S,
    "export": EXPORT_STALL_LIMIT_S,
    "calib": CALIB_STALL_LIMIT_S,
}

# After a stop request (watchdog, Ctrl-C), how long a stage process or container gets to exit on
# SIGTERM before SIGKILL; an int because docker-py's container.stop() takes whole seconds.
STOP_GRACE_S = 10

# How often the watchdog looks at the clock; small enough that tests with 1-2 s limits are quick.
_POLL_S = 0.2


def default_stall_limit(stage_name: str) -> float:
    """Limit for a stage named like "encoder-optimize" or "export": matched on its last word."""
    kind = stage_name.rsplit("-", 1)[-1]
    return STALL_LIMITS_S.get(kind, DEFAULT_STALL_LIMIT_S)


class StallWatchdog:
    """Calls `on_stall()` once if `feed()` is not called for `limit_s` seconds (and `deadline_s`
    total, when given, is not exceeded).

    Use as a context manager around the stage; `stalled` / `timed_out` say what happened.
    """

    def __init__(
        self,
        limit_s: float,
        on_stall: Callable[[], None],
        *,
        deadline_s: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if limit_s <= 0:
            raise ValueError(f"stall limit must be positive, got {limit_s}")
        self.limit_s = float(limit_s)
        self.deadline_s = deadline_s
        self._on_stall = on_stall
        self._clock = clock
        self._started = self._last_output = clock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self.stalled = False  # silent for longer than limit_s
        self.timed_out = False  # ran longer than deadline_s in total

    def feed(self) -> None:
        """Record that the stage printed something."""
        self._last_output = self._clock()

    @property
    def fired(self) -> bool:
        return self.stalled or self.timed_out

    @property
    def silent_for_s(self) -> float:
        return self._clock() - self._last_output

    def _watch(self) -> None:
        while not self._done.wait(_POLL_S):
            now = self._clock()
            if self.deadline_s is not None and now - self._started > self.deadline_s:
                self.timed_out = True
            elif now - self._last_output > self.limit_s:
                self.stalled = True
            if self.fired:
                self._on_stall()
                return

    def __enter__(self) -> "StallWatchdog":
        self._started = self._last_output = self._clock()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
