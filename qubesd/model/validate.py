"""Validators for names and values that come from callers (spec/admin-api.md 6.3, 2.6)."""

import re
import string

from qubesd.exc import ProtocolError, QubesInvalidTagError, QubesValueError

_VM_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_.-]*\Z")
_TAG = re.compile(r"[A-Za-z0-9_-]+\Z")
_LABEL = re.compile(r"[A-Za-z0-9_.-]+\Z")
_UUID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\Z")
_PRINTABLE = frozenset(string.printable)


def validate_name(untrusted_name: str) -> str:
    """Return the VM name if it follows upstream's rules, else raise QubesValueError."""
    if not isinstance(untrusted_name, str):
        raise QubesValueError("VM name must be string")
    if len(untrusted_name) > 31:
        raise QubesValueError("VM name must be shorter than 32 characters")
    if not untrusted_name or untrusted_name[0] in "0123456789_.-":
        raise QubesValueError("VM name cannot start with hyphen, underscore, dot or numbers")
    if not _VM_NAME.match(untrusted_name):
        raise QubesValueError("VM name contains illegal characters")
    if untrusted_name in ("Domain-0", "none", "default") or untrusted_name.endswith("-dm"):
        raise QubesValueError(f"VM name cannot be {untrusted_name!r}")
    return untrusted_name


def is_uuid(untrusted_value: str) -> bool:
    return len(untrusted_value) == 36 and bool(_UUID.match(untrusted_value))


def validate_tag(untrusted_tag: str) -> str:
    if not untrusted_tag:
        raise QubesInvalidTagError("tag cannot be empty")
    if not _TAG.match(untrusted_tag):
        raise QubesInvalidTagError("disallowed characters")
    return untrusted_tag


def is_label_name(untrusted_name: str) -> bool:
    return bool(_LABEL.match(untrusted_name))


def is_printable(untrusted_value: str) -> bool:
    return all(c in _PRINTABLE for c in untrusted_value)


def parse_bool(untrusted_value: str) -> bool:
    lowered = untrusted_value.lower()
    if lowered in ("0", "no", "false", "off"):
        return False
    if lowered in ("1", "yes", "true", "on"):
        return True
    raise QubesValueError(f"Invalid literal for boolean value: {untrusted_value!r}")


def validate_number(untrusted_value: str, what: str, allow_negative: bool = False) -> int:
    """Upstream's validate_number: digits only, no leading zeros, fewer than 20 chars."""
    value = untrusted_value
    if allow_negative and value.startswith("-"):
        value = value[1:]
    if not value.isascii() or not value.isdigit():
        raise ProtocolError(f"{what.capitalize()} contains non ASCII digits")
    if len(value) >= 20:
        raise ProtocolError(f"{what.capitalize()} is too long")
    if value != "0" and value.startswith("0"):
        raise ProtocolError(f"{what.capitalize()} contains spurious leading zeros")
    return int(untrusted_value)
