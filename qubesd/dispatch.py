"""One dispatcher for every method: generic validation, the gate, then the handler.

Validation order is upstream's (spec/admin-api.md 2.4): source, destination, method,
payload, argument, destination class. Only then does the gate run (for callers other
than dom0), and only then the handler, so no handler sees a request that the declared
rules or the gate refused.
"""

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from qubesd.exc import PermissionDenied, ProtocolError, QubesVMNotFoundError
from qubesd.model.vm import AdminVM, BaseVM
from qubesd.protocol import Request
from qubesd.registry import Method, Presence, Registry

if TYPE_CHECKING:
    from qubesd.daemon import Daemon

SendEvent = Callable[[Any, str, dict], None]


class Call:
    """Everything a handler may use for one request."""

    __slots__ = (
        "app",
        "arg",
        "daemon",
        "dest",
        "filters",
        "method",
        "payload",
        "redact",
        "requested_dest",
        "send_event",
        "src",
        "started",
    )

    def __init__(self, daemon: "Daemon", method: Method, src: BaseVM, dest: BaseVM, arg: str,
                 payload: bytes, send_event: SendEvent | None) -> None:
        self.daemon = daemon
        self.app = daemon.app
        self.method = method
        self.src = src
        self.dest = dest
        self.arg = arg
        self.payload = payload
        self.send_event = send_event
        #: predicates a listing applies to what it returns (from the gate and extensions)
        self.filters: list[Callable[[Any], bool]] = []
        #: what an event stream shows of an event's values (the gate hides domains)
        self.redact: Callable[[Any, str, dict], dict] | None = None
        #: the destination as the caller wrote it (a name or ``uuid:``), for messages
        self.requested_dest = dest.name
        self.started = time.perf_counter()

    @property
    def from_dom0(self) -> bool:
        return isinstance(self.src, AdminVM)

    def fire_permission(self, **details: Any) -> None:
        """Fire ``admin-permission:<method>`` on the source, as upstream handlers do
        before any side effect; extensions may veto or add filters."""
        results = self.src.fire_event(f"admin-permission:{self.method.name}",
                                      pre_event=True, dest=self.dest, arg=self.arg,
                                      **details)
        for result in results:
            self.filters.extend(result)

    def visible(self, item: Any) -> bool:
        return all(pred(item) for pred in self.filters)

    def filter(self, items: Iterable[Any]) -> list:
        filters = self.filters
        if not filters:
            return list(items)
        return [item for item in items if all(pred(item) for pred in filters)]

    async def save(self) -> None:
        await self.daemon.committer.commit()


class Dispatcher:
    def __init__(self, daemon: "Daemon", registry: Registry, socket: str) -> None:
        self.daemon = daemon
        self.methods = registry.for_socket(socket)

    def prepare(self, req: Request, send_event: SendEvent | None) -> Call:
        """Resolve and validate a request; raises the documented exceptions."""
        app = self.daemon.app
        src = app.lookup(req.src)
        try:
            dest = app.lookup(req.dest)
        except QubesVMNotFoundError:
            if src.name == "dom0":
                raise
            # to a domain, a missing domain looks like one it may not see: no oracle
            raise PermissionDenied(refusal(req.method, req.arg, req.dest)) from None
        method = self.methods.get(req.method)
        if method is None:
            raise ProtocolError(f"no such method: {req.method!r}")
        if method.payload is Presence.REQUIRED and not req.payload:
            raise ProtocolError("expected payload")
        if method.payload is Presence.NONE and req.payload:
            raise ProtocolError("unexpected payload")
        if method.arg is Presence.REQUIRED and not req.arg:
            raise ProtocolError("expected an argument")
        if method.arg is Presence.NONE and req.arg:
            raise ProtocolError("unexpected argument")
        dest_adminvm = method.dest_adminvm
        if dest_adminvm is True and not isinstance(dest, AdminVM):
            raise ProtocolError("expected destination to be AdminVM")
        if dest_adminvm is False and isinstance(dest, AdminVM):
            raise ProtocolError("expected destination to not be AdminVM")
        call = Call(self.daemon, method, src, dest, req.arg, req.payload, send_event)
        call.requested_dest = req.dest
        return call

    async def execute(self, req: Request, send_event: SendEvent | None = None) -> str | None:
        call = self.prepare(req, send_event)
        if not call.from_dom0:
            self.daemon.gate.authorize(call)
        return await call.method.handler(call)


def refusal(method: str, arg: str, requested_dest: str) -> str:
    """What a refused domain is told: nothing it did not send. The reasons of each layer
    go to the audit log and to ``qubes-policy explain``, which only officers may read."""
    return (f"Request refused: {method}{'+' + arg if arg else ''} to {requested_dest} "
            "(ask the security officer: qubes-policy explain / audit)")


def require(condition: bool, reason: str) -> None:
    """Upstream's ``enforce``: a failed precondition is a ProtocolError."""
    if not condition:
        raise ProtocolError(reason)


def require_arg(call: Call, allowed: Iterable[str], short_reason: str) -> None:
    if call.arg not in allowed:
        raise PermissionDenied(f"Argument not in {short_reason!r}")
