"""Exceptions of the qrexec policy engine.

Every refusal is an :class:`AccessDenied`; a policy that cannot be parsed
raises :class:`PolicySyntaxError`, whose text is ``file:line: reason``.
"""

from __future__ import annotations

from pathlib import Path


class PolicyError(Exception):
    """Base class of the engine's exceptions."""


class AccessDenied(PolicyError):
    """The request is refused. ``notify`` tells whether the user should see it."""

    def __init__(self, reason: str, *, notify: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


class PolicyLoadError(AccessDenied):
    """Loading the policy failed (bad file name, unreadable directory...)."""


class PolicySyntaxError(PolicyLoadError):
    """A policy file has an error; ``str(exc)`` is ``file:line: reason``."""

    def __init__(self, filepath: str | Path | None, lineno: int | None, msg: str) -> None:
        self.filepath = None if filepath is None else str(filepath)
        self.lineno = lineno
        self.msg = msg
        if self.filepath is None:
            text = msg
        elif lineno is None:
            text = f"{self.filepath}: {msg}"
        else:
            text = f"{self.filepath}:{lineno}: {msg}"
        super().__init__(text)
