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
