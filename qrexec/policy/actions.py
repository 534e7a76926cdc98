"""Rule actions (spec 3.1, 3.3): ``allow``, ``deny`` and ``ask``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AccessDenied, PolicySyntaxError
from .request import Request, Resolution, normalise_target
from .sysinfo import DOM0_CLASS
from .tokens import REDIRECT, Token

if TYPE_CHECKING:  # pragma: no cover
    from .parser import Rule

TokenParser = Callable[[str, str, "str | Path | None", "int | None"], Token]


def _parse_bool(key: str, value: str, filepath: str | Path | None, lineno: int | None) -> bool:
    if value == "yes":
        return True
    if value == "no":
        return False
    raise PolicySyntaxError(filepath, lineno,
                            f"{key!r} is {value!r}, but can be only 'yes' or 'no'")


def _redirect(value: str, parse: TokenParser, filepath: str | Path | None,
              lineno: int | None) -> Token:
    if not value:
        raise PolicySyntaxError(filepath, lineno, "invalid empty redirect token")
    return parse(value, REDIRECT, filepath, lineno)


class Action:
    """Base of the three actions; holds the validated parameters."""

    __slots__ = ("autostart", "default_target", "notify", "target", "user")
    NAME = ""
    CLASS_NAME = ""
    PARAMS: frozenset[str] = frozenset()
    DEFAULT_NOTIFY = False

    def __init__(self) -> None:
        self.target: Token | None = None
        self.default_target: Token | None = None
        self.user: str | None = None
        self.notify: bool = self.DEFAULT_NOTIFY
        self.autostart: bool = True

    @classmethod
    def parse(cls, untrusted_params: Mapping[str, str], raw: list[str], parse: TokenParser,
              filepath: str | Path | None, lineno: int | None) -> Action:
        """Build from ``key -> value`` (already checked for syntax and duplicates)."""
        if any(k not in cls.PARAMS for k in untrusted_params):
            raise PolicySyntaxError(filepath, lineno,
                                    f"invalid parameters for action {cls.CLASS_NAME}: {raw}")
        self = cls()
        for key in ("notify", "autostart"):
            if key in untrusted_params:
                setattr(self, key, _parse_bool(key, untrusted_params[key], filepath, lineno))
        if "user" in untrusted_params:
            self.user = untrusted_params["user"] or None
        if "target" in untrusted_params:
            self.target = _redirect(untrusted_params["target"], parse, filepath, lineno)
        if "default_target" in untrusted_params:
            self.default_target = _redirect(untrusted_params["default_target"], parse,
                                            filepath, lineno)
        return self

    def params_text(self) -> str:
        """The parameters as they would be written in a policy file."""
        out = []
        if self.target is not None:
            out.append(f"target={self.target}")
        if self.default_target is not None:
            out.append(f"default_target={self.default_target}")
        if self.user is not None:
            out.append(f"user={self.user}")
        if self.notify != self.DEFAULT_NOTIFY:
            out.append("notify=" + ("yes" if self.notify else "no"))
        if not self.autostart:
            out.append("autostart=no")
        return " ".join(out)

    def __str__(self) -> str:
        p = self.params_text()
        return f"{self.NAME} {p}" if p else self.NAME

    def evaluate(self, rule: Rule, request: Request, snapshot: object) -> Resolution:
        raise NotImplementedError

    def _res(self, result: str, reason: str, rule: Rule, request: Request,
             **kw: object) -> Resolution:
        res = Resolution(result, reason, rule=(rule.filepath, rule.lineno), notify=self.notify,
                         user=self.user, autostart=self.autostart, service=request.service,
                         argument=request.argument, source=request.source,
                         requested_target=request.requested_target, **kw)  # type: ignore[arg-type]
        if request.caller != request.source:
            res.extra["caller"] = request.caller
        return res


def _autostart_ok(target: str, request: Request) -> bool:
    if target in DOM0_CLASS:
        return True
    if target.startswith("@"):
        return False  # a disposable would have to be started
    info = request.sysinfo.get(target)
    return info is not None and info.running


class Deny(Action):
    __slots__ = ()
    NAME = "deny"
    CLASS_NAME = "Deny"
    PARAMS = frozenset({"notify"})
    DEFAULT_NOTIFY = True

    def evaluate(self, rule: Rule, request: Request, snapshot: object) -> Resolution:
        res = self._res("deny", f"denied by policy {rule.filepath}:{rule.lineno}", rule, request)
        res.user = None
        return res


class Allow(Action):
    __slots__ = ("simple",)
    NAME = "allow"
    CLASS_NAME = "Allow"
    PARAMS = frozenset({"target", "user", "notify", "autostart"})

    def __init__(self) -> None:
        super().__init__()
        self.simple = False

    @classmethod
    def parse(cls, untrusted_params: Mapping[str, str], raw: list[str], parse: TokenParser,
              filepath: str | Path | None, lineno: int | None) -> Action:
        self = super().parse(untrusted_params, raw, parse, filepath, lineno)
        assert isinstance(self, Allow)
        #: allow, with no redirect and autostart: allowed for any plain target
        self.simple = self.target is None and self.autostart
        return self

    def evaluate(self, rule: Rule, request: Request, snapshot: object) -> Resolution:
        where = f"{rule.filepath}:{rule.lineno}"
        try:
            if self.target is not None:
                t = normalise_target(self.target.text, request.sysinfo)
            else:
                t = request.target
        except AccessDenied as e:
            return self._res("deny", f"{e.reason} (rule {where})", rule, request)
        if t == "@default":
            return self._res("deny", f"policy define 'allow' action at {where} but no target "
                             "is specified by caller or policy", rule, request)
        if t == "@dispvm":
            src = request.sysinfo.get(request.source)
            if src is None or not src.default_dispvm:
                return self._res("deny", f"policy define 'allow' action to @dispvm at {where} "
                                 "but no DispVM base is set for this VM", rule, request)
            t = "@dispvm:" + request.sysinfo.canonical(src.default_dispvm)
        elif t in DOM0_CLASS:
            t = "dom0"
        elif not t.startswith("@"):
            t = request.sysinfo.canonical(t)
        if not self.autostart and not _autostart_ok(t, request):
            return self._res("deny", f"target {t} is denied because it would require autostart",
                             rule, request)
        return self._res("allow", f"allowed by policy {where}", rule, request, target=t)


class Ask(Action):
    __slots__ = ()
    NAME = "ask"
    CLASS_NAME = "Ask"
    PARAMS = frozenset({"target", "default_target", "user", "notify", "autostart"})

    def _expand_dispvm(self, value: str, request: Request) -> str | None:
        if value == "@dispvm":
            src = request.sysinfo.get(request.source)
            if src is None or not src.default_dispvm:
                return None
            return "@dispvm:" + request.sysinfo.canonical(src.default_dispvm)
        if value in DOM0_CLASS:
            return "dom0"
        if value.startswith("@dispvm:"):
            info = request.sysinfo.get(value[8:])
            return None if info is None else "@dispvm:" + info.name
        return request.sysinfo.canonical(value)

    @staticmethod
    def _offerable(target: str, request: Request) -> bool:
        if target == "dom0":
            return True
        if target.startswith("@dispvm:"):
            info = request.sysinfo.get(target[8:])
            return info is not None and info.template_for_dispvms
        return target in request.sysinfo

    def evaluate(self, rule: Rule, request: Request, snapshot: object) -> Resolution:
        where = f"{rule.filepath}:{rule.lineno}"
        if self.target is not None:
            # Deviation from upstream (spec 3.4a): the offered target is
            # checked and @dispvm is expanded, instead of offered verbatim.
            t = self._expand_dispvm(self.target.text, request)
            targets = [t] if t is not None and self._offerable(t, request) else []
        else:
            targets = snapshot.collect_targets_for_ask(request)  # type: ignore[attr-defined]
        if not self.autostart:
            targets = [t for t in targets if _autostart_ok(t, request)]
        if not targets:
            return self._res("deny", f"policy define 'ask' action at {where} but no target is "
                             "available to choose from", rule, request)
        default = None
        if self.default_target is not None:
            default = self._expand_dispvm(self.default_target.text, request)
            if default not in targets:
                default = None
        return self._res("ask", f"ask by policy {where}", rule, request,
                         targets_for_ask=targets, default_target=default)


ACTIONS: dict[str, type[Action]] = {"allow": Allow, "deny": Deny, "ask": Ask}
