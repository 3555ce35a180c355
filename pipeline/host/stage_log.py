"""One stage's output: streamed to the console and the stage's log file, with the tail kept for
error messages ("last log lines" + the log path)."""

from __future__ import annotations

import codecs
import contextlib
import collections
import sys
from pathlib import Path
from typing import Optional, TextIO

TAIL_LINES = 30  # enough to show a DFC traceback's last frames and message


class StageLog:
    """Tee of a stage's byte stream. Use as a context manager; `write(chunk)` takes bytes or str."""

    def __init__(self, path: Path, console: Optional[TextIO] = None, tail_lines: int = TAIL_LINES):
        self.path = Path(path)
        self.console = sys.stdout if console is None else console
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._partial = ""
        self._file: Optional[TextIO] = None

    def __enter__(self) -> "StageLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self.write(self._decoder.decode(b"", final=True))
        if self._partial:
            self._tail.append(self._partial)
            self._partial = ""
        if self._file:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def write(self, chunk) -> None:
        text = self._decoder.decode(chunk) if isinstance(chunk, (bytes, bytearray)) else chunk
        if not text:
            return
        if self._file:
            try:
                self._file.write(text)
                self._file.flush()
            except OSError as err:  # a full or read-only disk: keep pumping (the stage must not block)
                self._file = None
                self._tail.append(f"[whisper-hailo] the log {self.path} could not be written: {err}")
        self.console.write(text)
        self.console.flush()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            # a progress bar redraws with "\r": keep what a terminal would show
            self._tail.append(line.rsplit("\r", 1)[-1] if line.strip("\r") else line)

    def note(self, message: str) -> None:
        """A line from the launcher itself (not the stage), marked so it is not mistaken for one."""
        self.write(f"[whisper-hailo] {message}\n")

    def tail(self) -> str:
        lines = list(self._tail) + ([self._partial] if self._partial else [])
        return "\n".join(lines)
