"""The Casbin layer's hot path: a decision index compiled per userdomains snapshot.

Casbin (``acl.adapter.new_enforcer``) is the model and the oracle; it scans every ``p``
line per request, which is far too slow for qubesd. This index answers the same
questions with a few dictionary lookups:

* per principal (a user's management VMs share one entry, each GUI VM has its own) and
  per method name: the sets an allow grant opens and the sets a deny grant closes for
  that method, computed once on first use and cached (the glob matching happens then);
* per domain: its sets, from :meth:`userdomains.Snapshot.sets_of` (name and tag lookups).

The rules, identical to ``policies/casbin/model.conf`` (a differential test checks it):

* ``policy.*``: allowed for officer principals whatever their grants, never for anyone
  else.
* A domain destination: allowed iff one of its sets is in an allow grant whose role
  covers the method and none is in such a deny grant. A GUI VM's only allow is role
  ``gui`` on the domains carrying ``guivm-<that vm>``; its user's deny grants bind it.
* The global object (destination dom0 for a global method): allowed iff some allow
  grant's role covers the method (sets irrelevant) and no deny grant's role does.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from userdomains import GUI_ROLE, GUIVM_TAG_PREFIX, Grant, Principal, Snapshot

from .adapter import (
    GLOBAL,
    OFFICER,
    POLICY_PATTERN,
    deny_subject,
    displayed_object,
    format_line,
    gui_subject,
    set_object,
    user_subject,
)

_EMPTY: frozenset[str] = frozenset()
_CACHE_LIMIT = 4096  # method names come from qubesd's registry; this only bounds abuse


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a method glob exactly as Casbin's globMatch reads it for the syntax
    userdomains accepts: ``*`` and ``?`` do not cross ``/``, everything else is literal
    (in particular ``.``, the keyMatch/regexMatch pitfall of platform-notes 4.3)."""
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append("[^/]*")
        elif ch == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts))


class Decision:
    """Outcome of one check. ``rows`` are the Casbin policy lines that decided it."""

    __slots__ = ("allowed", "reason", "rows")

    def __init__(self, allowed: bool, reason: str, rows: tuple[str, ...] = ()) -> None:
        self.allowed = allowed
        self.reason = reason
        self.rows = rows

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return f"Decision(allowed={self.allowed}, reason={self.reason!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "reason": self.reason, "rows": list(self.rows)}


class Access(NamedTuple):
    """One way a VM reaches a domain (``who_can``). The first four fields are the
    ``(user, vm, role, methods)`` of the report; ``effect`` and ``via`` say how."""

    user: str
    vm: str
    role: str
    methods: tuple[str, ...]
    effect: str  # "allow" | "deny"
    via: tuple[str, ...]  # sets (or "guivm-<vm>" tag) through which it applies


class Overlap(NamedTuple):
    domain: str
    users: tuple[str, ...]
    sets: tuple[str, ...]


class _Rights:
    """What one principal may do with one method name."""

    __slots__ = ("allow", "allow_why", "deny", "deny_why", "gui_tag", "sel")

    def __init__(self) -> None:
        self.allow: frozenset[str] = _EMPTY  # named sets opened by allow grants
        self.deny: frozenset[str] = _EMPTY  # named sets closed by deny grants
        self.gui_tag: str | None = None  # GUI VM: the guivm-<vm> tag that opens a domain
        self.allow_why: dict[str, str] = {}  # set -> reason text (Casbin row + grant)
        self.deny_why: dict[str, str] = {}
        self.sel: tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]] | None = (
            None
        )

    @property
    def any_allow(self) -> bool:
        return bool(self.allow) or self.gui_tag is not None


@dataclass(frozen=True)
class _PrincipalEntry:
    principal: Principal
    key: str  # cache key shared by all management VMs of one user
    allows: tuple[Grant, ...]
    denies: tuple[Grant, ...]


