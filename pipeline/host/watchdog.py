"""Stall watchdog: stop a stage that has made no progress for longer than its limit.

A hung DFC (the field report: an optimizer that never returns on an L4) looks exactly like a slow
one, except that it stops printing. The launcher feeds every chunk of stage output to a
`StallWatchdog`; when the silence exceeds the stage's limit the watchdog calls `on_stall` once
(the launcher then stops the process or container) and the launcher reports the stall.

Output is not the only progress: a TensorFlow 2.12 image on an H100 JIT-compiles its kernels for
minutes without printing a line, while the CUDA JIT cache directory grows. So the watchdog can
also poll a size (`progress`, e.g. `directory_size` of the cache); growth counts like output.

Limits are per stage kind and come from the seed conversion log
(../shared/reference/seed-dfc-conversion-log.txt); every limit is overridable per StageCommand.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
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
# How often it measures the progress source (a directory walk: a few hundred cache files).
PROGRESS_POLL_S = 1.0


def directory_size(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it does not exist); never raises."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # a file replaced while we looked
                continue
    return total


def default_stall_limit(stage_name: str) -> float:
    """Limit for a stage named like "encoder-optimize" or "export": matched on its last word."""
    kind = stage_name.rsplit("-", 1)[-1]
    return STALL_LIMITS_S.get(kind, DEFAULT_STALL_LIMIT_S)


class StallWatchdog:
    """Calls `on_stall()` once if neither `feed()` is called nor `progress()` grows for `limit_s`
    seconds, or when the run exceeds `deadline_s` in total (when given).

    progress: returns a number that grows while the stage works silently (a cache directory's
    size); polled every PROGRESS_POLL_S. on_growth: called once, the first time it grows.
    Use as a context manager around the stage; `stalled` / `timed_out` / `grew` say what happened.
    """

    def __init__(
        self,
        limit_s: float,
        on_stall: Callable[[], None],
        *,
        deadline_s: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
        progress: Optional[Callable[[], int]] = None,
        on_growth: Optional[Callable[[], None]] = None,
    ):
        if limit_s <= 0:
            raise ValueError(f"stall limit must be positive, got {limit_s}")
        self.limit_s = float(limit_s)
        self.deadline_s = deadline_s
        self._on_stall = on_stall
        self._clock = clock
        self._progress = progress
        self._on_growth = on_growth
        self._last_size = progress() if progress else 0
        self._next_measure = 0.0
        self._started = self._last_output = clock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self.stalled = False  # no output and no growth for longer than limit_s
        self.timed_out = False  # ran longer than deadline_s in total
        self.grew = False  # the progress source grew at least once

    def feed(self) -> None:
        """Record that the stage printed something."""
        self._last_output = self._clock()

    @property
    def fired(self) -> bool:
        return self.stalled or self.timed_out

    @property
    def silent_for_s(self) -> float:
        return self._clock() - self._last_output

    def _measure(self, now: float) -> None:
        if self._progress is None or now < self._next_measure:
            return
        self._next_measure = now + PROGRESS_POLL_S
        size = self._progress()
        if size > self._last_size:
            self._last_output = now
            if not self.grew and self._on_growth is not None:
                self._on_growth()
            self.grew = True
        self._last_size = size

    def _watch(self) -> None:
        while not self._done.wait(_POLL_S):
            now = self._clock()
            self._measure(now)
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
