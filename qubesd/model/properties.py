"""The property system shared by domains and the app (spec/admin-api.md 6.2).

A `Prop` declares a property once: its wire type, default (a value or a function of the
holder), load stage and order, documentation and validation. A `PropertyHolder` keeps
only the explicitly set values; reading an unset property computes its default each
time, so ``default=True`` on the wire always means "not explicitly set".
"""

from collections.abc import Callable
from typing import Any, ClassVar

from qubesd.exc import QubesNoSuchPropertyError, QubesPropertyValueError, QubesValueError
from qubesd.model.validate import is_printable, parse_bool, validate_name

NO_DEFAULT = object()

#: wire type names, in the order upstream picks them (spec 3.2)
VM, INT, BOOL, LABEL, STR = "vm", "int", "bool", "label", "str"


class Prop:
    __slots__ = (
        "allow_none",
        "check",
        "clone",
        "default",
        "doc",
        "kind",
        "name",
        "order",
        "read_only",
        "stage",
        "stateless",
        "write_once",
    )

    def __init__(self, name: str, kind: str = STR, default: Any = NO_DEFAULT, *,
                 stage: int = 2, order: int = 0, doc: str = "", write_once: bool = False,
                 stateless: bool = False, allow_none: bool = True,
                 check: Callable[[Any, "Prop", Any], Any] | None = None,
                 read_only: bool = False, clone: bool = True) -> None:
        self.name, self.kind, self.default = name, kind, default
        self.stage, self.order, self.doc = stage, order, doc
        self.write_once, self.stateless, self.allow_none = write_once, stateless, allow_none
        self.check, self.read_only, self.clone = check, read_only, clone

    @property
    def sort_key(self) -> tuple:
        return (self.stage, self.order, self.name)

    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT

    def compute_default(self, holder) -> Any:
        if self.default is NO_DEFAULT:
            raise AttributeError(self.name)
        if callable(self.default):
            return self.default(holder)
        return self.default

    def sanitize(self, holder, untrusted_value: bytes) -> Any:
        """Turn a Set payload into a typed value, before any permission is asked."""
        try:
            untrusted_text = untrusted_value.decode("ascii")
        except UnicodeDecodeError:
            raise QubesValueError("Non-ASCII bytes in property value") from None
        if self.kind == BOOL:
            return parse_bool(untrusted_text)
        if self.kind == INT:
            try:
                return int(untrusted_text)
            except ValueError:
                raise QubesValueError("Failed to parse property value as int") from None
        if self.kind == VM:
            if untrusted_text == "":
                return None
            return validate_name(untrusted_text)
        if not is_printable(untrusted_text):
            raise QubesValueError("Invalid characters in property value")
        return untrusted_text


def props_table(*props: Prop, base: dict[str, Prop] | None = None,
                drop: tuple[str, ...] = ()) -> dict[str, Prop]:
    """Build a class's property table, inheriting ``base`` and sorted in API order."""
    table = dict(base or {})
    for name in drop:
        table.pop(name, None)
    for prop in props:
        table[prop.name] = prop
    return dict(sorted(table.items(), key=lambda item: item[1].sort_key))


class PropertyHolder:
    """Explicit values plus declared defaults, with events on every change."""

    PROPS: ClassVar[dict[str, Prop]] = {}

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    # -- what subclasses provide --------------------------------------------------
    def _fire(self, event: str, pre_event: bool = False, **kwargs) -> None:
        raise NotImplementedError

    def _changed(self) -> None:
        """Called after every change, e.g. to invalidate a cached serialisation."""

    def holder_label(self) -> str:
        raise NotImplementedError

    # -- reading ------------------------------------------------------------------
    def prop(self, name: str) -> Prop:
        try:
            return self.PROPS[name]
        except KeyError:
            raise QubesNoSuchPropertyError(self.holder_label(), name) from None

    def get(self, name: str) -> Any:
        """The effective value; AttributeError when unset and without default."""
        values = self._values
        if name in values:
            return values[name]
        return self.PROPS[name].compute_default(self)

    def get_or(self, name: str, fallback: Any) -> Any:
        try:
            return self.get(name)
        except (AttributeError, KeyError):  # unset without default, or not of this class
            return fallback

    def is_default(self, name: str) -> bool:
        return name not in self._values

    def explicit_items(self):
        return self._values.items()

    # -- writing ------------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        """Validate and store an explicit value, firing pre-set and set events."""
        prop = self.prop(name)
        if prop.stateless or prop.read_only:
            raise QubesPropertyValueError(
                self, name, value,
                f"property {name!r} on {type(self).__name__} instance cannot be set")
        if prop.write_once and name in self._values and self._values[name] != value:
            raise QubesPropertyValueError(
                self, name, value, f"property {name!r} is write-once and already set")
        if value is None and prop.kind == VM and not prop.allow_none:
            raise QubesPropertyValueError(self, name, value,
                                          f"Property {name!r} cannot be set to None")
        if prop.check is not None:
            value = prop.check(self, prop, value)
        kwargs = {"name": name, "newvalue": value}
        try:
            kwargs["oldvalue"] = self.get(name)
        except AttributeError:
            pass
        self._fire(f"property-pre-set:{name}", pre_event=True, **kwargs)
        self._values[name] = value
        self._changed()
        self._fire(f"property-set:{name}", **kwargs)

    def reset(self, name: str) -> None:
        prop = self.prop(name)
        if prop.stateless or prop.read_only:
            raise QubesPropertyValueError(
                self, name, None,
                f"property {name!r} on {type(self).__name__} instance cannot be reset")
        kwargs = {"name": name}
        if name in self._values:
            kwargs["oldvalue"] = self._values[name]
        self._fire(f"property-pre-reset:{name}", pre_event=True, **kwargs)
        self._fire(f"property-pre-del:{name}", pre_event=True, **kwargs)
        self._values.pop(name, None)
        self._changed()
        self._fire(f"property-reset:{name}", **kwargs)
        self._fire(f"property-del:{name}", **kwargs)

    def load_value(self, name: str, value: Any) -> None:
        """Store a value read from qubes.xml: no events, no checks beyond the type."""
        self._values[name] = value

    # -- wire rendering -----------------------------------------------------------
    def wire_get(self, name: str) -> str:
        """``default=<bool> type=<t> <value>`` exactly as admin.vm.property.Get."""
        prop = self.prop(name)
        try:
            value = self.get(name)
        except AttributeError:
            value = None
        return (f"default={name not in self._values} type={prop.kind} "
                f"{'' if value is None else str(value)}")
