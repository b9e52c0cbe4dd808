"""How a stage of the child says what went wrong, for the result's ``error``."""

from __future__ import annotations


class SetupFailure(Exception):
    """A stage could not do its step; ``detail`` says which step, ``errno`` why."""

    def __init__(self, detail: str, errno: int = 0, exit_code: int = 125) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errno = errno
        self.exit_code = exit_code


def failed(detail: str, exc: OSError) -> SetupFailure:
    reason = exc.strerror or str(exc)
    return SetupFailure(f"{detail}: {reason}", exc.errno or 0)
