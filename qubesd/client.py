"""A small Admin API client library, compatible in behaviour with upstream ``qubesadmin``.

Two transports, chosen like the stock client chooses its two modes:

* **dom0 mode** (:class:`SocketTransport`): one ``AF_UNIX`` connection to
  :func:`qubesd.paths.qubesd_socket` per call; the request is
  ``"{method}+{arg} dom0 name {dest}\\0" + payload``, then ``shutdown(SHUT_WR)``, then the
  reply is read to EOF.
* **VM mode** (:class:`QrexecTransport`), used when ``$QREXEC_VM_SOCKET`` is set: every call
  execs ``qrexec-client-vm DEST METHOD[+ARG]`` with the payload on stdin and the reply on
  stdout.  Exit 126 means the call was refused, any other non-zero exit is a transport error.

Replies are parsed exactly as ``qubesadmin`` does (spec/client-compat.md section 1): ``0\\0``
is success, ``2\\0Type\\0tb\\0msg\\0`` raises the exception class named ``Type`` (looked up in
:mod:`qubesd.exc`, else in this module, else :class:`~qubesd.exc.QubesException`), an empty
reply raises :class:`QubesDaemonAccessError` and anything else
:class:`QubesDaemonCommunicationError`.

On top of that sits a small object API: :class:`Qubes` (the app, with global properties,
labels and :attr:`Qubes.domains`) and :class:`VM` (properties, features, tags, lifecycle).
"""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from qubesd import exc as _exc
from qubesd import paths as _paths

__all__ = [
    "VM",
    "Event",
    "EventParser",
    "PropertyValue",
    "QrexecTransport",
    "Qubes",
    "QubesCallRefusedError",
    "QubesDaemonAccessError",
    "QubesDaemonCommunicationError",
    "SocketTransport",
    "Transport",
    "default_transport",
    "error_message",
    "parse_response",
]

#: Upstream qubesd refuses requests longer than this (header + payload).
MAX_REQUEST = 65536


# --------------------------------------------------------------------------------------
# Client-side exceptions


class QubesDaemonCommunicationError(_exc.QubesException):
    """The daemon could not be reached or sent something that is not a valid reply."""


class QubesDaemonAccessError(QubesDaemonCommunicationError):
    """The daemon closed the connection without a reply, or the qrexec call failed.

    This is what ``admin.vm.property.GetAll`` may fail with; callers then fall back to
    per-property ``Get`` (as upstream qvm-ls and qvm-prefs do).
    """


# Upstream's alias for the same condition.
QubesDaemonNoResponseError = QubesDaemonAccessError


class QubesCallRefusedError(QubesDaemonAccessError, _exc.PermissionDenied):
    """qrexec refused the call (``qrexec-client-vm`` exited with 126)."""


def error_message(err: BaseException) -> str:
    """The human-readable message of an exception, without KeyError's quoting."""
    msg = getattr(err, "message", None)
    if isinstance(msg, str) and msg:
        return msg
    if err.args and isinstance(err.args[0], str):
        return err.args[0]
    text = Exception.__str__(err)
    return text or type(err).__name__


