"""How an invoke task ends on a known failure: one line naming the problem and its fix, no traceback."""

from __future__ import annotations

import functools

from invoke import Exit

from pipeline.errors import ToolchainError
from pipeline.host.stop_signals import BuildStopped


def friendly_errors(fn):
    """Show ToolchainError as 'error: <problem> <fix>' and exit 2, without a traceback; an interrupt
    exits 130, a stop signal with its own code after the stage was stopped."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolchainError as err:
            raise Exit(f"error: {err}", code=2) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except BuildStopped as stop:  # SIGTERM/SIGHUP: the stage was stopped and the lock released
            raise Exit(f"{stop}: the running stage was stopped; rerun to resume", code=stop.exit_code) from None

    return wrapper


def require_flags(**values) -> None:
    """Flags a task needs, kept optional in its signature so that `invoke <task> --help` is not taken
    as their value: a ToolchainError naming every one left out."""
    missing = [f"--{name.replace('_', '-')}" for name, value in values.items() if value is None]
    if missing:
        raise ToolchainError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required.",
                             "See `invoke <task> --help` for what each takes.")
