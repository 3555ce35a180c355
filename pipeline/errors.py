"""One error type for everything the toolchain refuses, so entry points can print it cleanly, and
the translation of the filesystem errors a rented host really sees (read-only mount, permissions,
full disk, quota) into it."""

import contextlib
import errno
from typing import Iterator, Optional


class ToolchainError(Exception):
    """A problem the user can fix: `problem` says what is wrong (with the value), `fix` what to do.

    Entry points (tasks.py, `python -m pipeline.<stage>`) print `str(err)` and exit non-zero
    instead of showing a traceback.
    """

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}".strip() if fix else problem)


# errno -> (what happened, what to do); the path is added from the OSError.
_FILESYSTEM_FIXES = {
    errno.EROFS: ("is on a read-only filesystem",
                  "Build into a writable folder (--out DIR), or remount that filesystem read-write."),
    errno.EACCES: ("is not accessible (permission denied)",
                   "Fix the folder's permissions or ownership (`ls -ld`), or pass another folder."),
    errno.EPERM: ("is not accessible (operation not permitted)",
                  "Fix the folder's permissions or ownership (`ls -ld`), or pass another folder."),
    errno.ENOSPC: ("cannot be written: no space left on device",
                   "Free space on that disk (`df -h`), or build into a folder on a bigger disk (--out DIR); "
                   "then rerun: finished stages are kept."),
    errno.EDQUOT: ("cannot be written: disk quota exceeded",
                   "Free space within your quota (`quota -s`), or build into another folder (--out DIR); "
                   "then rerun: finished stages are kept."),
}


def filesystem_error(err: OSError, doing: str = "", where: str = "") -> Optional[ToolchainError]:
    """A ToolchainError naming the path and the fix for a read-only, permission, full-disk or quota
    OSError; None for any other error (those stay bugs with tracebacks). `where`: the folder to
    name when the error has no file name (a write to an open file)."""
    known = _FILESYSTEM_FIXES.get(err.errno)
    if known is None:
        return None
    what, fix = known
    path = err.filename or (f"a file under {where}" if where else "a file")
    if err.filename2:
        path = f"{path} (-> {err.filename2})"
    return ToolchainError(f"{doing + ': ' if doing else ''}{path} {what}.", fix)


@contextlib.contextmanager
def filesystem_errors(doing: str = "", where: str = "") -> Iterator[None]:
    """Turn the known filesystem OSErrors raised in the block into ToolchainErrors."""
    try:
        yield
    except OSError as err:
        translated = filesystem_error(err, doing, str(where))
        if translated is None:
            raise
        raise translated from None


def run_cli(action) -> int:
    """Run a stage CLI's `action()`; return its process exit code.

    0 on success; a ToolchainError prints 'error: <problem> <fix>' to stderr and gives 2;
    Ctrl-C gives 130; a read-only, permission, full-disk or quota error is a ToolchainError too. Every `python -m ...` entry point (what the containers run) goes through
    here, so failures look and exit the same everywhere.
    """
    import sys

    try:
        with filesystem_errors():
            action()
    except ToolchainError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
