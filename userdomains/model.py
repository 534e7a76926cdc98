"""The validated, immutable contents of ``userdomains.yaml``.

A :class:`Snapshot` is built once per file version by :mod:`userdomains.loader` and then
only read, by many threads at once, so everything in it is frozen and the lookups the
hot path needs (name -> sets, tag -> sets) are precomputed here.

Set membership is *derived*, never stored: qubesd passes a domain's name and tags and
the snapshot answers which sets it is in. A domain is in set S when

* S lists its name (``domains``),
* it carries one of S's tags (``tags``), or
* it carries ``created-by-<vm>`` where ``<vm>`` is a management VM of a user whose
  ``create_into`` is S.

GUI visibility is not a set: a domain carrying ``guivm-<vm>`` (kept in step with its
``guivm`` property by qubesd) is *displayed by* ``<vm>``; see :meth:`Snapshot.displayed_by`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

EMPTY: frozenset[str] = frozenset()

PrincipalKind = Literal["management", "gui"]
Effect = Literal["allow", "deny"]

CREATED_BY_PREFIX = "created-by-"
GUIVM_TAG_PREFIX = "guivm-"
GUI_ROLE = "gui"


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    patterns: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Grant:
    """One entry of a user's ``grants`` list."""

    user: str
    index: int  # position in the user's grants list, for reasons
    role: str
    sets: tuple[str, ...]
    effect: Effect
    line: int


@dataclass(frozen=True, slots=True)
class DomainSet:
    name: str
    domains: frozenset[str]
    tags: frozenset[str]
    line: int


@dataclass(frozen=True, slots=True)
class User:
    name: str
    management: tuple[str, ...]
    gui: tuple[str, ...]
    officer: bool
    grants: tuple[Grant, ...]
    create_into: str | None
    line: int


@dataclass(frozen=True, slots=True)
class Principal:
    """A VM acting for a user. The identity comes from the transport, never the caller."""

    vm: str
    user: str
    kind: PrincipalKind
    # Only management VMs of an officer user are officers: a GUI domain runs far more
    # code and never gets more than the `gui` role.
    officer: bool


@dataclass(frozen=True, slots=True)
class Issue:
    """A validation problem (or warning) tied to a place in the file."""

    line: int  # 1-based
    column: int  # 1-based
    reason: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}:{self.column}: {self.reason}"


@dataclass(frozen=True, eq=False)  # identity is `id`; the mappings are not hashable
class Snapshot:
    """One validated version of the multi-user file. Build with :func:`userdomains.parse`."""

    id: str  # sha256 hex of the file's bytes
    source: str
    text: str
    roles: Mapping[str, Role]
    users: Mapping[str, User]
    sets: Mapping[str, DomainSet]
    principals: Mapping[str, Principal]
    warnings: tuple[Issue, ...] = ()
    # Precomputed indexes (see module docstring); private to keep the public surface small.
    _by_name: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _by_tag: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _gui_by_tag: Mapping[str, str] = field(default_factory=dict, repr=False)
    _selectors: Mapping[str, tuple[frozenset[str], frozenset[str]]] = field(
        default_factory=dict, repr=False
    )

    # -- membership -------------------------------------------------------------------

    def sets_of(self, name: str, tags: Iterable[str] = ()) -> frozenset[str]:
        """The sets domain ``name`` with ``tags`` belongs to (explicit, tag, created-by)."""
        result = self._by_name.get(name, EMPTY)
        by_tag = self._by_tag
        for tag in tags:
            more = by_tag.get(tag)
            if more is not None:
                result = result | more
        return result

    def displayed_by(self, tags: Iterable[str]) -> frozenset[str]:
        """GUI VMs (known to this file) that display a domain carrying ``tags``."""
        gui = self._gui_by_tag
        return frozenset(gui[t] for t in tags if t in gui)

    def selectors(self, set_names: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
        """(names, tags) such that a domain is in one of ``set_names`` iff its name is in
        names or it carries one of tags. Lets a listing test membership of a whole group
        of sets with two lookups per domain instead of computing each domain's sets."""
        names: set[str] = set()
        tags: set[str] = set()
        for s in set_names:
            n, t = self._selectors[s]
            names |= n
            tags |= t
        return frozenset(names), frozenset(tags)

    def members(self, set_name: str, domains: Iterable[tuple[str, Iterable[str]]]) -> list[str]:
        """Names of the ``(name, tags)`` domains that are in ``set_name``."""
        names, tags = self._selectors[set_name]
        return [n for n, t in domains if n in names or not tags.isdisjoint(t)]

    # -- principals -------------------------------------------------------------------

    def principal_of(self, vm_name: str) -> Principal | None:
        """Who ``vm_name`` acts for, or None if it acts for nobody."""
        return self.principals.get(vm_name)

    def grants_of(self, user: str) -> tuple[Grant, ...]:
        return self.users[user].grants

    def users_of_set(self, set_name: str) -> frozenset[str]:
        """Users holding an allow grant on ``set_name``."""
        return frozenset(
            u.name
            for u in self.users.values()
            for g in u.grants
            if g.effect == "allow" and set_name in g.sets
        )

    @property
    def officers(self) -> frozenset[str]:
        """Names of officer users."""
        return frozenset(u.name for u in self.users.values() if u.officer)
