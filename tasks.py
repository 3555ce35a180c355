"""invoke tasks: the user-facing commands. `invoke --list` shows them; `invoke <task> --help` explains flags.

Each task parses its flags, calls one function in `pipeline/` (or `calib/`), and turns a known
`ToolchainError` into a clear message and a non-zero exit. No logic lives here.
"""

from __future__ import annotations

import functools
import sys

from invoke import Exit, task

from pipeline.errors import ToolchainError


def _friendly_errors(fn):
    """Show ToolchainError as 'error: <problem> <fix>' and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolchainError as err:
            raise Exit(f"error: {err}", code=2) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


# --- foundation: GPU gate and doctor (pipeline/gpu.py, pipeline/doctor.py) -------------------

# --- export (pipeline/export.py) --------------------------------------------------------------

# --- calibration (calib/) ----------------------------------------------------------------------

# --- DFC stages (pipeline/dfc.py, pipeline/optimize.py, pipeline/compile.py) -------------------

# --- containers (pipeline/containers.py) -------------------------------------------------------

# --- end-to-end build (pipeline/build.py) ------------------------------------------------------
