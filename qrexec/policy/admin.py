"""Policy administration store: the ``policy.*`` services (spec section 5).

A library, no sockets.  :class:`PolicyAdmin` works on one persistent policy
directory (``<dir>/*.policy`` and ``<dir>/include/*``).  Every change is
validated by loading the *whole* directory with the change applied in
memory, and written atomically (temporary dot-file, fsync, rename, directory
fsync) under an exclusive ``flock`` on the directory plus a process-wide
lock, so that of concurrent Replaces holding the same token exactly one wins.

Errors are :class:`PolicyAdminError` subclasses named as upstream; qubesd
sends them as ``2\\0<ClassName>\\0\\0<message>\\0``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from .engine import PolicySnapshot, load_policy
from .parser import FILENAME_ALLOWED

_ARG_RE = re.compile(r"[A-Za-z0-9+._-]*\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_MAIN_NAME_RE = re.compile(r"[a-z0-9_-]+\Z")
_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_TOKEN_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")

_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class PolicyAdminError(Exception):
    """Base class; ``str(exc)`` is the message sent to the caller."""


class PolicyAdminProtocolException(PolicyAdminError):
    pass


class PolicyAdminTokenException(PolicyAdminError):
    pass


class PolicyAdminFileNotFoundException(PolicyAdminError):
    pass


class PolicyAdminSyntaxException(PolicyAdminError):
    pass


class PolicyAdminInvalidFileNameException(PolicyAdminError):
    pass


class PolicyAdminInvalidFilePathException(PolicyAdminError):
    pass


class PolicyAdminInternalException(PolicyAdminError):
    """An I/O failure while writing; nothing was changed."""


def file_token(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _safe(untrusted: str) -> str:
    """Printable rendering of an untrusted string for a message."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in untrusted[:200])


def _process_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _PROCESS_LOCKS_GUARD:
        lock = _PROCESS_LOCKS.get(key)
        if lock is None:
            lock = _PROCESS_LOCKS[key] = threading.Lock()
        return lock


def validate_policy_files(policy_dir: str | Path, *,
                          main: Mapping[str, bytes | None] | None = None,
                          include: Mapping[str, bytes | None] | None = None,
                          extra_dirs: tuple[str | Path, ...] = (),
                          legacy_dir: str | Path | None = None) -> PolicySnapshot:
    """Load ``policy_dir`` with proposed changes applied, without writing.

    ``main`` maps policy names (without ``.policy``) and ``include`` maps
    include-file names to new contents, or None for removal.  Returns the
    would-be snapshot; check ``snapshot.error``.  ``extra_dirs`` (e.g. the
    runtime directory) are loaded before ``policy_dir``, shadowing it, so
    the result can be used as the new live snapshot.
    """
    pdir = Path(policy_dir)
    overrides: dict[str | Path, bytes | None] = {}
    for name, data in (main or {}).items():
        overrides[pdir / f"{name}.policy"] = data
    for name, data in (include or {}).items():
        overrides[pdir / "include" / name] = data
    return load_policy([*extra_dirs, pdir], legacy_dir=legacy_dir, overrides=overrides)


def validate_change(policy_dir: str | Path, *, main: Mapping[str, bytes | None] | None = None,
                    include: Mapping[str, bytes | None] | None = None,
                    legacy_dir: str | Path | None = None) -> PolicySnapshot:
    """Like :func:`validate_policy_files`, raising PolicyAdmin errors.

    Refuses main names that would break loading (e.g. uppercase) and any
    change after which the policy does not load.
    """
    for name, data in (main or {}).items():
        if data is not None:
            _check_main_name_loadable(name)
    snap = validate_policy_files(policy_dir, main=main, include=include, legacy_dir=legacy_dir)
    if snap.error is not None:
        raise PolicyAdminSyntaxException(f"Policy change validation failed: {snap.error}")
    return snap


def _check_main_name_loadable(name: str) -> None:
    if not _MAIN_NAME_RE.match(name) or not FILENAME_ALLOWED.issuperset(name + ".policy"):
        raise PolicyAdminInvalidFileNameException(
            f"Invalid policy file name: {_safe(name)}\n"
            "Policy file names must contain only lowercase letters, digits, underscore "
            "and hyphen; other names would make every policy load fail.")


