"""End to end: the real qubesd and qrexec-daemon as subprocesses, the real policy engine,
qrexec-client-vm and the stock-like client library in VM mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_qrexec_support import REPO, client, env, start_daemon, stop_process, wait_for

POLICY = """\
admin.vm.List               *   mgmt    @adminvm    allow target=dom0
admin.vm.List               *   mgmt    @anyvm      allow target=dom0
admin.vm.Create.StandaloneVM * mgmt    @adminvm    allow target=dom0
admin.vm.property.Get       *   mgmt    @anyvm      allow target=dom0
admin.vm.property.GetAll    *   mgmt    @anyvm      allow target=dom0
admin.vm.property.GetAll    *   mgmt    @adminvm    allow target=dom0
admin.vm.property.List      *   mgmt    @adminvm    allow target=dom0
admin.vm.property.List      *   mgmt    @anyvm      allow target=dom0
admin.vm.Start              *   mgmt    @anyvm      allow target=dom0
admin.Events                *   mgmt    @adminvm    allow target=dom0
admin.Events                *   mgmt    @anyvm      allow target=dom0
admin.vm.List               *   other   @anyvm      deny
"""


def dom0_call(run: Path, header: str, payload: bytes = b"") -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(run / "qubesd.sock"))
    s.sendall(header.encode() + b"\0" + payload)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


class World:
    def __init__(self, tmp: Path) -> None:
        self.state, self.run, self.conf = tmp / "lib", tmp / "run", tmp / "etc"
        (self.conf / "policy.d").mkdir(parents=True)
        (self.conf / "policy.d" / "30-e2e.policy").write_text(POLICY)
        self.log = tmp / "log"
        self.qubesd: subprocess.Popen[bytes] | None = None
        self.qrexec: subprocess.Popen[bytes] | None = None

    def start_qubesd(self) -> None:
        self.qubesd = subprocess.Popen(
            [sys.executable, "-m", "qubesd.daemon", "--state-dir", str(self.state),
             "--run-dir", str(self.run), "--config-dir", str(self.conf)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env(), cwd=REPO)

        def up() -> bool:
            try:
                return dom0_call(self.run, "admin.vm.List+ dom0 name dom0").startswith(b"0\0")
            except OSError:
                return False

        wait_for(up, 20, "qubesd")

    def sock(self, name: str) -> Path:
        return self.run / "qrexec" / f"{name}.sock"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        w.start_qubesd()
        for name in ("mgmt", "other", "work"):
            r = dom0_call(w.run, "admin.vm.Create.StandaloneVM+ dom0 name dom0",
                          f"name={name} label=red".encode())
            assert r == b"0\0", r
        w.qrexec = start_daemon(w.run, w.conf, w.log)
        yield w
    finally:
        for p in (w.qrexec, w.qubesd):
            if p is not None:
                stop_process(p)
        if os.environ.get("QREXEC_TEST_LOG"):
            print(w.log.read_text())


def test_domain_socket_follows_qubesd_start_and_shutdown(world: World) -> None:
    assert not world.sock("mgmt").exists()
    assert not world.sock("dom0").exists()
    assert dom0_call(world.run, "admin.vm.Start+ dom0 name mgmt") == b"0\0"
    wait_for(lambda: world.sock("mgmt").exists(), what="mgmt socket")
    assert dom0_call(world.run, "admin.vm.Kill+ dom0 name mgmt") == b"0\0"
    wait_for(lambda: not world.sock("mgmt").exists(), what="mgmt socket removed")


def test_vm_call_through_qubesd_acts_as_the_socket_domain(world: World) -> None:
    dom0_call(world.run, "admin.vm.Start+ dom0 name mgmt")
    dom0_call(world.run, "admin.vm.Start+ dom0 name other")
    wait_for(lambda: world.sock("mgmt").exists() and world.sock("other").exists())
    r = client(world.run, "mgmt", "dom0", "admin.vm.List")
    assert r.returncode == 0, r.stderr
    names = {ln.split(" ")[0] for ln in r.stdout[2:].decode().splitlines()}
    assert r.stdout.startswith(b"0\0") and {"mgmt", "other", "work"} <= names
    r = client(world.run, "other", "dom0", "admin.vm.List")
    assert r.returncode == 126 and b"Request refused" in r.stderr
    # the created domain is tagged created-by-<source>: qubesd saw the socket's domain
    r = client(world.run, "mgmt", "dom0", "admin.vm.Create.StandaloneVM",
               stdin=b"name=made-by-mgmt label=red")
    assert (r.returncode, r.stdout) == (0, b"0\0"), r.stderr
    tags = dom0_call(world.run, "admin.vm.tag.List+ dom0 name made-by-mgmt")
    assert b"created-by-mgmt\n" in tags
    # qubesd's own errors come back unchanged with exit 0; to a domain, a missing
    # domain is refused like one it may not see (no existence oracle)
    r = client(world.run, "mgmt", "no-such-vm", "admin.vm.property.Get+label")
    assert r.returncode == 0
    assert r.stdout.startswith(b"2\0PermissionDenied\0\0Request refused: ")
    r = client(world.run, "mgmt", "dom0", "admin.vm.Create.StandaloneVM",
               stdin=b"name=made-by-mgmt label=red")
    assert r.stdout.startswith(b"2\0QubesVMAlreadyExistsError\0"), r.stdout


def test_client_library_vm_mode(world: World) -> None:
    dom0_call(world.run, "admin.vm.Start+ dom0 name mgmt")
    wait_for(lambda: world.sock("mgmt").exists())
    e = env()
    e["QREXEC_VM_SOCKET"] = str(world.sock("mgmt"))
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.pop("QUBESD_SOCKET", None)
    r = subprocess.run([sys.executable, "-m", "qubesd.tools.qvm_ls"], capture_output=True,
                       env=e, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert b"mgmt" in r.stdout and b"work" in r.stdout


def test_events_stream_and_qubesd_restart(world: World) -> None:
    dom0_call(world.run, "admin.vm.Start+ dom0 name mgmt")
    wait_for(lambda: world.sock("mgmt").exists())
    e = env()
    e["QREXEC_VM_SOCKET"] = str(world.sock("mgmt"))
    p = subprocess.Popen([sys.executable, "-m", "qrexec.client_vm", "dom0", "admin.Events"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=e, cwd=REPO)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.close()
    got = b""
    while b"connection-established" not in got:
        chunk = os.read(p.stdout.fileno(), 65536)
        assert chunk
        got += chunk
    assert got.startswith(b"1\0\0connection-established\0\0")
    assert dom0_call(world.run, "admin.vm.Start+ dom0 name work") == b"0\0"
    while b"work\0domain-start\0" not in got:
        chunk = os.read(p.stdout.fileno(), 65536)
        assert chunk
        got += chunk
    p.kill()
    p.wait()
    # qubesd restarts: libvirt's test driver forgets running domains, sockets go away,
    # and the daemon follows the new qubesd
    assert world.qubesd is not None
    stop_process(world.qubesd)
    world.start_qubesd()
    wait_for(lambda: not world.sock("mgmt").exists(), 20, "resync after restart")
    dom0_call(world.run, "admin.vm.Start+ dom0 name mgmt")
    wait_for(lambda: world.sock("mgmt").exists(), 20, "socket after restart")
    r = client(world.run, "mgmt", "dom0", "admin.vm.List")
    assert r.returncode == 0 and r.stdout.startswith(b"0\0")
