"""Policy snapshots: an immutable, indexed rule list and its evaluation.

Index.  Every rule token has exactly one index key (see :mod:`.tokens`), and
every request value a small set of keys; a rule matches iff its service and
argument match and its source key and target key are among the request's.
Rules are therefore grouped by (service, argument) -- exact, ``service *``,
and ``* *`` -- then by source key, then by target key, keeping in each bucket
only the *first* rule.  An evaluation looks up the few (source key, target
key) pairs of the request and takes the smallest rule number: exactly the
first matching rule of a linear scan, at a cost independent of the number
of rules.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .actions import Allow, Deny
from .errors import AccessDenied, PolicyError
from .parser import FileSystem, PolicyLoader, Rule
from .request import Request, Resolution, deny, normalise_target
from .sysinfo import DOM0_CLASS, SystemInfo
from .tokens import SOURCE, TARGET, value_keys

log = logging.getLogger("qrexec.policy")

_NO_RULE = 1 << 62
_ASK_CACHE_MAX = 4096

Group = dict[str, dict[str, int]]
ListGroup = dict[str, list[int]]


def default_legacy_dir(dirs: Sequence[str | Path]) -> Path | None:
    """Where ``!compat-4.0`` looks: ``<persistent>/../../qubes-rpc/policy``.

    For ``/etc/qubes/policy.d`` that is upstream's ``/etc/qubes-rpc/policy``.
    """
    if not dirs:
        return None
    return Path(dirs[-1]).absolute().parent.parent / "qubes-rpc" / "policy"


class PolicySnapshot:
    """An immutable loaded policy.  Thread-safe for evaluation.

    ``error`` is None, or the reason the policy did not load (``file:line:
    reason``); a snapshot with an error denies every request.  ``id`` is a
    SHA-256 over the contents of every file read (and the error, if any).
    """

    def __init__(self, rules: Sequence[Rule] = (), *, error: str | None = None,
                 snapshot_id: str = "", files: Sequence[str] = (),
                 dirs: Sequence[str] = (), warnings: Sequence[str] = (),
                 load_seconds: float = 0.0) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules) if error is None else ()
        self.error = error
        self.id = snapshot_id
        self.files = tuple(files)
        self.dirs = tuple(dirs)
        self.warnings = tuple(warnings)
        self.load_seconds = load_seconds
        self._by_service: dict[str, tuple[Group | None, dict[str, Group]]] = {}
        self._any: Group = {}
        self._lists_by_service: dict[str, tuple[ListGroup | None, dict[str, ListGroup]]] = {}
        self._lists_any: ListGroup = {}
        self._ask_cache: dict[tuple[str, str, str], tuple[SystemInfo, list[str]]] = {}
        self._build_index()

    # -- index --------------------------------------------------------------
    def _build_index(self) -> None:
        by_service: dict[str, list] = {}
        lists_by_service: dict[str, list] = {}
        for i, rule in enumerate(self.rules):
            sk = rule.source.key(SOURCE)
            if sk is None:
                continue  # can never match
            tk = rule.target.key(TARGET)
            if rule.service is None:
                group, lgroup = self._any, self._lists_any
            else:
                entry = by_service.get(rule.service)
                if entry is None:
                    entry = by_service[rule.service] = [None, {}]
                    lists_by_service[rule.service] = [None, {}]
                lentry = lists_by_service[rule.service]
                if rule.argument is None:
                    if entry[0] is None:
                        entry[0], lentry[0] = {}, {}
                    group, lgroup = entry[0], lentry[0]
                else:
                    group = entry[1].setdefault(rule.argument, {})
                    lgroup = lentry[1].setdefault(rule.argument, {})
            sub = group.get(sk)
            if sub is None:
                sub = group[sk] = {}
            if tk not in sub:
                sub[tk] = i
            lst = lgroup.get(sk)
            if lst is None:
                lgroup[sk] = [i]
            else:
                lst.append(i)
        self._by_service = {k: (v[0], v[1]) for k, v in by_service.items()}
        self._lists_by_service = {k: (v[0], v[1]) for k, v in lists_by_service.items()}

    def _groups(self, service: str, argument: str) -> list[Group]:
        groups = []
        entry = self._by_service.get(service)
        if entry is not None:
            if entry[0] is not None:
                groups.append(entry[0])
            g = entry[1].get(argument)
            if g is not None:
                groups.append(g)
        if self._any:
            groups.append(self._any)
        return groups

    def _subs(self, service: str, argument: str,
              source_keys: Iterable[str]) -> list[dict[str, int]]:
        subs = []
        for g in self._groups(service, argument):
            for sk in source_keys:
                sub = g.get(sk)
                if sub is not None:
                    subs.append(sub)
        return subs

    def find_rule(self, request: Request) -> Rule | None:
        """The first rule matching the request, or None."""
        best = _NO_RULE
        tkeys = request.target_keys
        for sub in self._subs(request.service, request.argument, request.source_keys):
            for tk in tkeys:
                i = sub.get(tk)
                if i is not None and i < best:
                    best = i
        return None if best == _NO_RULE else self.rules[best]

    def find_rule_linear(self, request: Request) -> Rule | None:
        """Reference implementation of :meth:`find_rule` (a plain scan)."""
        si = request.sysinfo
        for rule in self.rules:
            if rule.service is not None and rule.service != request.service:
                continue
            if rule.argument is not None and rule.argument != request.argument:
                continue
            if not rule.source.match(request.source, context=SOURCE, source=request.source,
                                     sysinfo=si):
                continue
            if rule.target.match(request.target, context=TARGET, source=request.source,
                                 sysinfo=si):
                return rule
        return None

    # -- evaluation ---------------------------------------------------------
    def evaluate(self, service: str, arg: str | None, source: str, target: str | None,
                 sysinfo: SystemInfo, *, requested_source: str | None = None) -> Resolution:
        """Evaluate one call.  Never raises.

        ``arg`` is the raw argument **without** the leading ``+``, as in the
        qubesd framing ``method+arg`` (``""`` or None: no argument, matched as
        ``+``).  ``target`` is the intended target as the caller named it
        (``""``/None mean ``@default``).
        """
        if self.error is not None:
            return deny(f"policy failed to load: {self.error}")
        try:
            if not service:
                return deny("invalid request: empty service name")
            req = Request(service, "+" + arg if arg else "+", source, target or "", sysinfo,
                          requested_source=requested_source)
        except AccessDenied as e:
            res = deny(e.reason, notify=e.notify)
            res.service, res.argument, res.source = service, "+" + (arg or ""), source
            res.requested_target = target or "@default"
            return res
        return self.evaluate_request(req)

    def evaluate_request(self, request: Request) -> Resolution:
        """Evaluate an already-built :class:`Request`.  Never raises."""
        if self.error is not None:
            return deny(f"policy failed to load: {self.error}", request=request)
        try:
            rule = self.find_rule(request)
            if rule is None:
                return deny("no matching rule found", request=request)
            return rule.action.evaluate(rule, request, self)
        except PolicyError as e:
            return deny(str(e), request=request)
        except Exception as e:  # never crash: fail closed
            log.exception("internal error evaluating policy")
            return deny(f"internal error evaluating policy: {type(e).__name__}: {e}",
                        request=request)

    def allowed_targets(self, service: str, arg: str | None, source: str,
                        candidates: Iterable[str], sysinfo: SystemInfo) -> list[str]:
        """The candidates for which the call evaluates to allow (ask is no).

        Same argument convention as :meth:`evaluate`.  Used to filter
        listings (``admin.vm.List``) and events; one evaluation per
        candidate, with the source side of the lookup shared.
        """
        if self.error is not None:
            return []
        argument = "+" + arg if arg else "+"
        try:
            skeys = sysinfo.plain_keys(source)
            subs = self._subs(service, argument, skeys)
            if not subs:
                return []
            rules = self.rules
            out = []
            for cand in candidates:
                info = sysinfo.get(cand)
                if info is not None:
                    t = cand
                    tkeys = info.keys
                else:
                    try:
                        t = normalise_target(cand, sysinfo)
                    except AccessDenied:
                        continue
                    tkeys = value_keys(t, source=source, sysinfo=sysinfo)
                best = _NO_RULE
                for sub in subs:
                    for tk in tkeys:
                        i = sub.get(tk)
                        if i is not None and i < best:
                            best = i
                if best == _NO_RULE:
                    continue
                rule = rules[best]
                action = rule.action
                if type(action) is Allow:
                    if action.simple and t[0] != "@":
                        out.append(cand)
                        continue
                    req = Request(service, argument, source, cand, sysinfo)
                    if action.evaluate(rule, req, self).result == "allow":
                        out.append(cand)
            return out
        except Exception:  # never crash: fail closed
            log.exception("internal error filtering targets")
            return []

    def collect_targets_for_ask(self, request: Request) -> list[str]:
        """Targets offered by an ``ask`` without ``target=`` (spec 3.3).

        The result depends only on (service, argument, source) and the
        system info, both immutable, so it is cached.
        """
        si = request.sysinfo
        key = (request.service, request.argument, request.source)
        hit = self._ask_cache.get(key)
        if hit is not None and hit[0] is si:
            return list(hit[1])
        out = self._collect_targets_for_ask(request)
        if len(self._ask_cache) >= _ASK_CACHE_MAX:
            self._ask_cache.clear()
        self._ask_cache[key] = (si, out)
        return list(out)

    def _collect_targets_for_ask(self, request: Request) -> list[str]:
        si = request.sysinfo
        idx: set[int] = set()
        lentry = self._lists_by_service.get(request.service)
        lgroups = []
        if lentry is not None:
            if lentry[0] is not None:
                lgroups.append(lentry[0])
            g = lentry[1].get(request.argument)
            if g is not None:
                lgroups.append(g)
        lgroups.append(self._lists_any)
        for g in lgroups:
            for sk in request.source_keys:
                lst = g.get(sk)
                if lst:
                    idx.update(lst)
        targets: set[str] = set()
        for i in sorted(idx, reverse=True):
            rule = self.rules[i]
            action = rule.action
            if type(action) is Deny:
                if targets:
                    targets.difference_update(si.expand(rule.target))
            else:
                tok = action.target if action.target is not None else rule.target
                targets.update(si.expand(tok))
        src = si.get(request.source)
        if "@dispvm" in targets:
            targets.discard("@dispvm")
            if src is not None and src.default_dispvm:
                targets.add("@dispvm:" + si.canonical(src.default_dispvm))
        if "@adminvm" in targets:
            targets.discard("@adminvm")
            targets.add("dom0")
        targets.discard(request.source)
        if src is not None:
            targets.discard(src.name)
        out = []
        for t in targets:
            info = si.get(t.removeprefix("@dispvm:"))
            if info is not None and info.internal:
                continue
            out.append(t)
        out.sort()
        return out

    # -- introspection ------------------------------------------------------
    def rules_for_service(self, service: str) -> list[Rule]:
        """Rules whose service column is ``*`` or ``service``, in order."""
        return [r for r in self.rules if r.service is None or r.service == service]

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        state = f"error={self.error!r}" if self.error else f"{len(self.rules)} rules"
        return f"<PolicySnapshot {self.id[:12]} {state}>"


def load_policy(dirs: Sequence[str | Path] | str | Path, *,
                legacy_dir: str | Path | None = None,
                overrides: Mapping[str | Path, bytes | None] | None = None) -> PolicySnapshot:
    """Load policy directories (earlier ones shadow later ones).  Never raises.

    ``dirs`` is typically ``[runtime_policy_dir, persistent_policy_dir]``;
    missing directories are treated as empty.  ``legacy_dir`` is the R4.0
    directory used by ``!compat-4.0`` (default: :func:`default_legacy_dir`).
    ``overrides`` maps file paths to new contents (None: removed) that are
    used instead of what is on disk -- to validate a change before writing.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    dirs = [os.fspath(d) for d in dirs]
    if legacy_dir is None:
        legacy_dir = default_legacy_dir(dirs)
    t0 = time.perf_counter()
    loader = PolicyLoader(legacy_dir=legacy_dir, fs=FileSystem(overrides))
    error = None
    try:
        loader.load_dirs(dirs)
    except PolicyError as e:
        error = str(e)
    except RecursionError:
        error = "include nesting too deep"
    except Exception as e:  # never crash: fail closed
        log.exception("internal error loading policy")
        error = f"internal error loading policy: {type(e).__name__}: {e}"
    if error is not None:
        loader.hasher.update(b"error\0" + error.encode("utf-8", "surrogateescape"))
        log.error("error loading policy: %s", error)
    return PolicySnapshot(loader.rules, error=error, snapshot_id=loader.hasher.hexdigest(),
                          files=loader.files, dirs=dirs, warnings=loader.warnings,
                          load_seconds=time.perf_counter() - t0)


def failed_snapshot(reason: str) -> PolicySnapshot:
    """A snapshot that denies everything with ``reason``."""
    h = hashlib.sha256(b"error\0" + reason.encode("utf-8", "surrogateescape")).hexdigest()
    return PolicySnapshot((), error=reason, snapshot_id=h)


__all__ = [
    "DOM0_CLASS",
    "PolicySnapshot",
    "default_legacy_dir",
    "failed_snapshot",
    "load_policy",
]
