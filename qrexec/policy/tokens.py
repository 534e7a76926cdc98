"""Qube specification tokens (spec section 2): one small class per kind.

A token is parsed in one of four contexts (``source``, ``target``,
``redirect``, ``intendedtarget``); each class lists the contexts it may
appear in.  Matching is done through *index keys*: a rule token has exactly
one key (or None: never matches), a request value has a small set of keys
(:func:`value_keys`), and the token matches iff its key is in the set.  The
same keys drive the rule index of the snapshot, so the index and the plain
``match`` can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import PolicySyntaxError
from .sysinfo import (
    DOM0_CLASS,
    K_ADMINVM,
    K_ANYVM,
    K_DEFAULT,
    K_DISPVM,
    K_STAR,
    P_DVM_NAME,
    P_DVM_TAG,
    P_NAME,
    P_TAG,
    P_TYPE,
    SystemInfo,
)

SOURCE = "source"
TARGET = "target"
REDIRECT = "redirect"
INTENDED = "intendedtarget"
ALL_CONTEXTS = frozenset({SOURCE, TARGET, REDIRECT, INTENDED})


class Token:
    """Base class: ``text`` is the token as written."""

    __slots__ = ("text",)
    #: contexts where the token is legal
    CONTEXTS: frozenset[str] = frozenset()

    def __init__(self, text: str) -> None:
        self.text = text

    def key(self, context: str) -> str | None:
        """Index key when used as a rule column (None: matches nothing)."""
        raise NotImplementedError

    def match(self, value: str, *, context: str, source: str | None,
              sysinfo: SystemInfo) -> bool:
        """Whether this rule token matches the (normalised) request value."""
        k = self.key(context)
        if k is None:
            return False
        return k in value_keys(value, source=source, sysinfo=sysinfo)

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        """Targets this token stands for, for the ask prompt (spec 3.3)."""
        return ()

    @property
    def is_keyword(self) -> bool:
        return self.text.startswith("@")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.text!r}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Token):
            return type(self) is type(other) and self.text == other.text
        if isinstance(other, str):
            return self.text == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.text)


class Literal(Token):
    """A qube name or ``uuid:<uuid>``; ``dom0`` and uuid 0 join the admin class."""

    __slots__ = ("is_dom0",)
    CONTEXTS = ALL_CONTEXTS

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.is_dom0 = text in DOM0_CLASS

    def key(self, context: str) -> str | None:
        return K_ADMINVM if self.is_dom0 else P_NAME + self.text

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        info = sysinfo.get(self.text)
        if info is not None:
            return (info.name,)
        return ()


class Star(Token):
    """``*``: anything, dom0 and keywords included."""

    __slots__ = ()
    CONTEXTS = frozenset({SOURCE, TARGET})

    def key(self, context: str) -> str | None:
        return K_STAR

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        out = [d.name for d in sysinfo]
        out.extend("@dispvm:" + t for t in sysinfo.dispvm_templates)
        out.append("@dispvm")
        return out


class AnyVM(Token):
    """``@anyvm``: anything but the admin VM."""

    __slots__ = ()
    CONTEXTS = frozenset({SOURCE, TARGET})

    def key(self, context: str) -> str | None:
        return K_ANYVM

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        out = [d.name for d in sysinfo if not d.is_dom0]
        out.extend("@dispvm:" + t for t in sysinfo.dispvm_templates)
        out.append("@dispvm")
        return out


class AdminVM(Token):
    """``@adminvm``: dom0."""

    __slots__ = ()
    CONTEXTS = ALL_CONTEXTS

    def key(self, context: str) -> str | None:
        return K_ADMINVM

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        return ("@adminvm",)


class DefaultVM(Token):
    """``@default``: the caller named no target, or an unknown one."""

    __slots__ = ()
    CONTEXTS = frozenset({TARGET, INTENDED})

    def key(self, context: str) -> str | None:
        return K_DEFAULT


class DispVM(Token):
    """``@dispvm``: a new disposable from the source's ``default_dispvm``."""

    __slots__ = ()
    CONTEXTS = frozenset({TARGET, REDIRECT, INTENDED})

    def key(self, context: str) -> str | None:
        return K_DISPVM

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        return ("@dispvm",)


class _Prefixed(Token):
    __slots__ = ("value",)
    PREFIX = ""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.value = text[len(self.PREFIX):]


class TagVM(_Prefixed):
    """``@tag:<tag>``: domains carrying the tag."""

    __slots__ = ()
    PREFIX = "@tag:"
    CONTEXTS = frozenset({SOURCE, TARGET})

    def key(self, context: str) -> str | None:
        return P_TAG + self.value

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        v = self.value
        return [d.name for d in sysinfo if v in d.tags]


