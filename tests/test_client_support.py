"""A tiny qubesd stand-in on a real UNIX socket, for unit tests of the client and tools.

It speaks the real framing (header up to NUL, payload to EOF, reply, close) and keeps a
minimal model so the tools have something to show.  Integration tests against the real
daemon are in test_tools_integration.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

Handler = Callable[[str, str, str, str, bytes], "bytes | None"]


def ok(text: str = "") -> bytes:
    return b"0\0" + text.encode()


def err(name: str, msg: str) -> bytes:
    return b"2\0" + name.encode() + b"\0\0" + msg.encode() + b"\0"


class FakeQubesd:
    """Serve ``handler(src, method, arg, dest, payload)`` on ``path`` in a thread.

    A handler returning None closes the connection without a reply (like a qubesd
    internal error).  ``requests`` records the raw bytes of every request.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        self.requests.append(data)
        header, _, payload = data.partition(b"\0")
        method_arg, src, _dest_type, dest = header.decode().split(" ", 3)
        method, _, arg = method_arg.partition("+")
        reply = self.handler(src, method, arg, dest, payload)
        if callable(reply):
            await reply(writer)
        elif reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    def start(self) -> FakeQubesd:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._serve, path=str(self.path)), self._loop)
        self._server = fut.result(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class MiniModel:
    """Just enough of qubesd's behaviour for the tools' unit tests."""

    LABELS: ClassVar[list[str]] = ["red", "orange", "yellow", "green", "gray", "blue", "purple", "black"]

    def __init__(self) -> None:
        self.vms: dict[str, dict] = {}
        self.add("dom0", "AdminVM", "Running", label="black")
        self.add("fedora", "TemplateVM", "Halted", label="black")
        self.add("sys-net", "AppVM", "Running", label="red", template="fedora")
        self.add("work", "AppVM", "Halted", label="blue", template="fedora",
                 netvm="sys-net")
        self.global_props = {"default_template": ("False", "vm", "fedora"),
                             "default_netvm": ("False", "vm", "sys-net"),
                             "stats_interval": ("True", "int", "3")}
        self.getall_refused = False

    def add(self, name: str, klass: str, state: str, label: str,
            template: str | None = None, netvm: str | None = None) -> None:
        props = {"label": ("False", "label", label), "memory": ("True", "int", "400"),
                 "qid": ("False", "int", str(len(self.vms))), "debug": ("True", "bool", "False"),
                 "netvm": ("True" if netvm is None else "False", "vm", netvm or "")}
        if template:
            props["template"] = ("False", "vm", template)
        self.vms[name] = {"class": klass, "state": state, "props": props, "tags": set(),
                          "features": {}}

    def __call__(self, src: str, method: str, arg: str, dest: str, payload: bytes):
        if dest not in self.vms:
            return err("QubesVMNotFoundError", f"No such domain: {dest!r}")
        vm = self.vms[dest]
        holder = self.global_props if method.startswith("admin.property.") else vm["props"]
        owner = "Qubes" if holder is self.global_props else dest
        kind = method.rsplit(".", 1)[-1]
        if method == "admin.vm.List":
            names = sorted(self.vms, key=lambda n: (n != "dom0", n)) if dest == "dom0" \
                else [dest]
            return ok("".join(f"{n} class={self.vms[n]['class']} state={self.vms[n]['state']} "
                              f"uuid=00000000-0000-0000-0000-00000000000{i}\n"
                              for i, n in enumerate(names)))
        if method.startswith(("admin.property.", "admin.vm.property.")):
            if kind == "List":
                return ok("".join(f"{p}\n" for p in sorted(holder)))
            if kind == "GetAll":
                if self.getall_refused:
                    return None
                return ok("".join(f"{p} default={d} type={t} {v}\n"
                                  for p, (d, t, v) in sorted(holder.items())))
            if arg not in holder:
                return err("QubesNoSuchPropertyError", f"Invalid property {arg!r} of {owner}")
            default, typ, value = holder[arg]
            if kind == "Get":
                return ok(f"default={default} type={typ} {value}")
            if kind == "Set":
                value = payload.decode()
                if typ == "int" and not value.isdigit():
                    return err("QubesValueError", "Failed to parse property value as int")
                if typ == "vm" and value and value not in self.vms:
                    return err("QubesPropertyValueError",
                               f"Can't set {arg} to non-existing qube {value}")
                holder[arg] = ("False", typ, value)
                return ok()
            if kind == "Reset":
                holder[arg] = ("True", typ, "400" if arg == "memory" else "")
                return ok()
            if kind == "Help":
                return ok(f"Help for {arg}.")
        if method == "admin.vm.tag.List":
            return ok("".join(f"{t}\n" for t in sorted(vm["tags"])))
        if method == "admin.vm.tag.Get":
            return ok("1" if arg in vm["tags"] else "0")
        if method == "admin.vm.tag.Set":
            vm["tags"].add(arg)
            return ok()
        if method == "admin.vm.tag.Remove":
            if arg not in vm["tags"]:
                return err("QubesTagNotFoundError", f"Tag not set for domain {dest}: {arg}")
            vm["tags"].discard(arg)
            return ok()
        if method == "admin.vm.feature.List":
            return ok("".join(f"{f}\n" for f in vm["features"]))
        if method == "admin.vm.feature.Get":
            if arg not in vm["features"]:
                return err("QubesFeatureNotFoundError",
                           f"Feature not set for domain {dest}: {arg}")
            return ok(vm["features"][arg])
        if method == "admin.vm.feature.Set":
            vm["features"][arg] = payload.decode()
            return ok()
        if method == "admin.vm.feature.Remove":
            if vm["features"].pop(arg, None) is None:
                return err("QubesFeatureNotFoundError",
                           f"Feature not set for domain {dest}: {arg}")
            return ok()
        if method == "admin.label.List":
            return ok("".join(f"{label}\n" for label in self.LABELS))
        if method.startswith("admin.vm.Create."):
            fields = dict(tok.split("=", 1) for tok in payload.decode().split(" "))
            if fields["name"] in self.vms:
                return err("QubesVMAlreadyExistsError", f"Qube already exists: {fields['name']}")
            self.add(fields["name"], method.rsplit(".", 1)[1], "Halted", fields["label"],
                     template=arg or "fedora")
            return ok()
        if method == "admin.vm.Remove":
            if dest == "dom0":
                return err("QubesVMInUseError", "'dom0' cannot be removed")
            users = [n for n, v in self.vms.items()
                     if any(t == "vm" and val == dest and d == "False"
                            for d, t, val in v["props"].values())]
            if users:
                return err("QubesVMInUseError", f"Domain is in use: {dest!r}")
            del self.vms[dest]
            return ok()
        if method == "admin.vm.CurrentState":
            return ok(f"mem=0 mem_static_max=0 cputime=0 power_state={vm['state']}")
        if method == "admin.vm.Start":
            if vm["state"] != "Halted":
                return err("QubesVMNotHaltedError", f"Domain is not powered off: {dest!r}")
            vm["state"] = "Running"
            return ok()
        if method == "admin.vm.Shutdown":
            if vm["state"] == "Halted":
                return err("QubesVMNotStartedError", f"Domain is powered off: {dest!r}")
            vm["state"] = "Halted"
            return ok()
        if method == "admin.vm.Kill":
            if vm["state"] == "Halted":
                return err("QubesVMNotStartedError", f"Domain is powered off: {dest!r}")
            vm["state"] = "Halted"
            return ok()
        if method == "admin.vm.Pause":
            if vm["state"] != "Running":
                return err("QubesVMNotRunningError", f"Domain not running: {dest!r}")
            vm["state"] = "Paused"
            return ok()
        if method == "admin.vm.Unpause":
            if vm["state"] != "Paused":
                return err("QubesVMNotPausedError", f"Domain is not paused: {dest!r}")
            vm["state"] = "Running"
            return ok()
        return err("ProtocolError", f"no such method: {method!r}")


@contextlib.contextmanager
def fake_qubesd(tmp_path: Path, handler: Handler) -> Iterator[FakeQubesd]:
    server = FakeQubesd(tmp_path / "qubesd.sock", handler).start()
    try:
        yield server
    finally:
        server.stop()


def serve_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """Body of a ``model_server`` fixture: a MiniModel server that $QUBESD_SOCKET names."""
    model = MiniModel()
    with fake_qubesd(tmp_path, model) as server:
        monkeypatch.setenv("QUBESD_SOCKET", str(server.path))
        monkeypatch.delenv("QREXEC_VM_SOCKET", raising=False)
        yield model, server


def test_fake_server_speaks_the_framing(tmp_path: Path) -> None:
    import socket
    with fake_qubesd(tmp_path, lambda *a: ok("hello")) as server:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(server.path))
        s.sendall(b"admin.vm.List+ dom0 name dom0\0")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b"0\0hello"
        s.close()
