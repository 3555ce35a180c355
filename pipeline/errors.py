"""One error type for everything the toolchain refuses, so entry points can print it cleanly."""


class ToolchainError(Exception):
    """A problem the user can fix: `problem` says what is wrong (with the value), `fix` what to do.

    Entry points (tasks.py, `python -m pipeline.<stage>`) print `str(err)` and exit non-zero
    instead of showing a traceback.
    """

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}".strip() if fix else problem)


def run_cli(action) -> int:
    """Run a stage CLI's `action()`; return its process exit code.

    0 on success; a ToolchainError prints 'error: <problem> <fix>' to stderr and gives 2;
    Ctrl-C gives 130. Every `python -m ...` entry point (what the containers run) goes through
    here, so failures look and exit the same everywhere.
    """
    import sys

    try:
        action()
    except ToolchainError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