class TypeVM(_Prefixed):
    """``@type:<type>``: domains of that class."""

    __slots__ = ()
    PREFIX = "@type:"
    CONTEXTS = frozenset({SOURCE, TARGET})

    def key(self, context: str) -> str | None:
        return P_TYPE + self.value

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        v = self.value
        return [d.name for d in sysinfo if d.type == v]


class DispVMTemplate(_Prefixed):
    """``@dispvm:<name or uuid:...>``: a disposable of that template."""

    __slots__ = ()
    PREFIX = "@dispvm:"
    CONTEXTS = ALL_CONTEXTS

    def key(self, context: str) -> str | None:
        if context == SOURCE:
            return None  # a request source is never a disposable keyword
        return P_DVM_NAME + self.value

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        info = sysinfo.get(self.value)
        if info is not None and info.template_for_dispvms:
            return ("@dispvm:" + info.name,)
        return ()


class DispVMTag(_Prefixed):
    """``@dispvm:@tag:<tag>``: a disposable of any template carrying the tag."""

    __slots__ = ()
    PREFIX = "@dispvm:@tag:"
    CONTEXTS = frozenset({SOURCE, TARGET})

    def key(self, context: str) -> str | None:
        if context == SOURCE:
            return None
        return P_DVM_TAG + self.value

    def expand(self, sysinfo: SystemInfo) -> Iterable[str]:
        v = self.value
        return ["@dispvm:" + d.name for d in sysinfo if d.template_for_dispvms and v in d.tags]


_EXACT: dict[str, type[Token]] = {
    "*": Star, "@anyvm": AnyVM, "@adminvm": AdminVM, "@default": DefaultVM, "@dispvm": DispVM,
}
# longest prefix first
_PREFIXES: tuple[type[_Prefixed], ...] = (DispVMTag, DispVMTemplate, TagVM, TypeVM)


def parse_token(untrusted_text: str, context: str, *, filepath: str | Path | None = None,
                lineno: int | None = None) -> Token:
    """Parse one token in ``context``; raise :class:`PolicySyntaxError` if invalid."""
    text = untrusted_text
    if not text:
        raise PolicySyntaxError(filepath, lineno, f"invalid empty {context} token")
    cls: type[Token] | None = _EXACT.get(text)
    if cls is None:
        if not text.startswith("@"):
            cls = Literal
        else:
            for pcls in _PREFIXES:
                if text.startswith(pcls.PREFIX):
                    value = text[len(pcls.PREFIX):]
                    if not value:
                        raise PolicySyntaxError(
                            filepath, lineno, f"invalid empty {pcls.PREFIX} token: {text!r}")
                    if value.startswith("@"):
                        continue  # maybe a longer prefix; else invalid
                    cls = pcls
                    break
    if cls is None or context not in cls.CONTEXTS:
        raise PolicySyntaxError(filepath, lineno, f"invalid {context} token: {text!r}")
    return cls(text)


def dispvm_keys(name: str, sysinfo: SystemInfo) -> list[str]:
    """Keys of ``@dispvm:<name>`` as a request value."""
    info = sysinfo.get(name)
    if info is None:
        return [P_DVM_NAME + name]
    keys = [P_DVM_NAME + info.name]
    if info.uuid:
        keys.append(P_DVM_NAME + "uuid:" + info.uuid)
    if info.template_for_dispvms:
        keys.extend(P_DVM_TAG + t for t in info.tags)
    return keys


def value_keys(value: str, *, source: str | None, sysinfo: SystemInfo) -> tuple[str, ...]:
    """Index keys of a normalised request value (source or target).

    ``source`` is needed for ``@dispvm`` (the source's ``default_dispvm``).
    """
    if not value.startswith("@"):
        return sysinfo.plain_keys(value)
    if value == "@adminvm":
        return (K_STAR, K_ADMINVM)
    if value == "@default":
        return (K_STAR, K_ANYVM, K_DEFAULT)
    if value == "@dispvm":
        keys = [K_STAR, K_ANYVM, K_DISPVM]
        src = sysinfo.get(source) if source is not None else None
        if src is not None and src.default_dispvm:
            keys.extend(dispvm_keys(src.default_dispvm, sysinfo))
        return tuple(keys)
    if value.startswith("@dispvm:") and len(value) > 8 and value[8] != "@":
        return (K_STAR, K_ANYVM, *dispvm_keys(value[8:], sysinfo))
    return (K_STAR,)
