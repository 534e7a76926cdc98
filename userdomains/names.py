"""Syntax rules for the names that appear in ``userdomains.yaml``.

Each check returns ``None`` when the value is fine, else the reason as a sentence, so the
loader can attach the YAML line to it.
"""

from __future__ import annotations

import re

# Qubes' validate_name (spec/admin-api.md 6.3), in upstream order so messages match.
_VM_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")
_VM_NAME_RESERVED = frozenset({"Domain-0", "none", "default"})

# Tags as qubesd accepts them (admin.vm.tag.Set).
TAG_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Users, roles and sets end up inside Casbin CSV-like lines ("p, user:alice, set:x, ...");
# keeping them to this alphabet means no comma, colon or space can ever split a line.
IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

# Method globs: only characters that occur in Admin API method names plus `*` and `?`.
# Bracket classes and backslash escapes are refused on purpose: they are the part of
# Casbin's globMatch whose corner cases differ from fnmatch/regex, and nobody needs them
# for method names (`admin.vm.property.[GS]et` is just two patterns).
GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?-]+$")


def vm_name_error(name: str) -> str | None:
    """Why ``name`` is not a valid VM name per Qubes rules, or None."""
    if len(name) > 31:
        return "VM name must be shorter than 32 characters"
    if name[:1] in ("_", ".", "-") or name[:1].isdigit():
        return "VM name cannot start with hyphen, underscore, dot or numbers"
    if not _VM_NAME_RE.match(name):
        return "VM name contains illegal characters"
    if name in _VM_NAME_RESERVED or name.endswith("-dm"):
        return f"VM name {name!r} is reserved"
    return None


def ident_error(name: str, what: str) -> str | None:
    """Why ``name`` is not a valid user/role/set name, or None."""
    if not IDENT_RE.match(name):
        return (
            f"invalid {what} name {name!r}: must start with a letter, contain only "
            "letters, digits, '_', '.', '-', and be at most 64 characters"
        )
    return None


def tag_error(tag: str) -> str | None:
    """Why ``tag`` is not a valid Qubes tag, or None."""
    if not TAG_RE.match(tag):
        return f"invalid tag {tag!r}: tags contain only letters, digits, '_' and '-'"
    return None


def glob_error(pattern: str) -> str | None:
    """Why ``pattern`` is not an acceptable method glob, or None."""
    if not pattern:
        return "empty method pattern"
    if not GLOB_RE.match(pattern):
        return (
            f"invalid method pattern {pattern!r}: only letters, digits, '.', '_', '-' "
            "and the wildcards '*' and '?' are allowed"
        )
    if pattern.startswith("policy.") or pattern == "policy":
        return (
            f"method pattern {pattern!r}: policy.* services are reserved to officers "
            "(officer: true) and cannot be granted through a role"
        )
    return None
