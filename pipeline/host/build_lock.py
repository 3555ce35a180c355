"""One build at a time per build directory: `build.lock` holds the owner's pid, host and start time.

Two builds writing the same HARs would corrupt each other's results, so the second one is refused
with the holder named. A lock left by a build that died (its pid no longer runs on this host) is
taken over with a warning; a lock from another host (a shared disk) is never judged stale, since
its pid means nothing here.

The lock file is written completely under a temporary name and then hard-linked to `build.lock`:
link() fails if the name exists, like O_EXCL, and a reader never sees a half-written lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from pipeline.errors import ToolchainError, filesystem_errors
from pipeline.files import temp_path_for

LOCK_NAME = "build.lock"


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started_at: str  # ISO 8601, UTC

    def to_json(self) -> dict:
        return {"pid": self.pid, "host": self.host, "started_at": self.started_at}

    @classmethod
    def current(cls) -> "LockHolder":
        return cls(os.getpid(), socket.gethostname(), datetime.now(timezone.utc).isoformat(timespec="seconds"))


def pid_is_running(pid: int) -> bool:
    """True when a process with `pid` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(lock_path: Path) -> Optional[LockHolder]:
    """The holder recorded in `lock_path`; None when the file is gone or not a lock we wrote."""
    try:
        data = json.loads(Path(lock_path).read_text())
        return LockHolder(int(data["pid"]), str(data["host"]), str(data["started_at"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


class BuildLock:
    """Context manager: `with BuildLock(build_dir, warn=print): ...` holds `<build_dir>/build.lock`.

    Raises ToolchainError naming the holder when another live build holds it.
    """

    def __init__(self, build_dir: Path, warn: Callable[[str], None] = lambda _msg: None,
                 is_running: Callable[[int], bool] = pid_is_running):
        self.path = Path(build_dir) / LOCK_NAME
        self._warn = warn
        self._is_running = is_running
        self.holder: Optional[LockHolder] = None

    def acquire(self) -> LockHolder:
        with filesystem_errors("Taking the build lock"):
            return self._acquire()

    def _acquire(self) -> LockHolder:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = LockHolder.current()
        for _attempt in range(3):
            if self._try_link(me):
                self.holder = me
                return me
            other = read_holder(self.path)
            if other is None:
                if self.path.exists():  # unreadable or foreign content: do not guess
                    raise ToolchainError(
                        f"{self.path} exists but is not a readable build lock.",
                        "If no build is running in this directory, delete that file and retry.",
                    )
                continue  # released between our link and our read: try again
            if other.host == me.host and not self._is_running(other.pid):
                self._warn(
                    f"Taking over a stale build lock: pid {other.pid} on {other.host} "
                    f"(started {other.started_at}) is no longer running."
                )
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            where = "this host" if other.host == me.host else f"host {other.host}"
            raise ToolchainError(
                f"Another build holds {self.path}: pid {other.pid} on {where}, started {other.started_at}.",
                "Wait for it to finish, stop it, or build into another --out directory. "
                + ("" if other.host == me.host else
                   "(It runs on another host, so its lock is never taken over automatically; delete "
                   "the file if you know that build is gone.)"),
            )
        raise ToolchainError(f"Could not take {self.path}: it kept changing hands.", "Retry the build.")

    def _try_link(self, me: LockHolder) -> bool:
        tmp = temp_path_for(self.path)
        tmp.write_text(json.dumps(me.to_json()) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:  # the holder's partial-file cleanup took our temp file: try again
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def release(self) -> None:
        # Only remove the lock if it is still ours (a user may have deleted and re-taken it).
        if self.holder is not None and read_holder(self.path) == self.holder:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.holder = None

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