class Authorizer:
    """Answers the Casbin layer's questions for one snapshot. Thread-safe: it is
    immutable apart from memo caches whose racing fills are idempotent."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.id = snapshot.id
        self._patterns: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {
            name: tuple((p, glob_to_regex(p)) for p in role.patterns)
            for name, role in snapshot.roles.items()
        }
        self._entries: dict[str, _PrincipalEntry] = {}
        for p in snapshot.principals.values():
            user = snapshot.users[p.user]
            denies = tuple(g for g in user.grants if g.effect == "deny")
            if p.kind == "management":
                allows = tuple(g for g in user.grants if g.effect == "allow")
                key = "u:" + p.user
            else:
                allows = ()
                key = "g:" + p.vm
            self._entries[p.vm] = _PrincipalEntry(p, key, allows, denies)
        # method -> {role: first pattern of the role covering it}
        self._method_roles: dict[str, dict[str, str]] = {}
        # (principal key, method) -> rights
        self._rights: dict[tuple[str, str], _Rights] = {}
        self._set_users: dict[str, frozenset[str]] = {
            s: snapshot.users_of_set(s) for s in snapshot.sets
        }

    # -- compilation (cold, memoised) -------------------------------------------------

    def _roles_for(self, method: str) -> dict[str, str]:
        hit = self._method_roles.get(method)
        if hit is None:
            hit = {}
            for role, pats in self._patterns.items():
                for text, rx in pats:
                    if rx.fullmatch(method):
                        hit[role] = text
                        break
            if len(self._method_roles) >= _CACHE_LIMIT:
                self._method_roles.clear()
            self._method_roles[method] = hit
        return hit

    def _rights_for(self, entry: _PrincipalEntry, method: str) -> _Rights:
        key = (entry.key, method)
        r = self._rights.get(key)
        if r is not None:
            return r
        roles = self._roles_for(method)
        r = _Rights()
        user = entry.principal.user
        src = self.snapshot.source
        allow: set[str] = set()
        deny: set[str] = set()
        for g in entry.allows:
            pat = roles.get(g.role)
            if pat is None:
                continue
            for s in g.sets:
                allow.add(s)
                r.allow_why.setdefault(
                    s,
                    f"{src}:{g.line}: user {user} grant #{g.index + 1} role {g.role} on set {s} "
                    f"[{format_line(('p', user_subject(user), set_object(s), pat, 'allow'))}]",
                )
        for g in entry.denies:
            pat = roles.get(g.role)
            if pat is None:
                continue
            for s in g.sets:
                deny.add(s)
                r.deny_why.setdefault(
                    s,
                    f"{src}:{g.line}: user {user} deny grant #{g.index + 1} role {g.role} on set "
                    f"{s} [{format_line(('p', deny_subject(user), set_object(s), pat, 'deny'))}]",
                )
        if entry.principal.kind == "gui":
            pat = roles.get(GUI_ROLE)
            if pat is not None:
                vm = entry.principal.vm
                r.gui_tag = GUIVM_TAG_PREFIX + vm
                r.allow_why[""] = (
                    f"GUI VM {vm} of user {user}: role gui on domains tagged {r.gui_tag} "
                    f"[{format_line(('p', gui_subject(vm), displayed_object(vm), pat, 'allow'))}]"
                )
        r.allow = frozenset(allow)
        r.deny = frozenset(deny)
        if len(self._rights) >= _CACHE_LIMIT * 8:
            self._rights.clear()
        self._rights[key] = r
        return r

    def _selectors(self, r: _Rights) -> tuple[frozenset[str], ...]:
        if r.sel is None:
            an, at = self.snapshot.selectors(r.allow)
            if r.gui_tag is not None:
                at = at | {r.gui_tag}
            dn, dt = self.snapshot.selectors(r.deny)
            r.sel = (an, at, dn, dt)
        return r.sel

    # -- decisions --------------------------------------------------------------------

    def decide(
        self,
        source_vm: str,
        method: str,
        dest: str | None,
        dest_tags: Iterable[str] = (),
    ) -> Decision:
        """May ``source_vm`` call ``method`` on ``dest`` (a domain with ``dest_tags``), or
        on the global object when ``dest`` is None (destination dom0, global method)?"""
        entry = self._entries.get(source_vm)
        if entry is None:
            return Decision(False, f"{source_vm} acts for no user in {self.snapshot.source}")
        if "/" in method:
            # Casbin's globMatch never lets a wildcard cross '/', so no row can match.
            return Decision(False, f"invalid method name {method!r}")
        if method.startswith("policy."):
            p = entry.principal
            if p.officer:
                row = format_line(("p", OFFICER, GLOBAL, POLICY_PATTERN, "allow"))
                return Decision(True, f"{source_vm} acts for officer {p.user} [{row}]", (row,))
            return Decision(False, f"policy.* is reserved to officers; {source_vm} is not one")
        r = self._rights.get((entry.key, method)) or self._rights_for(entry, method)

        if dest is None:
            if r.deny:
                s = min(r.deny)
                return Decision(False, "global call denied: " + r.deny_why[s], (r.deny_why[s],))
            if r.allow:
                s = min(r.allow)
                return Decision(True, "global call: " + r.allow_why[s], (r.allow_why[s],))
            if r.gui_tag is not None:
                return Decision(True, "global call: " + r.allow_why[""], (r.allow_why[""],))
            return Decision(False, self._uncovered(entry, method))

        if not isinstance(dest_tags, Collection):
            dest_tags = tuple(dest_tags)  # iterated twice below
        dsets = self.snapshot.sets_of(dest, dest_tags)
        if r.deny:
            closed = dsets & r.deny
            if closed:
                why = r.deny_why[min(closed)]
                return Decision(False, f"denied on {dest}: {why}", (why,))
        if entry.principal.kind == "gui":
            if r.gui_tag is None:
                return Decision(False, self._uncovered(entry, method))
            if r.gui_tag in dest_tags:
                why = r.allow_why[""]
                return Decision(True, why, (why,))
            return Decision(
                False, f"GUI VM {source_vm} does not display {dest} (no tag {r.gui_tag})"
            )
        opened = dsets & r.allow
        if opened:
            why = r.allow_why[min(opened)]
            return Decision(True, why, (why,))
        if not r.allow:
            return Decision(False, self._uncovered(entry, method))
        return Decision(
            False,
            f"{dest} (sets: {', '.join(sorted(dsets)) or 'none'}) is in no set where user "
            f"{entry.principal.user} may call {method}",
        )

    @staticmethod
    def _uncovered(entry: _PrincipalEntry, method: str) -> str:
        p = entry.principal
        if p.kind == "gui":
            return f"GUI VM {p.vm} of user {p.user}: role gui does not cover {method}"
        return f"no allow grant of user {p.user} covers {method} ({p.vm})"

    def may_reference(
        self, source_vm: str, domain: str, tags: Iterable[str] = ()
    ) -> Decision:
        """Value constraint (DESIGN section 4, point 4): may ``source_vm`` name ``domain``
        as the value of a VM-reference (netvm, template, default_dispvm, guivm, ...)?

        "Use" is defined as visibility: the caller may list the domain
        (``admin.vm.List`` allowed on it). A viewer grant on infrastructure thus lets a
        user point their domains at ``sys-firewall`` without being able to change it.
        """
        d = self.decide(source_vm, "admin.vm.List", domain, tags)
        if d.allowed:
            return Decision(True, f"{domain} is visible to {source_vm}: {d.reason}", d.rows)
        return Decision(False, f"{source_vm} may not use {domain}: {d.reason}", d.rows)

    def visible(
        self, source_vm: str, method: str, domains: Iterable[tuple[str, Iterable[str]]]
    ) -> list[str]:
        """Names of the ``(name, tags)`` domains on which ``decide`` would allow ``method``
        (a listing filter: two set lookups per domain, no Decision objects)."""
        entry = self._entries.get(source_vm)
        if entry is None or "/" in method:
            return []
        if method.startswith("policy."):
            return [n for n, _ in domains] if entry.principal.officer else []
        r = self._rights.get((entry.key, method)) or self._rights_for(entry, method)
        if not r.any_allow:
            return []
        an, at, dn, dt = self._selectors(r)
        if dn or dt:
            return [
                n
                for n, t in domains
                if (n in an or not at.isdisjoint(t)) and not (n in dn or not dt.isdisjoint(t))
            ]
        return [n for n, t in domains if n in an or not at.isdisjoint(t)]

    def allowed_methods(self, source_vm: str, methods: Iterable[str]) -> dict[str, bool]:
        """For each method, whether it is allowed on the global object (a cheap helper
        for tools that print what a VM may call)."""
        return {m: self.decide(source_vm, m, None).allowed for m in methods}

    # -- reports ----------------------------------------------------------------------

    def who_can(self, domain_name: str, tags: Iterable[str] = ()) -> list[Access]:
        """Every (user, vm, role, methods) that reaches the domain, allow and deny."""
        tags = tuple(tags)
        snap = self.snapshot
        dsets = snap.sets_of(domain_name, tags)
        shown = snap.displayed_by(tags)
        out: list[Access] = []
        for user in snap.users.values():
            for g in user.grants:
                via = tuple(sorted(dsets.intersection(g.sets)))
                if not via:
                    continue
                methods = snap.roles[g.role].patterns
                vms = user.management + (user.gui if g.effect == "deny" else ())
                for vm in vms:
                    out.append(Access(user.name, vm, g.role, methods, g.effect, via))
            for vm in user.gui:
                if vm in shown:
                    out.append(
                        Access(
                            user.name,
                            vm,
                            GUI_ROLE,
                            snap.roles[GUI_ROLE].patterns,
                            "allow",
                            (GUIVM_TAG_PREFIX + vm,),
                        )
                    )
        out.sort(key=lambda a: (a.user, a.vm, a.effect, a.role))
        return out

    def can_i(self, vm: str) -> dict[str, Any]:
        """JSON-friendly summary of what ``vm`` may do (for ``qubes-policy``/explain)."""
        snap = self.snapshot
        p = snap.principal_of(vm)
        if p is None:
            return {"vm": vm, "user": None, "kind": None, "officer": False, "grants": [],
                    "summary": f"{vm} acts for no user: no Admin API or policy rights"}
        user = snap.users[p.user]
        grants: list[dict[str, Any]] = []
        for g in user.grants:
            if p.kind == "gui" and g.effect == "allow":
                continue  # a GUI VM never acts with its user's allow grants
            grants.append({
                "role": g.role, "sets": list(g.sets), "effect": g.effect,
                "methods": list(snap.roles[g.role].patterns), "line": g.line,
            })
        if p.kind == "gui":
            grants.insert(0, {
                "role": GUI_ROLE, "sets": [], "effect": "allow",
                "methods": list(snap.roles[GUI_ROLE].patterns),
                "domains": f"tagged {GUIVM_TAG_PREFIX}{vm} (guivm = {vm})",
                "line": snap.roles[GUI_ROLE].line,
            })
        if p.kind == "gui":
            summary = f"GUI VM of {p.user}: role gui on the domains it displays"
        elif p.officer:
            summary = f"officer {p.user}: policy.* plus the grants listed"
        else:
            summary = f"management VM of {p.user}"
        return {
            "vm": vm,
            "user": p.user,
            "kind": p.kind,
            "officer": p.officer,
            "policy": p.officer,
            "grants": grants,
            "create_into": user.create_into if p.kind == "management" else None,
            "summary": summary,
            "snapshot": snap.id,
        }

    def shared_sets(self) -> dict[str, tuple[str, ...]]:
        """Sets on which two or more users hold allow grants."""
        return {s: tuple(sorted(u)) for s, u in self._set_users.items() if len(u) > 1}

    def overlap_report(self, domains: Iterable[tuple[str, Iterable[str]]]) -> list[Overlap]:
        """Domains reachable (through allow grants) by two or more users."""
        out: list[Overlap] = []
        su = self._set_users
        for name, tags in domains:
            dsets = self.snapshot.sets_of(name, tags)
            if not dsets:
                continue
            users: set[str] = set()
            for s in dsets:
                users |= su[s]
            if len(users) > 1:
                out.append(Overlap(name, tuple(sorted(users)), tuple(sorted(dsets))))
        return out


class FailClosedAuthorizer:
    """Stands in when ``userdomains.yaml`` exists but cannot be loaded: every call is
    denied with the load error as the reason (DESIGN section 5)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.id = "fail-closed"

    def decide(
        self, source_vm: str, method: str, dest: str | None, dest_tags: Iterable[str] = ()
    ) -> Decision:
        return Decision(False, f"fail closed: {self.reason}")

    def visible(
        self, source_vm: str, method: str, domains: Iterable[tuple[str, Iterable[str]]]
    ) -> list[str]:
        return []
