"""System information used for matching: the domains, their tags, types...

The input is upstream's ``internal.GetSystemInfo`` dict::

    {"domains": {name: {"tags": [...], "type": "AppVM",
                        "template_for_dispvms": bool, "default_dispvm": name|None,
                        "power_state": "Running", "uuid": "...", "guivm": ...,
                        "internal": ..., "relayvm": ..., "transport_rpc": ...}}}

:class:`SystemInfo` is immutable once built.  Building is linear and cheap
(one small object per domain, index keys computed lazily on first use), and
:meth:`SystemInfo.updated` builds a new object from an old one reusing every
unchanged domain record, for the frequent "one tag changed" case.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

DOM0_UUID = "00000000-0000-0000-0000-000000000000"
#: every spelling of the admin VM; a rule token in this class matches any member
DOM0_CLASS = frozenset({"dom0", "@adminvm", "uuid:" + DOM0_UUID})

# Index keys.  A rule token maps to exactly one key, a request value to a
# small set of keys; the rule matches the value iff its key is in that set.
# The first character tells the kind, so keys of different kinds never collide.
K_STAR = "*"
K_ANYVM = "@anyvm"
K_ADMINVM = "@adminvm"
K_DEFAULT = "@default"
K_DISPVM = "@dispvm"
P_NAME = "="  # literal name or uuid:...
P_TAG = "#"
P_TYPE = "%"
P_DVM_NAME = "D="  # @dispvm:<name or uuid:...>
P_DVM_TAG = "D#"  # @dispvm:@tag:<tag>

_UNKNOWN_KEYS_CACHE_MAX = 4096


def _bool(value: Any) -> bool:
    return bool(value)


class DomainInfo:
    """One domain of the system information (read-only)."""

    __slots__ = (
        "_keys",
        "default_dispvm",
        "guivm",
        "icon",
        "internal",
        "is_dom0",
        "label",
        "name",
        "power_state",
        "raw",
        "relayvm",
        "tags",
        "template_for_dispvms",
        "transport_rpc",
        "type",
        "uuid",
    )

    def __init__(self, name: str, untrusted_record: Mapping[str, Any]) -> None:
        rec = untrusted_record
        self.name = str(name)
        uuid = rec.get("uuid")
        self.uuid = None if uuid is None else str(uuid)
        tags = rec.get("tags") or ()
        if isinstance(tags, str):
            tags = (tags,)
        self.tags = frozenset(str(t) for t in tags)
        self.type = str(rec.get("type") or "")
        self.template_for_dispvms = _bool(rec.get("template_for_dispvms"))
        dd = rec.get("default_dispvm")
        self.default_dispvm = None if dd in (None, "") else str(dd)
        self.power_state = rec.get("power_state")
        self.guivm = rec.get("guivm")
        self.internal = rec.get("internal")
        self.relayvm = rec.get("relayvm")
        self.transport_rpc = rec.get("transport_rpc")
        self.icon = rec.get("icon")
        self.label = rec.get("label")
        self.raw = rec
        self.is_dom0 = self.name == "dom0" or self.uuid == DOM0_UUID
        self._keys: tuple[str, ...] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """Index keys of this domain used as a request source or target."""
        keys = self._keys
        if keys is None:
            if self.is_dom0:
                lst = [K_STAR, K_ADMINVM]
            else:
                lst = [K_STAR, K_ANYVM, P_NAME + self.name]
                if self.uuid:
                    lst.append(P_NAME + "uuid:" + self.uuid)
            lst.extend(P_TAG + t for t in self.tags)
            if self.type:
                lst.append(P_TYPE + self.type)
            keys = self._keys = tuple(lst)
        return keys

    @property
    def running(self) -> bool:
        return self.is_dom0 or self.power_state == "Running"

    def __repr__(self) -> str:
        return f"<DomainInfo {self.name}>"


class SystemInfo:
    """Immutable view of the domains, with lookups by name and by ``uuid:``."""

    __slots__ = ("_dispvm_templates", "_expand_cache", "_lookup", "_unknown_keys", "domains")

    def __init__(self, domains: Mapping[str, DomainInfo] | None = None) -> None:
        #: name -> DomainInfo
        self.domains: dict[str, DomainInfo] = dict(domains or {})
        lookup = dict(self.domains)
        for info in self.domains.values():
            if info.uuid:
                lookup["uuid:" + info.uuid] = info
        self._lookup = lookup
        self._dispvm_templates: tuple[str, ...] | None = None
        self._unknown_keys: dict[str, tuple[str, ...]] = {}
        self._expand_cache: dict[str, frozenset[str]] = {}

    # -- construction -----------------------------------------------------
    @classmethod
    def from_json(cls, untrusted_data: Mapping[str, Any]) -> SystemInfo:
        """Build from upstream's ``internal.GetSystemInfo`` dict.

        Entries filed under ``uuid:<uuid>`` (as the client library adds them)
        are skipped: uuid lookups are built in.
        """
        doms = untrusted_data.get("domains", {}) if isinstance(untrusted_data, Mapping) else {}
        if not isinstance(doms, Mapping):
            raise TypeError("system info: 'domains' is not a mapping")
        out = {}
        for name, rec in doms.items():
            if not isinstance(name, str) or name.startswith("uuid:"):
                continue
            if not isinstance(rec, Mapping):
                raise TypeError(f"system info: record of {name!r} is not a mapping")
            out[name] = DomainInfo(name, rec)
        return cls(out)

    def updated(self, changes: Mapping[str, Mapping[str, Any] | None]) -> SystemInfo:
        """New SystemInfo with some domains replaced (record) or removed (None).

        Unchanged domains are shared with this object, so the cost is a dict
        copy plus the changed records.
        """
        doms = dict(self.domains)
        for name, rec in changes.items():
            if rec is None:
                doms.pop(name, None)
            else:
                doms[name] = DomainInfo(name, rec)
        return SystemInfo(doms)

    def to_json(self) -> dict[str, Any]:
        """The upstream-shaped dict (the original records)."""
        return {"domains": {n: dict(d.raw) for n, d in self.domains.items()}}

    # -- lookups ----------------------------------------------------------
    def get(self, name_or_uuid: str) -> DomainInfo | None:
        """Record for a name or ``uuid:<uuid>``; None if unknown."""
        return self._lookup.get(name_or_uuid)

    def __contains__(self, name_or_uuid: object) -> bool:
        return name_or_uuid in self._lookup

    def __iter__(self) -> Iterator[DomainInfo]:
        return iter(self.domains.values())

    def __len__(self) -> int:
        return len(self.domains)

    def names(self) -> Iterable[str]:
        return self.domains.keys()

    @property
    def dispvm_templates(self) -> tuple[str, ...]:
        """Names of domains with ``template_for_dispvms``."""
        t = self._dispvm_templates
        if t is None:
            t = self._dispvm_templates = tuple(
                d.name for d in self.domains.values() if d.template_for_dispvms)
        return t

    def expand(self, token: Any) -> frozenset[str]:
        """``token.expand(self)`` as a frozenset, cached (this object is immutable)."""
        text = token.text
        out = self._expand_cache.get(text)
        if out is None:
            out = frozenset(token.expand(self))
            if len(self._expand_cache) < _UNKNOWN_KEYS_CACHE_MAX:
                self._expand_cache[text] = out
        return out

    def plain_keys(self, value: str) -> tuple[str, ...]:
        """Index keys of a plain (non-``@``) value such as a request source."""
        info = self._lookup.get(value)
        if info is not None:
            return info.keys
        keys = self._unknown_keys.get(value)
        if keys is None:
            if value in DOM0_CLASS:
                keys = (K_STAR, K_ADMINVM)
            else:
                keys = (K_STAR, K_ANYVM, P_NAME + value)
            if len(self._unknown_keys) < _UNKNOWN_KEYS_CACHE_MAX:
                self._unknown_keys[value] = keys
        return keys

    def same_domain(self, a: str, b: str) -> bool:
        """Whether names/uuids ``a`` and ``b`` designate the same domain."""
        if a == b:
            return True
        ia = self._lookup.get(a)
        return ia is not None and ia is self._lookup.get(b)

    def canonical(self, value: str) -> str:
        """Name for a name or ``uuid:``; the value itself if unknown."""
        info = self._lookup.get(value)
        return value if info is None else info.name
