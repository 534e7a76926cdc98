"""Load and validate ``userdomains.yaml`` (DESIGN.md section 5).

The file is composed into a YAML *node* tree (not constructed into Python objects), so
every value keeps its line and column and every error can name them. Raw values are
called ``untrusted_*`` until they have passed their check.

Schema (all keys optional unless marked)::

    version: 1                         # optional, only 1 is known
    roles:                             # required
      <role>: [<method glob>, ...]     # non-empty list
    users:                             # required
      <user>:
        management: [<vm>, ...]        # VMs acting for the user through the Admin API
        gui: [<vm>, ...]               # the user's GUI domains (need role `gui`)
        officer: <bool>                # may call policy.*
        grants:
          - {role: <role>, sets: [<set>, ...], effect: allow|deny}   # effect defaults to allow
        create_into: <set>             # set joined by domains the user's VMs create
    sets:                              # required
      <set>: {domains: [<vm>, ...], tags: [<tag>, ...]}   # or null for an empty set
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import yaml

from .model import (
    CREATED_BY_PREFIX,
    GUI_ROLE,
    GUIVM_TAG_PREFIX,
    DomainSet,
    Grant,
    Issue,
    Principal,
    Role,
    Snapshot,
    User,
)
from .names import glob_error, ident_error, tag_error, vm_name_error

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C composer still keeps marks

TAG_STR = "tag:yaml.org,2002:str"
TAG_BOOL = "tag:yaml.org,2002:bool"
TAG_INT = "tag:yaml.org,2002:int"
TAG_NULL = "tag:yaml.org,2002:null"

MAX_BYTES = 8 * 1024 * 1024  # far above any sane file; bounds parse time and memory

TOP_KEYS = ("version", "roles", "users", "sets")
USER_KEYS = ("management", "gui", "officer", "grants", "create_into")
GRANT_KEYS = ("role", "sets", "effect")
SET_KEYS = ("domains", "tags")


class UserDomainsError(ValueError):
    """The file was refused. ``issues`` lists every problem found, with line numbers."""

    def __init__(self, issues: list[Issue], source: str = "userdomains.yaml") -> None:
        self.issues = tuple(sorted(issues, key=lambda i: (i.line, i.column)))
        self.source = source
        super().__init__("\n".join(i.format(source) for i in self.issues))

    @property
    def line(self) -> int:
        """Line of the first problem."""
        return self.issues[0].line

    @property
    def reason(self) -> str:
        """Reason of the first problem."""
        return self.issues[0].reason


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Checker:
    """Walks the node tree, collecting issues instead of stopping at the first one, so an
    officer fixing the file sees all problems at once."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []
        self._seen: set[int] = set()
        self.alias_seen = False

    def err(self, node: yaml.Node, reason: str) -> None:
        line, col = _pos(node)
        self.issues.append(Issue(line, col, reason))

    def warn(self, node: yaml.Node, reason: str) -> None:
        line, col = _pos(node)
        self.warnings.append(Issue(line, col, reason))

    def visit(self, node: yaml.Node) -> bool:
        # The composer resolves an alias to the very node object of its anchor; seeing a
        # node twice means an alias. Refusing them keeps the meaning of each line local
        # and rules out alias bombs.
        if id(node) in self._seen:
            # The node's mark is the anchor's; the alias itself is located afterwards.
            self.alias_seen = True
            return False
        self._seen.add(id(node))
        return True

    def mapping(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None = None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """Keys (checked to be unique strings, optionally from ``allowed``) -> (key, value)."""
        if not self.visit(node):
            return None
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what} must be a mapping")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for untrusted_key, value in node.value:
            if not isinstance(untrusted_key, yaml.ScalarNode) or untrusted_key.tag != TAG_STR:
                self.err(untrusted_key, f"keys of {what} must be plain strings")
                continue
            key = untrusted_key.value
            if key in out:
                first = out[key][0].start_mark.line + 1
                self.err(untrusted_key, f"duplicate key {key!r} in {what} (first on line {first})")
                continue
            if allowed is not None and key not in allowed:
                self.err(
                    untrusted_key,
                    f"unknown key {key!r} in {what} (expected one of: {', '.join(allowed)})",
                )
                continue
            out[key] = (untrusted_key, value)
        return out

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not self.visit(node):
            return None
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, f"{what} must be a string")
            return None
        if node.tag != TAG_STR:
            # e.g. `yes`, `null`, `007` resolve to other types in YAML 1.1
            self.err(node, f"{what} must be a string, got {node.value!r} (quote it)")
            return None
        return node.value

    def string_list(
        self,
        node: yaml.Node,
        what: str,
        check: Callable[[str], str | None],
        allow_empty: bool = True,
    ) -> list[tuple[str, yaml.Node]]:
        """Checked strings of a sequence, with their nodes; invalid items are dropped."""
        if not self.visit(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{what} must be a list")
            return []
        if not node.value and not allow_empty:
            self.err(node, f"{what} must not be empty")
        out: list[tuple[str, yaml.Node]] = []
        seen: set[str] = set()
        for item in node.value:
            untrusted = self.string(item, f"each item of {what}")
            if untrusted is None:
                continue
            problem = check(untrusted)
            if problem is not None:
                self.err(item, problem)
                continue
            if untrusted in seen:
                self.err(item, f"{untrusted!r} appears twice in {what}")
                continue
            seen.add(untrusted)
            out.append((untrusted, item))
        return out

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        if not self.visit(node):
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag != TAG_BOOL:
            self.err(node, f"{what} must be true or false")
            return None
        return node.value.lower() in ("true", "yes", "on", "y")


def _locate_aliases(text: str, c: _Checker) -> None:
    """Report each alias at its own line (only the event stream knows where it is)."""
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            line, col = event.start_mark.line + 1, event.start_mark.column + 1
            c.issues.append(Issue(line, col, "YAML anchors and aliases are not allowed"))


def _principal_vm_error(name: str) -> str | None:
    problem = vm_name_error(name)
    if problem is None and name == "dom0":
        # dom0's own calls bypass the ACL; listing it would suggest it is constrained.
        return "dom0 is the AdminVM and cannot act for a user"
    return problem


def _member_vm_error(name: str) -> str | None:
    problem = vm_name_error(name)
    if problem is None and name == "dom0":
        return "dom0 cannot be a member of a domain set"
    return problem


def parse(data: str | bytes, source: str = "userdomains.yaml") -> Snapshot:
    """Validate ``data`` (the file's contents) and build a :class:`Snapshot`.

    Raises :class:`UserDomainsError` naming every problem with its line.
    """
    if isinstance(data, str):
        raw = data.encode("utf-8")
        text = data
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserDomainsError([Issue(1, 1, f"file is not valid UTF-8: {e}")], source) from None
    if len(raw) > MAX_BYTES:
        raise UserDomainsError([Issue(1, 1, f"file is larger than {MAX_BYTES} bytes")], source)

    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = " ".join(str(x) for x in (e.context, e.problem) if x) or "YAML syntax error"
        raise UserDomainsError([Issue(line, col, f"YAML syntax error: {reason}")], source) from None
    except yaml.YAMLError as e:
        raise UserDomainsError([Issue(1, 1, f"YAML error: {e}")], source) from None
    except RecursionError:
        # only the pure-Python composer recurses; libyaml stops at 1000 levels itself
        raise UserDomainsError([Issue(1, 1, "YAML nesting is too deep")], source) from None
    if root is None:
        raise UserDomainsError(
            [Issue(1, 1, "file is empty: expected a mapping with roles, users and sets")], source
        )

    c = _Checker()
    top = c.mapping(root, "the top level", TOP_KEYS)
    if top is None:
        raise UserDomainsError(c.issues, source)
    for key in ("roles", "users", "sets"):
        if key not in top:
            c.err(root, f"missing required key {key!r} at the top level")

    if "version" in top:
        vnode = top["version"][1]
        if not (isinstance(vnode, yaml.ScalarNode) and vnode.tag == TAG_INT and vnode.value == "1"):
            c.err(vnode, "unsupported version (only 1 is known)")

    roles = _roles(c, top["roles"][1]) if "roles" in top else {}
    sets = _sets(c, top["sets"][1]) if "sets" in top else {}
    users = _users(c, top["users"][1], roles, sets) if "users" in top else {}

    principals: dict[str, Principal] = {}
    owner_line: dict[str, int] = {}
    if "users" in top:
        _principals(c, top["users"][1], users, principals, owner_line)

    if c.alias_seen:
        _locate_aliases(text, c)

    if c.issues:
        raise UserDomainsError(c.issues, source)

    return _build(raw, text, source, roles, users, sets, principals, c.warnings)


def load(path: str | os.PathLike[str]) -> Snapshot:
    """Read and :func:`parse` the file at ``path``. OSError propagates (caller fails closed)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    return parse(raw, source=os.fspath(path))


def _roles(c: _Checker, node: yaml.Node) -> dict[str, Role]:
    out: dict[str, Role] = {}
    entries = c.mapping(node, "roles")
    if entries is None:
        return out
    for name, (knode, vnode) in entries.items():
        problem = ident_error(name, "role")
        if problem:
            c.err(knode, problem)
            continue
        patterns = c.string_list(vnode, f"the patterns of role {name!r}", glob_error, False)
        out[name] = Role(name, tuple(p for p, _ in patterns), knode.start_mark.line + 1)
    return out


def _sets(c: _Checker, node: yaml.Node) -> dict[str, DomainSet]:
    out: dict[str, DomainSet] = {}
    entries = c.mapping(node, "sets")
    if entries is None:
        return out
    for name, (knode, vnode) in entries.items():
        problem = ident_error(name, "set")
        if problem:
            c.err(knode, problem)
            continue
        domains: list[tuple[str, yaml.Node]] = []
        tags: list[tuple[str, yaml.Node]] = []
        if not (isinstance(vnode, yaml.ScalarNode) and vnode.tag == TAG_NULL):
            body = c.mapping(vnode, f"set {name!r}", SET_KEYS)
            if body is None:
                continue
            if "domains" in body:
                domains = c.string_list(
                    body["domains"][1], f"the domains of set {name!r}", _member_vm_error
                )
            if "tags" in body:
                tags = c.string_list(body["tags"][1], f"the tags of set {name!r}", tag_error)
        out[name] = DomainSet(
            name,
            frozenset(d for d, _ in domains),
            frozenset(t for t, _ in tags),
            knode.start_mark.line + 1,
        )
    return out


def _users(
    c: _Checker, node: yaml.Node, roles: dict[str, Role], sets: dict[str, DomainSet]
) -> dict[str, User]:
    out: dict[str, User] = {}
    entries = c.mapping(node, "users")
    if entries is None:
        return out
    for name, (knode, vnode) in entries.items():
        problem = ident_error(name, "user")
        if problem:
            c.err(knode, problem)
            continue
        body = c.mapping(vnode, f"user {name!r}", USER_KEYS)
        if body is None:
            continue
        management: list[tuple[str, yaml.Node]] = []
        gui: list[tuple[str, yaml.Node]] = []
        if "management" in body:
            management = c.string_list(
                body["management"][1], f"the management VMs of user {name!r}", _principal_vm_error
            )
        if "gui" in body:
            gui = c.string_list(body["gui"][1], f"the GUI VMs of user {name!r}", _principal_vm_error)
            if gui and GUI_ROLE not in roles:
                c.err(body["gui"][0], f"user {name!r} has GUI VMs but no role {GUI_ROLE!r} is defined")
        officer = False
        if "officer" in body:
            officer = bool(c.boolean(body["officer"][1], f"officer of user {name!r}"))
            if officer and not management:
                c.warn(body["officer"][0], f"officer {name!r} has no management VM to act from")
        grants: list[Grant] = []
        if "grants" in body:
            grants = _grants(c, body["grants"][1], name, roles, sets)
        create_into: str | None = None
        if "create_into" in body:
            cnode = body["create_into"][1]
            untrusted = c.string(cnode, f"create_into of user {name!r}")
            if untrusted is not None:
                if untrusted not in sets:
                    c.err(cnode, f"create_into of user {name!r} names unknown set {untrusted!r}")
                else:
                    create_into = untrusted
                    granted = {s for g in grants if g.effect == "allow" for s in g.sets}
                    if create_into not in granted:
                        c.warn(
                            cnode,
                            f"user {name!r} creates into set {create_into!r} but holds no "
                            "allow grant on it, so created domains will be out of reach",
                        )
        out[name] = User(
            name,
            tuple(m for m, _ in management),
            tuple(g for g, _ in gui),
            officer,
            tuple(grants),
            create_into,
            knode.start_mark.line + 1,
        )
    return out


def _grants(
    c: _Checker, node: yaml.Node, user: str, roles: dict[str, Role], sets: dict[str, DomainSet]
) -> list[Grant]:
    out: list[Grant] = []
    if not c.visit(node):
        return out
    if not isinstance(node, yaml.SequenceNode):
        c.err(node, f"grants of user {user!r} must be a list")
        return out
    for index, gnode in enumerate(node.value):
        body = c.mapping(gnode, f"grant #{index + 1} of user {user!r}", GRANT_KEYS)
        if body is None:
            continue
        ok = True
        role: str | None = None
        if "role" not in body:
            c.err(gnode, f"grant #{index + 1} of user {user!r} has no role")
            ok = False
        else:
            rnode = body["role"][1]
            role = c.string(rnode, "role")
            if role is not None and role not in roles:
                c.err(rnode, f"grant #{index + 1} of user {user!r} names unknown role {role!r}")
                ok = False
        granted: list[str] = []
        if "sets" not in body:
            c.err(gnode, f"grant #{index + 1} of user {user!r} has no sets")
            ok = False
        else:
            for s, snode in c.string_list(
                body["sets"][1], f"the sets of grant #{index + 1}", lambda s: None, False
            ):
                if s not in sets:
                    c.err(snode, f"grant #{index + 1} of user {user!r} names unknown set {s!r}")
                    ok = False
                granted.append(s)
        effect = "allow"
        if "effect" in body:
            enode = body["effect"][1]
            untrusted = c.string(enode, "effect")
            if untrusted not in ("allow", "deny"):
                if untrusted is not None:
                    c.err(enode, f"effect must be 'allow' or 'deny', not {untrusted!r}")
                ok = False
            else:
                effect = untrusted
        if ok and role is not None and granted:
            out.append(
                Grant(user, index, role, tuple(granted), effect, gnode.start_mark.line + 1)  # type: ignore[arg-type]
            )
    return out


def _principals(
    c: _Checker,
    node: yaml.Node,
    users: dict[str, User],
    principals: dict[str, Principal],
    owner_line: dict[str, int],
) -> None:
    """Map each VM to the one user it acts for; a VM acting for two users (or in two
    capacities) is refused, since identity must be unambiguous."""
    for ukey, uval in node.value if isinstance(node, yaml.MappingNode) else ():
        user = users.get(ukey.value) if isinstance(ukey, yaml.ScalarNode) else None
        if user is None or not isinstance(uval, yaml.MappingNode):
            continue
        for kkey, kval in uval.value:
            kind = kkey.value if isinstance(kkey, yaml.ScalarNode) else None
            if kind not in ("management", "gui") or not isinstance(kval, yaml.SequenceNode):
                continue
            for item in kval.value:
                vm = item.value if isinstance(item, yaml.ScalarNode) else None
                if vm not in (user.management if kind == "management" else user.gui):
                    continue
                prev = principals.get(vm)
                if prev is not None:
                    c.err(
                        item,
                        f"VM {vm!r} already acts for user {prev.user!r} as {prev.kind} "
                        f"(line {owner_line[vm]}); a VM may act for one user in one capacity",
                    )
                    continue
                principals[vm] = Principal(
                    vm, user.name, kind, user.officer and kind == "management"  # type: ignore[arg-type]
                )
                owner_line[vm] = item.start_mark.line + 1


def _build(
    raw: bytes,
    text: str,
    source: str,
    roles: dict[str, Role],
    users: dict[str, User],
    sets: dict[str, DomainSet],
    principals: dict[str, Principal],
    warnings: list[Issue],
) -> Snapshot:
    by_name: dict[str, set[str]] = defaultdict(set)
    by_tag: dict[str, set[str]] = defaultdict(set)
    sel_names: dict[str, set[str]] = {s: set(ds.domains) for s, ds in sets.items()}
    sel_tags: dict[str, set[str]] = {s: set(ds.tags) for s, ds in sets.items()}
    for s, ds in sets.items():
        for d in ds.domains:
            by_name[d].add(s)
        for t in ds.tags:
            by_tag[t].add(s)
    # created-by-<vm> is just one more tag rule of the creator's create_into set, so the
    # hot path needs no special case for it.
    for u in users.values():
        if u.create_into is None:
            continue
        for vm in u.management:
            tag = CREATED_BY_PREFIX + vm
            by_tag[tag].add(u.create_into)
            sel_tags[u.create_into].add(tag)
    gui_by_tag = {GUIVM_TAG_PREFIX + p.vm: p.vm for p in principals.values() if p.kind == "gui"}

    def frozen(d: dict[str, set[str]]) -> MappingProxyType[str, frozenset[str]]:
        return MappingProxyType({k: frozenset(v) for k, v in d.items()})

    return Snapshot(
        id=hashlib.sha256(raw).hexdigest(),
        source=source,
        text=text,
        roles=MappingProxyType(roles),
        users=MappingProxyType(users),
        sets=MappingProxyType(sets),
        principals=MappingProxyType(principals),
        warnings=tuple(warnings),
        _by_name=frozen(by_name),
        _by_tag=frozen(by_tag),
        _gui_by_tag=MappingProxyType(gui_by_tag),
        _selectors=MappingProxyType(
            {s: (frozenset(sel_names[s]), frozenset(sel_tags[s])) for s in sets}
        ),
    )
