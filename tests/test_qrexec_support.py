"""Helpers for the qrexec tests (no tests here).

`StubQubesd` is a small qubesd *peer* speaking the real wire framing on real UNIX sockets
(`R/qubesd.sock`, `R/qubesd.internal.sock`), with just enough of the Admin API for the qrexec
daemon: admin.Events (as dom0), admin.vm.List, admin.vm.Start, internal.GetSystemInfo. Every
other request is answered ``0\\0`` + the header and payload it received, and recorded, so tests
can see exactly what qubesd would have been sent. It runs in a thread with its own event loop;
the qrexec daemon under test is a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class StubQubesd:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.domains: dict[str, dict[str, Any]] = {
            "dom0": {"class": "AdminVM", "state": "Running", "tags": [], "guivm": None},
        }
        self.requests: list[tuple[str, bytes]] = []
        self.subscribers: list[asyncio.Queue[bytes | None]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.Server] = []

    # -- control from the test thread
    def add_domain(self, name: str, state: str = "Halted", guivm: str | None = "dom0",
                   tags: list[str] | None = None, klass: str = "AppVM") -> None:
        self.domains[name] = {"class": klass, "state": state, "tags": tags or [],
                              "guivm": guivm}

    def start(self) -> StubQubesd:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for s in self.servers:
                s.close()
            for q in self.subscribers:
                q.put_nowait(None)
            self.servers.clear()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        for name in ("qubesd.sock", "qubesd.internal.sock"):
            try:
                (self.run_dir / name).unlink()
            except OSError:
                pass

    def shutdown(self) -> None:
        self.stop()

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def set_state(self, name: str, state: str) -> None:
        def do() -> None:
            self.domains[name]["state"] = state
            event = "domain-start" if state == "Running" else "domain-shutdown"
            self._emit(name, event)

        self.loop.call_soon_threadsafe(do)

    def emit(self, subject: str, event: str, **kwargs: str) -> None:
        self.loop.call_soon_threadsafe(lambda: self._emit(subject, event, **kwargs))

    def headers(self) -> list[str]:
        return [h for h, _ in self.requests]

    # -- server side
    def _emit(self, subject: str, event: str, **kwargs: str) -> None:
        frame = b"1\0" + subject.encode() + b"\0" + event.encode() + b"\0"
        for k, v in kwargs.items():
            frame += k.encode() + b"\0" + v.encode() + b"\0"
        frame += b"\0"
        for q in self.subscribers:
            q.put_nowait(frame)

    async def _listen(self) -> None:
        for name in ("qubesd.sock", "qubesd.internal.sock"):
            path = self.run_dir / name
            srv = await asyncio.start_unix_server(self._handle, path=str(path))
            os.chmod(path, 0o660)
            self.servers.append(srv)

    def _sysinfo(self) -> dict[str, Any]:
        return {"domains": {
            n: {"tags": d["tags"], "type": d["class"], "template_for_dispvms": False,
                "default_dispvm": None, "icon": "appvm-red", "label": "0xcc0000",
                "guivm": d["guivm"], "relayvm": None, "transport_rpc": None,
                "power_state": d["state"], "internal": None,
                "uuid": f"00000000-0000-0000-0000-{i:012d}"}
            for i, (n, d) in enumerate(self.domains.items())}}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        header_b, _, payload = data.partition(b"\0")
        header = header_b.decode()
        self.requests.append((header, payload))
        words = header.split(" ")
        method = words[0]
        try:
            if method == "admin.Events+" and words[1] == "dom0":
                q: asyncio.Queue[bytes | None] = asyncio.Queue()
                self.subscribers.append(q)
                writer.write(b"1\0\0connection-established\0\0")
                try:
                    while (item := await q.get()) is not None:
                        writer.write(item)
                        await writer.drain()
                finally:
                    self.subscribers.remove(q)
            elif method == "admin.vm.List+" and words[1] == "dom0":
                lines = "".join(
                    f"{n} class={d['class']} state={d['state']} uuid=x\n"
                    for n, d in self.domains.items())
                writer.write(b"0\0" + lines.encode())
            elif method == "admin.vm.Start+" and words[1] == "dom0":
                name = words[3]
                if self.domains[name]["state"] == "Running":
                    writer.write(b"2\0QubesVMNotHaltedError\0\0Domain is running\0")
                else:
                    self.domains[name]["state"] = "Running"
                    self._emit(name, "domain-start")
                    writer.write(b"0\0")
            elif method == "internal.GetSystemInfo+":
                writer.write(b"0\0" + json.dumps(self._sysinfo()).encode())
            elif method == "admin.Events+":
                writer.write(b"1\0\0connection-established\0\0")
                await writer.drain()
                for i in range(3):
                    writer.write(f"1\0work\0test-event\0n\0{i}\0\0".encode())
                    await writer.drain()
                await asyncio.sleep(30)
            else:
                writer.write(b"0\0HEADER[" + header_b + b"]PAYLOAD[" + payload + b"]")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start_daemon(run_dir: Path, config_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qrexec.daemon", "--run-dir", str(run_dir),
         "--config-dir", str(config_dir), "--debug"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env(), cwd=REPO)
    wait_for(lambda: (run_dir / "qrexec" / "ask-agent.sock").exists(), what="qrexec-daemon")
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(run_dir: Path, domain: str, *args: str, stdin: bytes = b"",
           sock: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    e = env()
    e["QREXEC_VM_SOCKET"] = sock if sock is not None else str(
        run_dir / "qrexec" / f"{domain}.sock")
    return subprocess.run([sys.executable, "-m", "qrexec.client_vm", *args], input=stdin,
                          capture_output=True, env=e, cwd=REPO, timeout=timeout, check=False)


def raw_call(sock_path: Path, request: bytes, payload: bytes = b"") -> tuple[int, bytes, bytes]:
    """Speak the domain socket framing directly; returns (status, stdout, stderr)."""
    import struct

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock_path))
    s.sendall(request + payload)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    s.close()
    out, err, status = b"", b"", -1
    while buf:
        kind, n = struct.unpack(">cI", buf[:5])
        data, buf = buf[5:5 + n], buf[5 + n:]
        if kind == b"O":
            out += data
        elif kind == b"E":
            err += data
        elif kind == b"X":
            status = struct.unpack(">I", data)[0]
    return status, out, err