def _exception_class(name: str) -> type[BaseException]:
    """Map a wire exception name to a class, like ``qubesadmin`` does."""
    for namespace in (_exc, sys.modules[__name__]):
        cls = getattr(namespace, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls
    return _exc.QubesException


def _make_exception(name: str, message: str, traceback_text: str) -> BaseException:
    cls = _exception_class(name)
    # Our exception classes have different constructors (some format their message
    # from objects); build the instance without them and give it the wire message.
    try:
        err = cls.__new__(cls)
        Exception.__init__(err, message)
    except TypeError:
        err = _exc.QubesException(message)
    err.message = message  # type: ignore[attr-defined]
    err.wire_type = name  # type: ignore[attr-defined]
    err.remote_traceback = traceback_text  # type: ignore[attr-defined]
    if isinstance(err, _exc.QubesVMError) and not hasattr(err, "vm"):
        err.vm = None
    return err


def parse_response(untrusted_data: bytes) -> bytes:
    """Parse a complete qubesd reply; return the OK content or raise the error."""
    if not untrusted_data:
        raise QubesDaemonAccessError(
            "Got empty response from qubesd. See the daemon's log for details.")
    if untrusted_data[:2] == b"0\0":
        return untrusted_data[2:]
    if untrusted_data[:2] == b"2\0":
        parts = untrusted_data[2:].split(b"\0", 3)
        if len(parts) < 4:
            raise QubesDaemonCommunicationError("Invalid response format")
        untrusted_type, untrusted_tb, untrusted_fmt, untrusted_rest = parts
        exc_type = untrusted_type.decode("ascii", "replace")
        if not exc_type.isidentifier():
            raise QubesDaemonCommunicationError("Invalid response format")
        fmt = untrusted_fmt.decode("utf-8", "replace")
        args = [a.decode("utf-8", "replace") for a in untrusted_rest.split(b"\0")[:-1]]
        message = fmt
        if args:
            try:
                message = fmt % tuple(int(a) if a.isdigit() else a for a in args)
            except (TypeError, ValueError):
                message = " ".join([fmt, *args])
        raise _make_exception(exc_type, message, untrusted_tb.decode("utf-8", "replace"))
    raise QubesDaemonCommunicationError("Invalid response format")


# --------------------------------------------------------------------------------------
# Events


@dataclasses.dataclass(frozen=True)
class Event:
    """One ``admin.Events`` message; ``subject`` is None for global (app) events."""

    subject: str | None
    name: str
    kwargs: dict[str, str]


class EventParser:
    """Incremental parser of event frames ``1\\0subject\\0event\\0(k\\0v\\0)*\\0``."""

    def __init__(self) -> None:
        self._buf = b""
        self._fields: list[str] = []

    def feed(self, untrusted_data: bytes) -> list[Event]:
        """Add bytes; return the events they complete."""
        self._buf += untrusted_data
        events = []
        while True:
            pos = self._buf.find(b"\0")
            if pos < 0:
                return events
            untrusted_field, self._buf = self._buf[:pos], self._buf[pos + 1:]
            fields = self._fields
            if not fields:
                if untrusted_field != b"1":
                    if untrusted_field == b"2":
                        # An exception instead of the event stream: parse it as such.
                        parse_response(b"2\0" + self._buf)
                    raise QubesDaemonCommunicationError("Invalid event stream: bad frame type")
                fields.append("1")
                continue
            field = untrusted_field.decode("utf-8", "replace")
            if len(fields) >= 3 and len(fields) % 2 == 1 and field == "":
                kv = fields[3:]
                events.append(Event(subject=fields[1] or None, name=fields[2],
                                    kwargs=dict(zip(kv[::2], kv[1::2]))))
                self._fields = []
                continue
            fields.append(field)

    @property
    def pending(self) -> bool:
        """True while a frame has started but not ended."""
        return bool(self._fields or self._buf)


# --------------------------------------------------------------------------------------
# Transports


class Transport(Protocol):
    """Something that delivers one Admin API call and returns the raw reply bytes."""

    def call_raw(self, dest: str, method: str, arg: str | None, payload: bytes) -> bytes: ...

    def events(self, dest: str, timeout: float | None = None) -> Iterator[Event]: ...

    def describe(self) -> str: ...


def _not_running_hint(path: Path, err: OSError) -> str:
    return (f"Failed to connect to qubesd service at {path}: {err.strerror or err}; "
            "is the daemon running? (start it with `make run`, or point $QUBESD_SOCKET "
            "at its socket)")


class SocketTransport:
    """dom0 mode: talk straight to the qubesd socket as source ``dom0``."""

    def __init__(self, path: str | os.PathLike[str] | None = None, src: str = "dom0",
                 timeout: float | None = None) -> None:
        self.path = Path(path) if path is not None else _paths.qubesd_socket()
        self.src = src
        self.timeout = timeout

    def describe(self) -> str:
        return f"qubesd socket {self.path}"

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as err:
            sock.close()
            raise QubesDaemonCommunicationError(_not_running_hint(self.path, err)) from None
        return sock

    def header(self, dest: str, method: str, arg: str | None) -> bytes:
        return f"{method}+{arg or ''} {self.src} name {dest}\0".encode("ascii")

    def call_raw(self, dest: str, method: str, arg: str | None, payload: bytes) -> bytes:
        sock = self.connect()
        try:
            try:
                sock.sendall(self.header(dest, method, arg) + payload)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon aborted the connection; read what (if anything) it sent
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        except TimeoutError:
            raise QubesDaemonCommunicationError(
                f"Timed out waiting for a reply from {self.path}") from None
        finally:
            sock.close()

    def events(self, dest: str = "dom0", timeout: float | None = None) -> Iterator[Event]:
        sock = self.connect()
        try:
            sock.sendall(self.header(dest, "admin.Events", None))
            sock.shutdown(socket.SHUT_WR)
            yield from _read_events(sock.fileno(), lambda: sock.recv(65536), timeout)
        finally:
            sock.close()


def _read_events(fd: int, read: Any, timeout: float | None) -> Iterator[Event]:
    parser = EventParser()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return
        untrusted_chunk = read()
        if not untrusted_chunk:
            if parser.pending:
                raise QubesDaemonCommunicationError("Event stream ended in the middle of a frame")
            return
        yield from parser.feed(untrusted_chunk)


def find_qrexec_client_vm() -> str | None:
    """``qrexec-client-vm`` on PATH, else next to the running interpreter."""
    found = shutil.which("qrexec-client-vm")
    if found:
        return found
    candidate = Path(sys.executable).parent / "qrexec-client-vm"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


class QrexecTransport:
    """VM mode: every call goes through ``qrexec-client-vm DEST METHOD[+ARG]``."""

    def __init__(self, client: str | None = None, timeout: float | None = None) -> None:
        self.client = client or find_qrexec_client_vm()
        self.timeout = timeout

    def describe(self) -> str:
        vm_sock = os.environ.get("QREXEC_VM_SOCKET", "?")
        return f"qrexec-client-vm ({self.client}) via {vm_sock}"

    def _argv(self, dest: str, method: str, arg: str | None) -> list[str]:
        if not self.client:
            raise QubesDaemonCommunicationError(
                "$QREXEC_VM_SOCKET is set but qrexec-client-vm was found neither on PATH "
                f"nor next to {sys.executable}")
        service = method if arg is None else f"{method}+{arg}"
        return [self.client, dest, service]

    def call_raw(self, dest: str, method: str, arg: str | None, payload: bytes) -> bytes:
        argv = self._argv(dest, method, arg)
        try:
            proc = subprocess.run(argv, input=payload, capture_output=True,
                                  timeout=self.timeout, check=False)
        except OSError as err:
            raise QubesDaemonCommunicationError(f"Failed to run {argv[0]}: {err}") from None
        except subprocess.TimeoutExpired:
            raise QubesDaemonCommunicationError(f"Timed out waiting for {argv[0]}") from None
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace").strip()
            if proc.returncode == 126:
                raise QubesCallRefusedError(
                    f"Service call error: {method} to {dest} refused"
                    + (f": {stderr}" if stderr else ""))
            raise QubesDaemonAccessError(
                f"Service call error: qrexec-client-vm exited with {proc.returncode}"
                + (f": {stderr}" if stderr else ""))
        return proc.stdout

    def events(self, dest: str = "dom0", timeout: float | None = None) -> Iterator[Event]:
        argv = self._argv(dest, "admin.Events", None)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as err:
            raise QubesDaemonCommunicationError(f"Failed to run {argv[0]}: {err}") from None
        assert proc.stdout is not None
        out = proc.stdout
        try:
            yield from _read_events(out.fileno(), lambda: os.read(out.fileno(), 65536), timeout)
            rc = proc.wait()
            if rc == 126:
                raise QubesCallRefusedError(f"Service call error: admin.Events to {dest} refused")
            if rc != 0:
                raise QubesDaemonAccessError(
                    f"Service call error: qrexec-client-vm exited with {rc}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            out.close()
            if proc.stderr:
                proc.stderr.close()


def default_transport() -> Transport:
    """VM mode when ``$QREXEC_VM_SOCKET`` is set, else dom0 mode."""
    if os.environ.get("QREXEC_VM_SOCKET"):
        return QrexecTransport()
    return SocketTransport()


# --------------------------------------------------------------------------------------
# Property values


@dataclasses.dataclass(frozen=True)
class PropertyValue:
    """One ``property.Get`` reply: ``default=<bool> type=<t> <value>``."""

    is_default: bool
    type: str
    raw: str

    @property
    def value(self) -> Any:
        """The value converted by type; ``vm`` values that are empty become None."""
        if self.type == "int":
            try:
                return int(self.raw)
            except ValueError:
                return self.raw
        if self.type == "bool":
            return self.raw == "True"
        if self.type == "vm":
            return self.raw or None
        return self.raw

    @classmethod
    def parse(cls, untrusted_text: str) -> PropertyValue:
        parts = untrusted_text.split(" ", 2)
        if (len(parts) != 3 or not parts[0].startswith("default=")
                or not parts[1].startswith("type=")):
            raise QubesDaemonCommunicationError(
                f"Invalid property reply: {untrusted_text[:80]!r}")
        is_default = parts[0][len("default="):]
        if is_default not in ("True", "False"):
            raise QubesDaemonCommunicationError(
                f"Invalid property reply: {untrusted_text[:80]!r}")
        return cls(is_default == "True", parts[1][len("type="):], parts[2])


def _unescape_getall(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_getall(untrusted_text: str) -> dict[str, PropertyValue]:
    """Parse a ``property.GetAll`` reply into name -> value, in reply order."""
    result: dict[str, PropertyValue] = {}
    for line in untrusted_text.splitlines():
        if not line:
            continue
        name, sep, rest = line.partition(" ")
        if not sep:
            raise QubesDaemonCommunicationError(f"Invalid GetAll line: {line[:80]!r}")
        pv = PropertyValue.parse(rest)
        result[name] = dataclasses.replace(pv, raw=_unescape_getall(pv.raw))
    return result


def _lines(data: bytes) -> list[str]:
    return [line for line in data.decode("utf-8", "replace").split("\n") if line]


def _value_to_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, VM):
        return value.name.encode()
    return str(value).encode("utf-8")


# --------------------------------------------------------------------------------------
# Object API


class _PropertyHolder:
    """Common code of the app (``admin.property.*``) and VMs (``admin.vm.property.*``)."""

    _prefix = "admin.property"

    def __init__(self, app: Qubes, dest: str) -> None:
        self.app = app
        self._dest = dest
        self._cache: dict[str, PropertyValue] | None = None

    def _call(self, method: str, arg: str | None = None, payload: bytes = b"") -> bytes:
        return self.app.qubesd_call(self._dest, method, arg, payload)

    def property_list(self) -> list[str]:
        return _lines(self._call(f"{self._prefix}.List"))

    def get_property_info(self, name: str) -> PropertyValue:
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        reply = self._call(f"{self._prefix}.Get", name).decode("utf-8", "replace")
        return PropertyValue.parse(reply)

    def get_property(self, name: str) -> Any:
        return self.get_property_info(name).value

    def property_is_default(self, name: str) -> bool:
        return self.get_property_info(name).is_default

    def get_property_default(self, name: str) -> str | None:
        """``GetDefault``: the default as text, or None when there is none."""
        reply = self._call(f"{self._prefix}.GetDefault", name).decode("utf-8", "replace")
        if not reply:
            return None
        _, _, value = reply.partition(" ")
        return value

    def set_property(self, name: str, value: Any) -> None:
        self._call(f"{self._prefix}.Set", name, _value_to_bytes(value))
        self._cache = None

    def reset_property(self, name: str) -> None:
        self._call(f"{self._prefix}.Reset", name)
        self._cache = None

    def property_help(self, name: str) -> str:
        return self._call(f"{self._prefix}.Help", name).decode("utf-8", "replace")

    def get_all_properties(self) -> dict[str, PropertyValue]:
        """All properties with one ``GetAll`` call; per-property ``Get`` if it is refused.

        Like upstream, only :class:`QubesDaemonAccessError` (an empty reply, or a refused
        qrexec call) triggers the fallback; properties whose ``Get`` is refused as well
        are left out.
        """
        try:
            reply = self._call(f"{self._prefix}.GetAll").decode("utf-8", "replace")
            result = parse_getall(reply)
        except QubesDaemonAccessError:
            result = {}
            for name in self.property_list():
                try:
                    result[name] = self.get_property_info(name)
                except (QubesDaemonAccessError, _exc.PermissionDenied):
                    continue
        self._cache = result
        return dict(result)

    def clear_cache(self) -> None:
        self._cache = None


class Features:
    """Dict-like view of a VM's features (``admin.vm.feature.*``)."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def keys(self) -> list[str]:
        return _lines(self.vm.qubesd_call("admin.vm.feature.List"))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __getitem__(self, name: str) -> str:
        return self.vm.qubesd_call("admin.vm.feature.Get", name).decode("utf-8", "replace")

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except _exc.QubesFeatureNotFoundError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: Any) -> None:
        if value is True:
            data = b"1"
        elif value is False or value is None:
            data = b""
        else:
            data = str(value).encode("utf-8")
        self.vm.qubesd_call("admin.vm.feature.Set", name, data)

    def __delitem__(self, name: str) -> None:
        self.vm.qubesd_call("admin.vm.feature.Remove", name)

    def items(self) -> list[tuple[str, str]]:
        return [(name, self[name]) for name in self.keys()]

    def check_with_template(self, name: str, default: Any = None) -> Any:
        try:
            return self.vm.qubesd_call(
                "admin.vm.feature.CheckWithTemplate", name).decode("utf-8", "replace")
        except _exc.QubesFeatureNotFoundError:
            return default


class Tags:
    """Set-like view of a VM's tags (``admin.vm.tag.*``)."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def __iter__(self) -> Iterator[str]:
        return iter(_lines(self.vm.qubesd_call("admin.vm.tag.List")))

    def __contains__(self, tag: object) -> bool:
        if not isinstance(tag, str):
            return False
        return self.vm.qubesd_call("admin.vm.tag.Get", tag) == b"1"

    def add(self, tag: str) -> None:
        self.vm.qubesd_call("admin.vm.tag.Set", tag)

    def remove(self, tag: str) -> None:
        self.vm.qubesd_call("admin.vm.tag.Remove", tag)

    def discard(self, tag: str) -> None:
        try:
            self.remove(tag)
        except _exc.QubesTagNotFoundError:
            pass


class VM(_PropertyHolder):
    """One domain; ``klass`` and ``state`` are as of the last ``admin.vm.List``."""

    _prefix = "admin.vm.property"

    def qubesd_call(self, method: str, arg: str | None = None, payload: bytes = b"") -> bytes:
        """One call with this VM as the destination; returns the OK content."""
        return self._call(method, arg, payload)

    def __init__(self, app: Qubes, name: str, klass: str | None = None,
                 state: str | None = None, uuid: str | None = None) -> None:
        super().__init__(app, name)
        self.name = name
        self.klass = klass
        self.state = state
        self.uuid = uuid
        self.features = Features(self)
        self.tags = Tags(self)

    def __repr__(self) -> str:
        return f"<VM {self.name} class={self.klass} state={self.state}>"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VM) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __lt__(self, other: VM) -> bool:
        # dom0 first, then by name, like upstream listings
        return (self.name != "dom0", self.name) < (other.name != "dom0", other.name)

    # lifecycle
    def current_state(self) -> dict[str, str]:
        reply = self.qubesd_call("admin.vm.CurrentState").decode("ascii", "replace")
        return dict(item.split("=", 1) for item in reply.split() if "=" in item)

    def get_power_state(self) -> str:
        state = self.current_state().get("power_state", "NA")
        self.state = state
        return state

    def is_running(self) -> bool:
        return self.get_power_state() != "Halted"

    def is_halted(self) -> bool:
        return self.get_power_state() == "Halted"

    def is_paused(self) -> bool:
        return self.get_power_state() == "Paused"

    def start(self) -> None:
        self.qubesd_call("admin.vm.Start")

    def shutdown(self, force: bool = False, wait: bool = False) -> None:
        arg = "+".join(word for word, on in (("force", force), ("wait", wait)) if on)
        self.qubesd_call("admin.vm.Shutdown", arg or None)

    def pause(self) -> None:
        self.qubesd_call("admin.vm.Pause")

    def unpause(self) -> None:
        self.qubesd_call("admin.vm.Unpause")

    def kill(self) -> None:
        self.qubesd_call("admin.vm.Kill")

    def remove(self) -> None:
        self.qubesd_call("admin.vm.Remove")
        self.app.domains.clear_cache()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        return self.app.transport.events(self.name, timeout)


class Domains(Mapping[str, VM]):
    """The domains the caller can see (``admin.vm.List``); cached until refreshed."""

    def __init__(self, app: Qubes) -> None:
        self.app = app
        self._vms: dict[str, VM] | None = None

    def clear_cache(self) -> None:
        self._vms = None

    def refresh(self) -> dict[str, VM]:
        reply = self.app.qubesd_call("dom0", "admin.vm.List")
        vms: dict[str, VM] = {}
        for line in _lines(reply):
            name, _, rest = line.partition(" ")
            props = dict(item.split("=", 1) for item in rest.split(" ") if "=" in item)
            vms[name] = VM(self.app, name, props.get("class"), props.get("state"),
                           props.get("uuid"))
        self._vms = vms
        return vms

    def _get(self) -> dict[str, VM]:
        return self._vms if self._vms is not None else self.refresh()

    def __getitem__(self, name: str) -> VM:
        vms = self._get()
        if name not in vms:
            raise _make_exception("QubesVMNotFoundError", f"No such domain: {name!r}", "")
        return vms[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._get(), key=lambda n: (n != "dom0", n)))

    def __len__(self) -> int:
        return len(self._get())

    def __contains__(self, name: object) -> bool:
        return name in self._get()

    def vms(self) -> list[VM]:
        return [self[name] for name in self]


