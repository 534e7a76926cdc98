"""Requests (spec 3.2) and resolutions (spec 3.3, 3.5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import AccessDenied
from .sysinfo import DOM0_CLASS, SystemInfo
from .tokens import value_keys


def split_service_arg(service_and_arg: str) -> tuple[str, str]:
    """``'svc+arg'`` -> ``('svc', 'arg')``; ``'svc'`` -> ``('svc', '')``.

    The argument is what follows the first ``+``, without that ``+``.
    """
    service, _, arg = service_and_arg.partition("+")
    return service, arg


def normalise_target(untrusted_target: str | None, sysinfo: SystemInfo) -> str:
    """The intended target as matched against rules (spec 3.2 steps 1-3).

    Unknown names become ``@default``; keywords not valid as an intended
    target and ``@dispvm:X`` where X is not a disposable template raise
    :class:`AccessDenied`.  Known ``uuid:`` values are kept (they match both
    forms); ``dom0`` spellings are kept as given.
    """
    t = untrusted_target or "@default"
    if not t.startswith("@"):
        if t == "*":
            raise AccessDenied(f"invalid intendedtarget token: {t!r}")
        if t in DOM0_CLASS or t in sysinfo:
            return t
        return "@default"
    if t in ("@adminvm", "@default", "@dispvm"):
        return t
    if t.startswith("@dispvm:") and not t.startswith("@dispvm:@"):
        name = t[8:]
        if not name:
            raise AccessDenied(f"invalid empty @dispvm: token: {t!r}")
        info = sysinfo.get(name)
        if info is None or not info.template_for_dispvms:
            raise AccessDenied(f"not a template for dispvm: {name}")
        return "@dispvm:" + info.name
    raise AccessDenied(f"invalid intendedtarget token: {t!r}")


class Request:
    """A normalised request.  ``argument`` here carries the leading ``+``."""

    __slots__ = (
        "_source_keys",
        "_target_keys",
        "argument",
        "caller",
        "requested_target",
        "service",
        "source",
        "sysinfo",
        "target",
    )

    def __init__(self, service: str, argument: str, source: str, target: str,
                 sysinfo: SystemInfo, *, requested_source: str | None = None) -> None:
        self.service = service
        self.argument = argument if argument else "+"
        self.caller = source
        if requested_source:
            relayed = sysinfo.get(requested_source)
            if relayed is None:
                raise AccessDenied(f"unknown requested source qube {requested_source!r}")
            if relayed.type != "RemoteVM":
                raise AccessDenied(
                    f"{requested_source}: requested source is only authorized for RemoteVM")
            if relayed.relayvm is None or not sysinfo.same_domain(str(relayed.relayvm), source):
                raise AccessDenied(f"{source} is not a relay for {requested_source}")
            source = relayed.name
        self.source = source
        self.requested_target = target or "@default"
        self.target = normalise_target(target, sysinfo)
        self.sysinfo = sysinfo
        self._target_keys: tuple[str, ...] | None = None
        self._source_keys: tuple[str, ...] | None = None

    @property
    def source_keys(self) -> tuple[str, ...]:
        k = self._source_keys
        if k is None:
            k = self._source_keys = self.sysinfo.plain_keys(self.source)
        return k

    @property
    def target_keys(self) -> tuple[str, ...]:
        k = self._target_keys
        if k is None:
            k = self._target_keys = value_keys(self.target, source=self.source,
                                               sysinfo=self.sysinfo)
        return k


@dataclass
class Resolution:
    """The outcome of one evaluation.

    ``result`` is ``allow``, ``deny`` or ``ask``.  For allow, ``target`` is
    the qube to run in (``dom0`` for the admin class, ``@dispvm:T`` for a new
    disposable).  For ask, ``targets_for_ask`` and ``default_target``.
    ``rule`` is ``(file, line)`` of the deciding rule or None.
    """

    result: str
    reason: str
    target: str | None = None
    targets_for_ask: list[str] | None = None
    default_target: str | None = None
    user: str | None = None
    autostart: bool = True
    notify: bool = False
    rule: tuple[str, int] | None = None
    service: str = ""
    argument: str = "+"
    source: str = ""
    requested_target: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.result == "allow"

    def to_dict(self) -> dict[str, Any]:
        """JSON form used by ``qrexec-policy check --json/--batch``."""
        return {
            "result": self.result,
            "target": self.target,
            "targets_for_ask": self.targets_for_ask,
            "default_target": self.default_target,
            "user": self.user,
            "autostart": self.autostart,
            "notify": self.notify,
            "rule": None if self.rule is None else {"file": self.rule[0], "line": self.rule[1]},
            "reason": self.reason,
        }

    def handle_user_response(self, allowed: bool, target: str = "") -> Resolution:
        """Turn an ask into allow/deny after the user answered (spec 3.3)."""
        if self.result != "ask":
            raise ValueError("not an ask resolution")
        where = f"{self.rule[0]}:{self.rule[1]}" if self.rule else "?"
        common = {"rule": self.rule, "service": self.service, "argument": self.argument,
                      "source": self.source, "requested_target": self.requested_target,
                      "user": self.user, "autostart": self.autostart}
        if not allowed:
            return Resolution("deny", f"denied by the user {where}", notify=self.notify,
                              **common)
        if target not in (self.targets_for_ask or ()):
            return Resolution("deny", f"target {target} is not a valid choice",
                              notify=self.notify, **common)
        return Resolution("allow", f"allowed by the user {where}", target=target,
                          notify=self.notify, **common)

    def daemon_lines(self, sysinfo: SystemInfo) -> list[str]:
        """The policy daemon reply (spec 3.5) for this resolution.

        Only allow produces ``result=allow`` lines; deny, ask, a loopback call
        and an unusable RemoteVM produce ``['result=deny']``.
        """
        if self.result != "allow" or self.target is None:
            return ["result=deny"]
        t = self.target
        if t != "dom0" and sysinfo.same_domain(t, self.source):
            return ["result=deny"]  # loopback qrexec connection not supported
        user = self.user or "DEFAULT"
        auto = "True" if self.autostart else "False"
        lines = []
        if t == "dom0":
            return [f"user={user}", "result=allow", "target=dom0", f"autostart={auto}",
                    f"requested_target={self.requested_target}"]
        if t.startswith("@dispvm:"):
            info = sysinfo.get(t[8:])
            if info is None or not info.uuid:
                return ["result=deny"]
            lines = [f"user={user}", "result=allow", f"target={t}",
                     f"target_uuid=@dispvm:uuid:{info.uuid}", f"autostart={auto}",
                     f"requested_target={self.requested_target}"]
        else:
            info = sysinfo.get(t)
            if info is None or not info.uuid:
                return ["result=deny"]
            if info.type == "RemoteVM":
                relay = sysinfo.get(str(info.relayvm)) if info.relayvm else None
                if relay is None or not relay.uuid or not info.transport_rpc:
                    return ["result=deny"]
                lines = ["user=DEFAULT", "result=allow", f"target={relay.name}",
                         f"target_uuid=uuid:{relay.uuid}", f"autostart={auto}",
                         f"requested_target={self.requested_target}",
                         (f"service={info.transport_rpc}+{info.name}+{self.service}"
                         f"{self.argument}")]
            else:
                lines = [f"user={user}", "result=allow", f"target={info.name}",
                         f"target_uuid=uuid:{info.uuid}", f"autostart={auto}",
                         f"requested_target={self.requested_target}"]
        if self.source and self.extra.get("caller") not in (None, self.source):
            lines.append(f"policy_source={self.source}")
        return lines


def deny(reason: str, *, notify: bool = True, rule: tuple[str, int] | None = None,
         request: Request | None = None) -> Resolution:
    res = Resolution("deny", reason, notify=notify, rule=rule)
    if request is not None:
        res.service = request.service
        res.argument = request.argument
        res.source = request.source
        res.requested_target = request.requested_target
    return res
