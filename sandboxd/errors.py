"""Error types that carry a clear, one-line message to the user.

Anything a user or API client can get wrong raises a subclass of ``SandboxdInputError``;
the CLI prints ``str(error)`` on one line and exits 2, the service answers 4xx with it.
"""

from __future__ import annotations


class SandboxdInputError(Exception):
    """Bad input from a user: a policy, a profile, a flag or a request."""


class PolicyError(SandboxdInputError):
    """A policy file or override is malformed; names the file, the key and the reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


class LayerUnavailable(Exception):
    """A layer the policy requires cannot be applied on this host (fail closed)."""

    def __init__(self, layer: str, reason: str) -> None:
        self.layer = layer
        self.reason = reason
        super().__init__(f"{layer}: {reason}")
