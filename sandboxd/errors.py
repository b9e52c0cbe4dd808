"""Error types that carry a clear, one-line message to the user.

Anything a user or API client can get wrong raises a subclass of ``SandboxdInputError``;
the CLI prints ``str(error)`` on one line and exits 2, the service answers 4xx with it.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` with every character that is not printable escaped the way ``repr`` does.

    Line breaks (``\\n``, ``\\r``, ``\\x85``, ``\\u2028``...), other control and format
    characters and lone surrogates become ``\\n``, ``\\x1c``, ``\\u2028``, ``\\udcff``: the
    message stays on one line and nothing the user wrote is silently dropped. Printable text,
    spaces and backslashes are left as they are.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


class SandboxdInputError(Exception):
    """Bad input from a user: a policy, a profile, a flag or a request."""


class PolicyError(SandboxdInputError):
    """A policy file or override is malformed; names the file, the key and the reason.

    ``source``, ``key`` and ``reason`` are kept escaped by :func:`one_line`, so ``str()`` of
    the error is always exactly one line.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = one_line(source)
        self.key = one_line(key)
        self.reason = one_line(reason)
        text = f"{self.source}: {self.key}: {self.reason}" if self.key else f"{self.source}: {self.reason}"
        super().__init__(text)


class LayerUnavailable(Exception):
    """A layer the policy requires cannot be applied on this host (fail closed)."""

    def __init__(self, layer: str, reason: str) -> None:
        self.layer = layer
        self.reason = reason
        super().__init__(f"{layer}: {reason}")
