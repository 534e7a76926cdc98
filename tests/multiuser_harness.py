"""The multi-user demo world for the attack and gate tests (no tests here).

`World` runs ``python -m qubesd.run_all`` (qubesd + qrexec-daemon in one process, demo
seeded on a fresh directory) as a subprocess, adds a few private domains for bob, and
gives tests:

* ``q(...)``: a raw request on ``qubesd.sock`` with any ``src`` (the gate trusts the
  source on its own socket; used for dom0 set-up and for tests of the gate itself);
* ``vm(src, target, service, payload)``: the real ``qrexec-client-vm`` on the
  per-domain socket ``run/qrexec/<src>.sock`` (identity comes from the socket);
* ``snapshot()``: everything an attack must not change: qubes.xml bytes, every
  domain's power state and libvirt figures as dom0 sees them, and the bytes of every
  policy file (qrexec policy, userdomains.yaml);
* ``events(...)``: an ``admin.Events`` stream read in a thread, either as dom0 on
  qubesd.sock or through qrexec-client-vm as a domain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

from qubesd_harness import raw_call

from qubesd.protocol import encode_request

REPO = Path(__file__).resolve().parent.parent
_CLIENT = Path(sys.executable).parent / "qrexec-client-vm"
CLIENT = [str(_CLIENT)] if _CLIENT.exists() else [sys.executable, "-m", "qrexec.client_vm"]

#: domains with a qrexec socket after the demo is seeded
DEMO_RUNNING = ("sys-net", "sys-firewall", "alice-admin", "bob-admin", "sys-gui-alice",
                "sys-gui-bob", "sys-secadmin", "work")

#: bob's private domains added by dom0 on top of the demo (tag owner-bob: bob's set)
BOB_PRIVATE = (
    # name, create method, template arg, extra properties
    ("bob-tpl", "admin.vm.Create.TemplateVM", "", {}),
    ("bob-dvm", "admin.vm.Create.AppVM", "debian-12-xfce",
     {"template_for_dispvms": b"True"}),
    ("bob-net", "admin.vm.Create.AppVM", "debian-12-xfce", {"provides_network": b"True"}),
    ("bob-gui-app", "admin.vm.Create.AppVM", "debian-12-xfce", {}),
)


def reply_class(reply: bytes) -> str | None:
    """The exception class of a qubesd reply, or None for OK."""
    if reply.startswith(b"0\0"):
        return None
    assert reply.startswith(b"2\0"), reply[:200]
    return reply.split(b"\0")[1].decode()


def reply_message(reply: bytes) -> str:
    assert reply.startswith(b"2\0"), reply[:200]
    return reply.split(b"\0")[3].decode("utf-8", "replace")


def parse_events(data: bytes) -> list[tuple[str, str, dict[str, str]]]:
    """Complete EVENT frames in ``data`` (a trailing partial frame is ignored)."""
    out = []
    parts = data.split(b"\0")
    i = 0
    while i < len(parts):
        if parts[i] != b"1":
            break
        if i + 2 >= len(parts):
            break
        subject, event = parts[i + 1].decode(), parts[i + 2].decode()
        j = i + 3
        kwargs: dict[str, str] = {}
        complete = False
        while j + 1 < len(parts):
            if parts[j] == b"":
                complete = True
                j += 1
                break
            kwargs[parts[j].decode()] = parts[j + 1].decode()
            j += 2
        if not complete:
            break
        out.append((subject, event, kwargs))
        i = j
    return out


class EventStream:
    """An open admin.Events stream whose bytes a thread collects."""

    def __init__(self, world: World, src: str = "dom0", dest: str = "dom0",
                 via_qrexec: bool = False, service: str = "admin.Events") -> None:
        self.data = bytearray()
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        if via_qrexec:
            self.proc = subprocess.Popen(
                [*CLIENT, dest, service], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=dict(os.environ, QREXEC_VM_SOCKET=str(world.vm_socket(src))))
            stdout = self.proc.stdout

            def reader() -> bytes:
                return stdout.read1(65536)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(world.socket))
            self.sock.sendall(encode_request(service, src, dest))
            self.sock.shutdown(socket.SHUT_WR)
            sock = self.sock

            def reader() -> bytes:
                return sock.recv(65536)
        self.thread = threading.Thread(target=self._pump, args=(reader,), daemon=True)
        self.thread.start()
        self.wait_for(lambda evs: any(e == "connection-established" for _, e, _ in evs),
                      what="connection-established", raw_ok=True)

    def _pump(self, reader) -> None:
        while True:
            try:
                chunk = reader()
            except (OSError, ValueError):
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def raw(self) -> bytes:
        with self.lock:
            return bytes(self.data)

    def events(self) -> list[tuple[str, str, dict[str, str]]]:
        return parse_events(self.raw())

    def wait_for(self, pred, timeout: float = 5, what: str = "event", raw_ok: bool = False):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.raw()
            if data.startswith(b"2\0") and not raw_ok:
                raise AssertionError(f"stream refused: {data!r}")
            if data.startswith(b"2\0"):
                return None
            evs = parse_events(data)
            if pred(evs):
                return evs
            time.sleep(0.02)
        raise AssertionError(f"timeout waiting for {what}; got {self.events()}")

    def settle(self, seconds: float = 0.3) -> list[tuple[str, str, dict[str, str]]]:
        time.sleep(seconds)
        return self.events()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv()
            self.sock.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
        self.thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class World:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state_dir = self.root / "lib"
        self.run_dir = self.root / "run"
        self.config_dir = self.root / "etc"
        self.socket = self.run_dir / "qubesd.sock"
        self.xml = self.state_dir / "qubes.xml"
        self.log = self.root / "run_all.log"
        self.proc: subprocess.Popen | None = None

    # -- life ---------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> World:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qubesd.run_all", "--state-dir", str(self.state_dir),
                 "--run-dir", str(self.run_dir), "--config-dir", str(self.config_dir)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.wait(lambda: all(self.vm_socket(n).exists() for n in DEMO_RUNNING)
                  and self._up(), timeout, "demo world")
        return self

    def _up(self) -> bool:
        try:
            return self.q("admin.vm.List").startswith(b"0\0")
        except OSError:
            return False

    def wait(self, pred, timeout: float = 10, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"run_all exited: {self.log.read_text()[-3000:]}")
            if pred():
                return
            time.sleep(0.03)
        raise AssertionError(f"timeout waiting for {what}; log: "
                             f"{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def add_bob_private(self) -> None:
        """bob's private template, disposable template, net VM and a domain shown by
        his GUI domain; all tagged owner-bob (bob's set), none visible to alice."""
        for name, method, template, props in BOB_PRIVATE:
            self.ok(method, "dom0", template, f"name={name} label=blue".encode())
            self.ok("admin.vm.tag.Set", name, "owner-bob")
            for key, value in props.items():
                self.ok("admin.vm.property.Set", name, key, value)
        self.ok("admin.vm.property.Set", "bob-gui-app", "guivm", b"sys-gui-bob")
        # a running domain of bob, so that stopping/pausing it means something
        self.ok("admin.vm.Start", "bob-work")
        self.wait(lambda: self.vm_socket("bob-work").exists(), what="bob-work socket")

    # -- calls ----------------------------------------------------------------------------
    def vm_socket(self, name: str) -> Path:
        return self.run_dir / "qrexec" / f"{name}.sock"

    def q(self, method: str, dest: str = "dom0", arg: str = "", payload: bytes = b"",
          src: str = "dom0", timeout: float = 30) -> bytes:
        return raw_call(self.socket, encode_request(method, src, dest, arg, payload),
                        timeout)

    def ok(self, method: str, dest: str = "dom0", arg: str = "", payload: bytes = b"",
           src: str = "dom0") -> str:
        reply = self.q(method, dest, arg, payload, src)
        assert reply.startswith(b"0\0"), (method, dest, arg, reply)
        return reply[2:].decode()

    def vm(self, src: str, target: str, service: str, payload: bytes = b"",
           timeout: float = 30) -> subprocess.CompletedProcess:
        """qrexec-client-vm TARGET SERVICE in domain ``src`` (its per-domain socket)."""
        return subprocess.run(
            [*CLIENT, target, service], check=False, input=payload, capture_output=True,
            timeout=timeout, env=dict(os.environ, QREXEC_VM_SOCKET=str(self.vm_socket(src))))

    def events(self, src: str = "dom0", dest: str = "dom0", via_qrexec: bool = False,
               service: str = "admin.Events") -> EventStream:
        return EventStream(self, src, dest, via_qrexec, service)

    # -- observation ----------------------------------------------------------------------
    def domain_names(self) -> list[str]:
        return [line.split(" ")[0] for line in self.ok("admin.vm.List").splitlines()]

    def states(self) -> dict[str, str]:
        """dom0's view of every domain: List line and CurrentState (libvirt figures)."""
        out = {}
        for line in self.ok("admin.vm.List").splitlines():
            name = line.split(" ")[0]
            # cputime is left out: libvirt's test driver reports the wall clock there
            figures = [f for f in self.ok("admin.vm.CurrentState", name).split()
                       if not f.startswith("cputime=")]
            out[name] = line + " | " + " ".join(figures)
        return out

    def policy_files(self) -> dict[str, bytes]:
        files = {}
        for base in (self.config_dir, self.run_dir / "policy.d"):
            if not base.exists():
                continue
            for path in sorted(base.rglob("*")):
                if path.is_file() and path.suffix in (".policy", ".yaml", "") \
                        and "qrexec" not in path.parts:
                    files[str(path.relative_to(self.root))] = path.read_bytes()
        return files

    def snapshot(self) -> dict:
        return {"xml": self.xml.read_bytes(), "states": self.states(),
                "policy": self.policy_files()}


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["states"] == before["states"], "power/libvirt state changed"
    assert after["policy"].keys() == before["policy"].keys(), "policy files added/removed"
    for name, data in before["policy"].items():
        assert after["policy"][name] == data, f"policy file {name} changed"
    assert after["xml"] == before["xml"], "qubes.xml changed"


def only_connection_established(evs) -> bool:
    return [e for _, e, _ in evs] == ["connection-established"]


def start_world(root: Path) -> World:
    world = World(root)
    try:
        world.start()
        world.add_bob_private()
    except BaseException:
        world.stop()
        raise
    return world


def stop_world(world: World) -> None:
    world.stop()
    if os.environ.get("MULTIUSER_TEST_LOG"):
        print(world.log.read_text())
    shutil.rmtree(world.root, ignore_errors=True)
