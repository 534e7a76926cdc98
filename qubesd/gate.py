"""The gate: the one function every call from a domain other than dom0 passes.

(Interim version: the qrexec policy and Casbin layers are wired in by the multi-user
work; until then the gate admits what qrexec delivered, as upstream qubesd does.)
"""

from typing import Any

from qubesd.dispatch import Call


class Gate:
    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def authorize(self, call: Call) -> None:
        """Raise PermissionDenied or return; may add visibility filters to the call."""

    def can_see(self, call: Call, name: str) -> bool:
        return True

    def reload(self) -> Any:
        return None