class PolicyAdmin:
    """The ``policy.*`` services on one policy directory."""

    def __init__(self, policy_dir: str | Path, *, legacy_dir: str | Path | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.policy_dir = Path(policy_dir)
        self.include_dir = self.policy_dir / "include"
        self.legacy_dir = legacy_dir
        #: called after every successful write (e.g. to reload the watcher)
        self.on_change = on_change
        self._methods: dict[str, tuple[Callable[[str, bytes], bytes], bool, bool]] = {
            # name: (handler, takes argument, takes payload)
            "policy.List": (self._list_main, False, False),
            "policy.Get": (self._get_main, True, False),
            "policy.Replace": (self._replace_main, True, True),
            "policy.Remove": (self._remove_main, True, True),
            "policy.GetFiles": (self._get_files, True, False),
            "policy.include.List": (self._list_include, False, False),
            "policy.include.Get": (self._get_include, True, False),
            "policy.include.Replace": (self._replace_include, True, True),
            "policy.include.Remove": (self._remove_include, True, True),
        }

    METHODS = ("policy.List", "policy.Get", "policy.Replace", "policy.Remove",
               "policy.GetFiles", "policy.include.List", "policy.include.Get",
               "policy.include.Replace", "policy.include.Remove")

    # -- entry point ----------------------------------------------------------
    def call(self, method: str, untrusted_arg: str, untrusted_payload: bytes) -> bytes:
        """Run one call; returns the reply bytes or raises PolicyAdminError."""
        if not _ARG_RE.match(untrusted_arg):
            raise PolicyAdminProtocolException(
                f'Invalid argument: "{_safe(untrusted_arg)}"; only alphanumeric characters '
                "and +._- are allowed")
        entry = self._methods.get(method)
        if entry is None:
            raise PolicyAdminProtocolException(f"unrecognized method: {_safe(method)}")
        handler, takes_arg, takes_payload = entry
        if not takes_arg and untrusted_arg:
            raise PolicyAdminProtocolException("Unexpected argument")
        if not takes_payload and untrusted_payload:
            raise PolicyAdminProtocolException("Unexpected payload")
        with self._locked():
            return handler(untrusted_arg, untrusted_payload)

    # -- typed API --------------------------------------------------------------
    def list(self) -> list[str]:
        return self.call("policy.List", "", b"").decode().splitlines()

    def get(self, name: str) -> tuple[str, bytes]:
        token, _, content = self.call("policy.Get", name, b"").partition(b"\n")
        return token.decode(), content

    def replace(self, name: str, content: bytes | str, token: str = "any") -> None:
        if isinstance(content, str):
            content = content.encode()
        self.call("policy.Replace", name, token.encode() + b"\n" + content)

    def remove(self, name: str, token: str = "any") -> None:
        self.call("policy.Remove", name, token.encode())

    def get_files(self, service: str) -> list[str]:
        return self.call("policy.GetFiles", service, b"").decode().splitlines()

    def include_list(self) -> list[str]:
        return self.call("policy.include.List", "", b"").decode().splitlines()

    def include_get(self, name: str) -> tuple[str, bytes]:
        token, _, content = self.call("policy.include.Get", name, b"").partition(b"\n")
        return token.decode(), content

    def include_replace(self, name: str, content: bytes | str, token: str = "any") -> None:
        if isinstance(content, str):
            content = content.encode()
        self.call("policy.include.Replace", name, token.encode() + b"\n" + content)

    def include_remove(self, name: str, token: str = "any") -> None:
        self.call("policy.include.Remove", name, token.encode())

    def validate(self, *, main: Mapping[str, bytes | None] | None = None,
                 include: Mapping[str, bytes | None] | None = None) -> PolicySnapshot:
        """Validate a proposed change (no write); raises PolicyAdminSyntaxException."""
        return validate_change(self.policy_dir, main=main, include=include,
                               legacy_dir=self.legacy_dir)

    # -- locking ----------------------------------------------------------------
    class _Lock:
        def __init__(self, admin: PolicyAdmin) -> None:
            self.admin = admin
            self.fd = -1
            self.tlock = _process_lock(admin.policy_dir)

        def __enter__(self) -> None:
            self.tlock.acquire()
            try:
                self.admin.policy_dir.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.admin.policy_dir, os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError as e:
                if self.fd >= 0:
                    os.close(self.fd)
                self.tlock.release()
                raise PolicyAdminInternalException(
                    f"cannot lock {self.admin.policy_dir}: {e.strerror}") from None

        def __exit__(self, *exc: object) -> None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
            finally:
                self.tlock.release()

    def _locked(self) -> PolicyAdmin._Lock:
        return PolicyAdmin._Lock(self)

    # -- paths ------------------------------------------------------------------
    def _path(self, untrusted_name: str, *, include: bool) -> Path:
        if not _NAME_RE.match(untrusted_name):
            raise PolicyAdminInvalidFileNameException(
                f"Invalid policy file name: {_safe(untrusted_name)}\n"
                "Names must contain only alphanumeric characters, underscore and hyphen.")
        name = untrusted_name
        directory = self.include_dir if include else self.policy_dir
        path = directory / (name if include else f"{name}.policy")
        if path.resolve().parent != directory.resolve():
            raise PolicyAdminInvalidFilePathException(f"Expecting a path inside {directory}")
        return path

    # -- token ------------------------------------------------------------------
    @staticmethod
    def _check_token(untrusted_token: bytes, path: Path) -> None:
        try:
            token = untrusted_token.decode("ascii")
        except UnicodeDecodeError:
            raise PolicyAdminTokenException("Unrecognized token") from None
        if token == "any":
            return
        if token == "new":
            if path.exists():
                raise PolicyAdminTokenException("File exists but token is 'new'")
            return
        if _TOKEN_RE.match(token):
            if not path.exists():
                raise PolicyAdminTokenException("File doesn't exist, but token isn't 'new'")
            if file_token(path.read_bytes()) != token:
                raise PolicyAdminTokenException("Token mismatch")
            return
        raise PolicyAdminTokenException("Unrecognized token")

    # -- handlers -----------------------------------------------------------------
    def _list_main(self, arg: str, payload: bytes) -> bytes:
        names = []
        if self.policy_dir.is_dir():
            for p in self.policy_dir.iterdir():
                if p.name.endswith(".policy") and not p.name.startswith(".") and p.is_file():
                    names.append(p.name[: -len(".policy")])
        return "".join(n + "\n" for n in sorted(names)).encode()

    def _list_include(self, arg: str, payload: bytes) -> bytes:
        names = []
        if self.include_dir.is_dir():
            for p in self.include_dir.iterdir():
                if not p.name.startswith(".") and p.is_file():
                    names.append(p.name)
        return "".join(n + "\n" for n in sorted(names)).encode()

    def _get(self, path: Path) -> bytes:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PolicyAdminFileNotFoundException(f"Not found: {path}") from None
        except IsADirectoryError:
            raise PolicyAdminFileNotFoundException(f"Not found: {path}") from None
        return file_token(data).encode() + b"\n" + data

    def _get_main(self, arg: str, payload: bytes) -> bytes:
        return self._get(self._path(arg, include=False))

    def _get_include(self, arg: str, payload: bytes) -> bytes:
        return self._get(self._path(arg, include=True))

    def _replace(self, arg: str, payload: bytes, *, include: bool) -> bytes:
        path = self._path(arg, include=include)
        if not include:
            _check_main_name_loadable(arg)
        if b"\n" not in payload:
            raise PolicyAdminProtocolException("Payload needs to include first line with token")
        untrusted_token, _, content = payload.partition(b"\n")
        self._check_token(untrusted_token, path)
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyAdminProtocolException("Policy content is not valid UTF-8") from None
        change = {arg: content}
        self.validate(main=None if include else change, include=change if include else None)
        self._write(path, content)
        return b""

    def _remove(self, arg: str, payload: bytes, *, include: bool) -> bytes:
        path = self._path(arg, include=include)
        self._check_token(payload, path)
        if not path.is_file():
            raise PolicyAdminFileNotFoundException(f"Not found: {path}")
        change: dict[str, bytes | None] = {arg: None}
        self.validate(main=None if include else change, include=change if include else None)
        try:
            path.unlink()
            self._fsync_dir(path.parent)
        except OSError as e:
            raise PolicyAdminInternalException(f"cannot remove {path}: {e.strerror}") from None
        self._changed()
        return b""

    def _replace_main(self, arg: str, payload: bytes) -> bytes:
        return self._replace(arg, payload, include=False)

    def _replace_include(self, arg: str, payload: bytes) -> bytes:
        return self._replace(arg, payload, include=True)

    def _remove_main(self, arg: str, payload: bytes) -> bytes:
        return self._remove(arg, payload, include=False)

    def _remove_include(self, arg: str, payload: bytes) -> bytes:
        return self._remove(arg, payload, include=True)

    def _get_files(self, arg: str, payload: bytes) -> bytes:
        if not arg:
            raise PolicyAdminProtocolException("Service cannot be empty.")
        if not _SERVICE_RE.match(arg):
            bad = "".join(sorted({c for c in arg if not _SERVICE_RE.match(c)}))
            raise PolicyAdminProtocolException(
                f"Service '{_safe(arg)}' contains invalid characters: {_safe(bad)}")
        snap = load_policy([self.policy_dir], legacy_dir=self.legacy_dir)
        if snap.error is not None:
            raise PolicyAdminSyntaxException(f"Policy does not load: {snap.error}")
        pdir = os.path.normpath(os.path.abspath(self.policy_dir))
        seen: dict[str, None] = {}
        for rule in snap.rules_for_service(arg):
            fp = os.path.normpath(os.path.abspath(rule.filepath))
            if os.path.dirname(fp) == pdir and fp.endswith(".policy"):
                seen.setdefault(os.path.basename(fp)[: -len(".policy")], None)
            else:
                seen.setdefault(rule.filepath, None)
        return "".join(n + "\n" for n in seen).encode()

    # -- writing ------------------------------------------------------------------
    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, path: Path, content: bytes) -> None:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o664)
            try:
                view = memoryview(content)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fchmod(fd, 0o664)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._fsync_dir(path.parent)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise PolicyAdminInternalException(f"cannot write {path}: {e.strerror}") from None
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


__all__ = [
    "PolicyAdmin", "PolicyAdminError", "PolicyAdminFileNotFoundException",
    "PolicyAdminInternalException", "PolicyAdminInvalidFileNameException",
    "PolicyAdminInvalidFilePathException", "PolicyAdminProtocolException",
    "PolicyAdminSyntaxException", "PolicyAdminTokenException", "file_token",
    "validate_change", "validate_policy_files",
]
