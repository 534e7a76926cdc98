"""A real qubesd in a subprocess, on temporary directories, for tests and benchmarks."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from qubesd.protocol import encode_request


def raw_call(path: Path | str, data: bytes, timeout: float = 30) -> bytes:
    """Send raw request bytes, half-close, read the whole reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class QubesdProcess:
    def __init__(self, root: Path, extra_args: tuple[str, ...] = (),
                 env: dict | None = None) -> None:
        self.root = Path(root)
        self.state_dir = self.root / "lib"
        self.run_dir = self.root / "run"
        self.config_dir = self.root / "etc"
        self.socket = self.run_dir / "qubesd.sock"
        self.internal_socket = self.run_dir / "qubesd.internal.sock"
        self.xml = self.state_dir / "qubes.xml"
        self.log = self.root / "qubesd.log"
        self.extra_args = extra_args
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> "QubesdProcess":
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **(self.env or {}))
        with open(self.log, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qubesd.daemon", "--state-dir", str(self.state_dir),
                 "--run-dir", str(self.run_dir), "--config-dir", str(self.config_dir),
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qubesd exited: {self.log.read_text()}")
            if self.socket.exists() and self.internal_socket.exists():
                try:
                    self.call("admin.vm.List", "dom0")
                    return self
                except OSError:
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"qubesd did not start: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self.proc = None

    def call(self, method: str, dest: str = "dom0", arg: str = "", payload: bytes = b"",
             src: str = "dom0") -> bytes:
        return raw_call(self.socket, encode_request(method, src, dest, arg, payload))

    def ok(self, method: str, dest: str = "dom0", arg: str = "", payload: bytes = b"",
           src: str = "dom0") -> str:
        """Call and require an OK reply; returns its content."""
        reply = self.call(method, dest, arg, payload, src)
        assert reply.startswith(b"0\0"), reply
        return reply[2:].decode()

    def error(self, method: str, dest: str = "dom0", arg: str = "", payload: bytes = b"",
              src: str = "dom0") -> tuple[str, str]:
        """Call and require an EXCEPTION reply; returns (class name, message)."""
        reply = self.call(method, dest, arg, payload, src)
        assert reply.startswith(b"2\0"), reply
        _, name, _tb, message, _ = reply.split(b"\0", 4)
        return name.decode(), message.decode()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def seed_upstream_fixture(daemon: QubesdProcess) -> QubesdProcess:
    """The upstream test fixture of spec 8.1: test-template (qid 1), test-vm1 (qid 2)."""
    daemon.ok("admin.property.Set", "dom0", "default_kernel", b"1.0")
    daemon.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=test-template label=black")
    daemon.ok("admin.property.Set", "dom0", "default_template", b"test-template")
    daemon.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=test-vm1 label=red")
    return daemon
