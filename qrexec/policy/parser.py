"""Policy files: line grammar (spec 1.2-1.5), directives and loading.

Loading is all-or-nothing: the first error raises :class:`PolicySyntaxError`
(``file:line: reason``) or :class:`PolicyLoadError`.  The loader reads
through a small file-system layer that can overlay in-memory changes, which
is how the policy admin API validates a change before writing it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from .actions import ACTIONS, Action, Allow
from .errors import PolicyLoadError, PolicySyntaxError
from .tokens import SOURCE, TARGET, DefaultVM, Token, parse_token

log = logging.getLogger("qrexec.policy")

FILENAME_ALLOWED = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")
_SERVICE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ARG_CHARS = _SERVICE_CHARS | {"+"}
_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_ARG_RE = re.compile(r"\+[A-Za-z0-9._+-]*\Z")
_LEGACY_NAME_RE = re.compile(r"[A-Za-z0-9._+-]+\Z")
MAX_INCLUDE_DEPTH = 40


def validate_service_and_argument(untrusted_service: str, untrusted_argument: str, *,
                                  filepath: str | Path | None,
                                  lineno: int | None) -> tuple[str | None, str | None]:
    """Check the SERVICE and ARGUMENT columns; ``*`` becomes None."""
    service: str | None = untrusted_service
    if service == "*":
        service = None
    elif not _SERVICE_RE.match(service):
        bad = tuple(sorted({c for c in service if c not in _SERVICE_CHARS}))
        raise PolicySyntaxError(filepath, lineno,
                                f"service {service!r} contains invalid characters: {bad!r}")
    argument: str | None = untrusted_argument
    if argument == "*":
        argument = None
    elif not _ARG_RE.match(argument):
        bad = tuple(sorted({c for c in argument if c not in _ARG_CHARS}))
        if bad:
            raise PolicySyntaxError(filepath, lineno,
                                    f"argument {argument!r} contains invalid characters: {bad!r}")
        raise PolicySyntaxError(filepath, lineno, f"argument {argument!r} does not start with +")
    if service is None and argument is not None:
        raise PolicySyntaxError(filepath, lineno, "only * argument allowed for * service")
    return service, argument


class Rule:
    """One rule; ``service``/``argument`` are None for ``*``."""

    __slots__ = (
        "action",
        "argument",
        "filepath",
        "index",
        "lineno",
        "service",
        "source",
        "target",
    )

    def __init__(self, service: str | None, argument: str | None, source: Token,
                 target: Token, action: Action, filepath: str, lineno: int) -> None:
        self.service = service
        self.argument = argument
        self.source = source
        self.target = target
        self.action = action
        self.filepath = filepath
        self.lineno = lineno
        self.index = -1

    def __str__(self) -> str:
        return (f"{self.service or '*'}\t{self.argument or '*'}\t{self.source}\t{self.target}"
                f"\t{self.action}")

    def __repr__(self) -> str:
        return f"<Rule {self.filepath}:{self.lineno} {self}>"


class FileSystem:
    """Reads files, optionally overlaid with in-memory contents.

    ``overrides`` maps a path to new bytes, or to None for "removed".  Paths
    are compared after resolving their directory (not the final component).
    """

    def __init__(self, overrides: Mapping[str | Path, bytes | None] | None = None) -> None:
        self.overrides: dict[str, bytes | None] = {}
        self.removed_hint: set[str] = set()
        for p, data in (overrides or {}).items():
            key = self.key(p)
            self.overrides[key] = data
            if data is None:
                self.removed_hint.add(key)

    @staticmethod
    def key(path: str | Path) -> str:
        p = os.fspath(path)
        return os.path.join(os.path.realpath(os.path.dirname(p) or "."), os.path.basename(p))

    def is_removed(self, path: str) -> bool:
        return self.key(path) in self.removed_hint

    def is_file(self, path: str) -> bool:
        k = self.key(path)
        if k in self.overrides:
            return self.overrides[k] is not None
        try:
            return stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            return False

    def read(self, path: str) -> bytes:
        k = self.key(path)
        if k in self.overrides:
            data = self.overrides[k]
            if data is None:
                raise FileNotFoundError(path)
            return data
        with open(path, "rb") as f:
            return f.read()

    def listdir(self, directory: str) -> list[str]:
        """Names in a directory, with overlaid files added or removed."""
        names = set(os.listdir(directory))
        real = os.path.realpath(directory)
        for k, data in self.overrides.items():
            if os.path.dirname(k) == real:
                if data is None:
                    names.discard(os.path.basename(k))
                else:
                    names.add(os.path.basename(k))
        return sorted(names)


class PolicyLoader:
    """Parses a set of policy directories into an ordered list of rules."""

    def __init__(self, *, legacy_dir: str | Path | None = None,
                 fs: FileSystem | None = None) -> None:
        self.legacy_dir = None if legacy_dir is None else os.fspath(legacy_dir)
        self.fs = fs or FileSystem()
        self.rules: list[Rule] = []
        self.files: list[str] = []  # every file read, in order
        self.warnings: list[str] = []
        self.hasher = hashlib.sha256()
        self._stack: list[str] = []
        self._tokens: dict[tuple[str, str], Token] = {}
        self._cache: dict[str, tuple[str, ...]] = {}

    # -- helpers ----------------------------------------------------------
    def _token(self, text: str, context: str, filepath: str | Path | None,
               lineno: int | None) -> Token:
        key = (context, text)
        tok = self._tokens.get(key)
        if tok is None:
            tok = self._tokens[key] = parse_token(text, context, filepath=filepath,
                                                  lineno=lineno)
        return tok

    def _lines(self, path: str) -> tuple[str, ...]:
        lines = self._cache.get(path)
        if lines is not None:
            return lines
        try:
            data = self.fs.read(path)
        except OSError as e:
            raise PolicyLoadError(f"failed to load {path} file: {e.strerror or e}") from None
        self.hasher.update(path.encode("utf-8", "surrogateescape") + b"\0")
        self.hasher.update(data + b"\0")
        self.files.append(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            lineno = data.count(b"\n", 0, e.start) + 1
            raise PolicySyntaxError(path, lineno, "invalid UTF-8 in policy file") from None
        lines = self._cache[path] = tuple(text.split("\n"))
        return lines

    def _candidates(self, directory: str, *, where: tuple[str, int] | None) -> list[str]:
        """Policy file names of a directory (filtered, name-checked, sorted)."""
        try:
            names = self.fs.listdir(directory)
        except OSError as e:
            msg = f"failed to load {directory} file: {e.strerror or e}"
            if where:
                raise PolicySyntaxError(where[0], where[1], msg) from None
            raise PolicyLoadError(msg) from None
        out = []
        for name in names:
            if name.startswith(".") or not name.endswith(".policy"):
                continue
            if not self.fs.is_file(os.path.join(directory, name)):
                continue
            out.append(name)
        for name in out:
            if not FILENAME_ALLOWED.issuperset(name):
                msg = f"invalid filename: {os.path.join(directory, name)}"
                if where:
                    raise PolicySyntaxError(where[0], where[1], msg)
                raise PolicyLoadError(msg)
        out.sort()
        return out

    def _resolve(self, base_dir: str, path: str) -> str:
        return os.path.normpath(os.path.join(base_dir, path))

    # -- entry points -----------------------------------------------------
    def load_dirs(self, dirs: Iterable[str | Path]) -> list[Rule]:
        """Load the top-level directories (first one shadows later ones)."""
        found: dict[str, str] = {}
        for d in dirs:
            d = os.fspath(d)
            if not os.path.lexists(d):
                continue
            if not self.fs.is_dir(d):
                raise PolicyLoadError(f"failed to load {d} file: not a directory")
            for name in self._candidates(d, where=None):
                found.setdefault(name, d)
        for name in sorted(found):
            d = found[name]
            self.load_file(os.path.join(d, name), d)
        for i, rule in enumerate(self.rules):
            rule.index = i
        return self.rules

    def load_file(self, path: str, base_dir: str) -> None:
        """Parse one new-format file, splicing its rules in."""
        self._enter(path, None)
        try:
            self._parse_new(path, base_dir)
        finally:
            self._stack.pop()

    # -- recursion guard --------------------------------------------------
    def _enter(self, path: str, where: tuple[str, int] | None) -> None:
        real = os.path.realpath(path)
        if real in self._stack:
            chain = " -> ".join(self._stack[self._stack.index(real):] + [real])
            assert where is not None
            raise PolicySyntaxError(where[0], where[1], f"include cycle: {chain}")
        if len(self._stack) >= MAX_INCLUDE_DEPTH:
            assert where is not None
            raise PolicySyntaxError(where[0], where[1], "includes nested too deeply")
        self._stack.append(real)

    def _include_target(self, base_dir: str, untrusted_path: str, filepath: str,
                        lineno: int) -> str:
        path = self._resolve(base_dir, untrusted_path)
        if self.fs.is_removed(path):
            raise PolicySyntaxError(filepath, lineno,
                                    f"including a file that will be removed: {path}")
        if not self.fs.is_file(path):
            raise PolicySyntaxError(filepath, lineno, f"not a file: {path}")
        return path

    # -- new format -------------------------------------------------------
    def _parse_new(self, filepath: str, base_dir: str) -> None:
        rules = self.rules
        for lineno, raw in enumerate(self._lines(filepath), 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            fields = line.split()
            if line[0] == "!":
                self._directive_new(fields, filepath, lineno, base_dir)
                continue
            if len(fields) < 5:
                raise PolicySyntaxError(filepath, lineno, "wrong number of fields")
            service, argument = validate_service_and_argument(
                fields[0], fields[1], filepath=filepath, lineno=lineno)
            rules.append(self._rule(service, argument, fields[2], fields[3], fields[4],
                                    fields[5:], filepath, lineno))

    def _rule(self, service: str | None, argument: str | None, untrusted_source: str,
              untrusted_target: str, untrusted_action: str, untrusted_params: list[str],
              filepath: str, lineno: int) -> Rule:
        source = self._token(untrusted_source, SOURCE, filepath, lineno)
        target = self._token(untrusted_target, TARGET, filepath, lineno)
        cls = ACTIONS.get(untrusted_action)
        if cls is None:
            raise PolicySyntaxError(filepath, lineno, f"invalid action: {untrusted_action}")
        params: dict[str, str] = {}
        for p in untrusted_params:
            key, eq, value = p.partition("=")
            if not eq:
                raise PolicySyntaxError(filepath, lineno,
                                        f"invalid action parameter syntax: {p!r}")
            if key in params:
                raise PolicySyntaxError(filepath, lineno, f"parameter given twice: {key!r}")
            params[key] = value
        action = cls.parse(params, untrusted_params, self._token, filepath, lineno)
        if isinstance(target, DefaultVM) and isinstance(action, Allow) and action.target is None:
            raise PolicySyntaxError(filepath, lineno,
                                    "allow action for @default rule must specify target= option")
        return Rule(service, argument, source, target, action, filepath, lineno)

    def _directive_new(self, fields: list[str], filepath: str, lineno: int,
                       base_dir: str, *, in_compat: bool = False) -> None:
        name, params = fields[0], fields[1:]
        where = (filepath, lineno)
        if name == "!include":
            if len(params) != 1:
                raise PolicySyntaxError(filepath, lineno, "invalid number of params")
            path = self._include_target(base_dir, params[0], filepath, lineno)
            self._enter(path, where)
            try:
                self._parse_new(path, base_dir)
            finally:
                self._stack.pop()
        elif name == "!include-dir":
            if len(params) != 1:
                raise PolicySyntaxError(filepath, lineno, "invalid number of params")
            d = self._resolve(base_dir, params[0])
            if not self.fs.is_dir(d):
                raise PolicySyntaxError(filepath, lineno, f"not a directory: {d}")
            for fname in self._candidates(d, where=where):
                path = os.path.join(d, fname)
                self._enter(path, where)
                try:
                    self._parse_new(path, base_dir)
                finally:
                    self._stack.pop()
        elif name == "!include-service":
            if len(params) != 3:
                raise PolicySyntaxError(filepath, lineno, "invalid number of params")
            service, argument = validate_service_and_argument(
                params[0], params[1], filepath=filepath, lineno=lineno)
            path = self._include_target(base_dir, params[2], filepath, lineno)
            self._enter(path, where)
            try:
                self._parse_service(path, base_dir, service, argument, in_compat=False)
            finally:
                self._stack.pop()
        elif name == "!compat-4.0":
            if len(params) != 0:
                raise PolicySyntaxError(filepath, lineno, "invalid number of params")
            if in_compat:
                raise PolicySyntaxError(filepath, lineno, "!compat-4.0 is not recursive")
            self._compat(filepath, lineno)
        else:
            raise PolicySyntaxError(filepath, lineno, "invalid directive")

    # -- per-service (old) format ----------------------------------------
    def _parse_service(self, filepath: str, base_dir: str, service: str | None,
                       argument: str | None, *, in_compat: bool) -> None:
        rules = self.rules
        for lineno, raw in enumerate(self._lines(filepath), 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            line = line.replace("$include:", "!include ").replace("$", "@").replace(",", " ")
            fields = line.split()
            if not fields:
                raise PolicySyntaxError(filepath, lineno, "wrong number of fields")
            if fields[0].startswith("!"):
                if fields[0] == "!include":
                    if len(fields) != 2:
                        raise PolicySyntaxError(filepath, lineno, "invalid number of params")
                    path = self._include_target(base_dir, fields[1], filepath, lineno)
                    self._enter(path, (filepath, lineno))
                    try:
                        self._parse_service(path, base_dir, service, argument,
                                            in_compat=in_compat)
                    finally:
                        self._stack.pop()
                    continue
                if fields[0] == "!compat-4.0" and in_compat:
                    raise PolicySyntaxError(filepath, lineno, "!compat-4.0 is not recursive")
                raise PolicySyntaxError(filepath, lineno, "invalid directive")
            if len(fields) < 3:
                raise PolicySyntaxError(filepath, lineno, "wrong number of fields")
            rules.append(self._rule(service, argument, fields[0], fields[1], fields[2],
                                    fields[3:], filepath, lineno))

    # -- R4.0 compatibility ------------------------------------------------
    def _compat(self, filepath: str, lineno: int) -> None:
        msg = (f"{filepath}:{lineno}: !compat-4.0 is transitional and will be deprecated")
        log.warning(msg)
        self.warnings.append(msg)
        legacy = self.legacy_dir
        if legacy is None or not self.fs.is_dir(legacy):
            return
        try:
            names = self.fs.listdir(legacy)
        except OSError as e:
            raise PolicySyntaxError(filepath, lineno,
                                    f"failed to load {legacy} file: {e.strerror or e}") from None
        entries: list[tuple[str, int, str, str]] = []
        for name in names:
            path = os.path.join(legacy, name)
            if (name.startswith(".") or name.endswith((".rpmsave", ".rpmnew", ".swp"))
                    or not _LEGACY_NAME_RE.match(name) or not self.fs.is_file(path)):
                self.warnings.append(f"ignoring legacy policy path {path}")
                continue
            service, plus, arg = name.partition("+")
            if not service:
                self.warnings.append(f"ignoring legacy policy path {path}")
                continue
            # argument-specific files first (sorted by argument), argument-less last
            entries.append((service, 1 if not plus else 0, arg, name))
        entries.sort()
        for service, argless, arg, name in entries:
            path = os.path.join(legacy, name)
            svc, argument = validate_service_and_argument(
                service, "*" if argless else "+" + arg, filepath=path, lineno=None)
            self._enter(path, (filepath, lineno))
            try:
                self._parse_service(path, legacy, svc, argument, in_compat=True)
            finally:
                self._stack.pop()
            if not argless:
                for tgt in ("@anyvm", "@adminvm"):
                    self.rules.append(self._rule(svc, argument, "@anyvm", tgt, "deny", [],
                                                 path, len(self._lines(path)) + 1))