class Qubes(_PropertyHolder):
    """The Admin API app: global properties, labels, domains, create and remove."""

    _prefix = "admin.property"

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport = transport or default_transport()
        super().__init__(self, "dom0")
        self.domains = Domains(self)

    def qubesd_call(self, dest: str, method: str, arg: str | None = None,
                    payload: bytes = b"") -> bytes:
        """One call; returns the OK content or raises the daemon's exception."""
        return parse_response(self.transport.call_raw(dest, method, arg, payload))

    def _global_call(self, method: str, arg: str | None = None, payload: bytes = b"") -> bytes:
        return self.qubesd_call("dom0", method, arg, payload)

    # labels and classes
    def labels(self) -> list[str]:
        data = self._global_call("admin.label.List").decode("utf-8", "replace")
        return [line for line in data.split("\n") if line]

    def label_color(self, name: str) -> str:
        return self._global_call("admin.label.Get", name).decode("ascii", "replace")

    def label_index(self, name: str) -> int:
        return int(self._global_call("admin.label.Index", name))

    def vm_classes(self) -> list[str]:
        return _lines(self._global_call("admin.vmclass.List"))

    # domains
    def create_vm(self, klass: str, name: str, label: str, template: str | None = None,
                  pool: str | None = None, pools: Mapping[str, str] | None = None) -> VM:
        """``admin.vm.Create.<klass>`` (or ``CreateInPool`` when a pool is given)."""
        payload = f"name={name} label={label}"
        if pool or pools:
            method = f"admin.vm.CreateInPool.{klass}"
            if pool:
                payload += f" pool={pool}"
            for volume, volume_pool in (pools or {}).items():
                payload += f" pool:{volume}={volume_pool}"
        else:
            method = f"admin.vm.Create.{klass}"
        self._global_call(method, template or None, payload.encode("utf-8"))
        self.domains.clear_cache()
        return self.domains[name]

    def remove_vm(self, name: str) -> None:
        self.qubesd_call(name, "admin.vm.Remove")
        self.domains.clear_cache()

    def events(self, dest: str = "dom0", timeout: float | None = None) -> Iterator[Event]:
        """Iterate ``admin.Events``; stops at EOF or after ``timeout`` seconds of silence
        budget (``timeout`` is a total deadline for the whole iteration)."""
        return self.transport.events(dest, timeout)


def vm_names(untrusted_names: Iterable[str]) -> list[str]:
    """Deduplicate names, keeping their order."""
    seen: dict[str, None] = {}
    for name in untrusted_names:
        seen.setdefault(name, None)
    return list(seen)
