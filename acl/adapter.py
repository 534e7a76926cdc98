"""Turn a userdomains snapshot into Casbin policy lines, and load them into an Enforcer.

The YAML file is the store; this adapter is read-only (Casbin's save/add/remove calls
are refused) so that nobody can edit the Casbin side and have it silently diverge from
the file. Line shapes are documented in ``policies/casbin/model.conf``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import casbin
from casbin.model import Model
from casbin.persist import Adapter

from userdomains import GUI_ROLE, Snapshot

MODEL_PATH = Path(__file__).resolve().parent.parent / "policies" / "casbin" / "model.conf"

GLOBAL = "@global"  # the object of a global call (destination dom0)
OFFICER = "@officer"
POLICY_PATTERN = "policy.*"

Line = tuple[str, ...]  # ("p", sub, obj, act, eft) | ("g", a, b) | ("g2", a, b)


def user_subject(user: str) -> str:
    return f"user:{user}"


def deny_subject(user: str) -> str:
    return f"deny:{user}"


def gui_subject(vm: str) -> str:
    return f"guivm:{vm}"


def set_object(name: str) -> str:
    return f"set:{name}"


def displayed_object(vm: str) -> str:
    return f"displayed:{vm}"


def format_line(line: Line) -> str:
    return ", ".join(line)


def policy_lines(snapshot: Snapshot) -> list[Line]:
    """The ``p`` and ``g`` lines of ``snapshot``, deduplicated, in a stable order."""
    out: dict[Line, None] = {}  # ordered set
    roles = snapshot.roles
    for user in snapshot.users.values():
        for grant in user.grants:
            subject = user_subject(user.name) if grant.effect == "allow" else deny_subject(user.name)
            for s in grant.sets:
                for pattern in roles[grant.role].patterns:
                    out[("p", subject, set_object(s), pattern, grant.effect)] = None
        for vm in user.gui:
            for pattern in roles[GUI_ROLE].patterns:
                out[("p", gui_subject(vm), displayed_object(vm), pattern, "allow")] = None
    if snapshot.officers:
        out[("p", OFFICER, GLOBAL, POLICY_PATTERN, "allow")] = None
    for user in snapshot.users.values():
        for vm in user.management:
            out[("g", vm, user_subject(user.name))] = None
            if user.officer:
                out[("g", vm, OFFICER)] = None
        out[("g", user_subject(user.name), deny_subject(user.name))] = None
        for vm in user.gui:
            out[("g", vm, gui_subject(vm))] = None
            # A user's deny grants bind their GUI VM too; its allows never do.
            out[("g", vm, deny_subject(user.name))] = None
    return list(out)


def membership_lines(
    snapshot: Snapshot, domains: Iterable[tuple[str, Iterable[str]]] = ()
) -> Iterator[Line]:
    """``g2`` lines: ``@global`` in every set, then each given domain's derived sets.

    Membership depends on live tags, so these lines describe one moment of qubesd's
    state; the runtime index never needs them, only the Casbin oracle does.
    """
    for s in snapshot.sets:
        yield ("g2", GLOBAL, set_object(s))
    for p in snapshot.principals.values():
        if p.kind == "gui":
            yield ("g2", GLOBAL, displayed_object(p.vm))
    for name, tags in domains:
        tags = tuple(tags)
        for s in sorted(snapshot.sets_of(name, tags)):
            yield ("g2", name, set_object(s))
        for vm in sorted(snapshot.displayed_by(tags)):
            yield ("g2", name, displayed_object(vm))


class SnapshotAdapter(Adapter):
    """Casbin adapter whose storage is a userdomains snapshot (plus, optionally, a
    domain inventory for the ``g2`` membership lines)."""

    def __init__(
        self, snapshot: Snapshot, domains: Iterable[tuple[str, Iterable[str]]] = ()
    ) -> None:
        self.snapshot = snapshot
        self.lines: list[Line] = policy_lines(snapshot) + list(membership_lines(snapshot, domains))

    def load_policy(self, model: Model) -> None:
        for line in self.lines:
            ptype = line[0]
            model.add_policy(ptype[0], ptype, list(line[1:]))

    def save_policy(self, model: Model) -> bool:
        raise NotImplementedError("userdomains.yaml is the store; edit it through policy.acl.Replace")

    def add_policy(self, sec: str, ptype: str, rule: list[str]) -> None:
        raise NotImplementedError("the Casbin policy is derived from userdomains.yaml")

    def remove_policy(self, sec: str, ptype: str, rule: list[str]) -> None:
        raise NotImplementedError("the Casbin policy is derived from userdomains.yaml")

    def remove_filtered_policy(self, sec: str, ptype: str, field_index: int, *values: str) -> None:
        raise NotImplementedError("the Casbin policy is derived from userdomains.yaml")

    def to_csv(self) -> str:
        """The policy as Casbin CSV text (for explain output and debugging)."""
        return "".join(format_line(line) + "\n" for line in self.lines)


def load_model(path: str | Path | None = None) -> Model:
    m = Model()
    m.load_model(str(path or MODEL_PATH))
    return m


def new_enforcer(
    snapshot: Snapshot,
    domains: Iterable[tuple[str, Iterable[str]]] = (),
    model_path: str | Path | None = None,
) -> casbin.Enforcer:
    """A real pycasbin Enforcer with the shipped model and ``snapshot``'s policy.

    Requests: ``enforce(source_vm, domain_name_or_GLOBAL, method)``. Slow (a linear scan
    of ``p`` lines per call): it is the oracle and the explain tool, not the hot path.
    """
    return casbin.Enforcer(load_model(model_path), SnapshotAdapter(snapshot, domains))
