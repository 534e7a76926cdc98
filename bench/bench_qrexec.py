"""Calls per second of admin.vm.List: direct on qubesd.sock vs through qrexec.

Starts the real qubesd and qrexec-daemon as subprocesses in a temporary directory, creates
20 domains, starts a management VM ``mgmt`` and measures, sequentially:

* direct, as dom0 (``admin.vm.List+ dom0 name dom0`` on qubesd.sock);
* direct, claiming source mgmt on the trusted socket (same qubesd work as the qrexec path:
  the list is filtered by policy for a non-dom0 caller);
* through qrexec-daemon, speaking the domain-socket framing in-process (daemon overhead only);
* through ``qrexec-client-vm`` (one process per call, as the stock client library does).

Prints the figures; not a timed test.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POLICY = """\
admin.vm.List   *   mgmt    @adminvm    allow target=dom0
admin.vm.List   *   mgmt    @anyvm      allow target=dom0
"""


def _recv_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def qubesd_call(run: Path, header: str, payload: bytes = b"") -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(run / "qubesd.sock"))
    s.sendall(header.encode() + b"\0" + payload)
    s.shutdown(socket.SHUT_WR)
    out = _recv_all(s)
    s.close()
    return out


def qrexec_raw(sock: Path) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock))
    s.sendall(b"CALL dom0 admin.vm.List\n")
    s.shutdown(socket.SHUT_WR)
    buf = _recv_all(s)
    s.close()
    out = b""
    while buf:
        kind, n = struct.unpack(">cI", buf[:5])
        if kind == b"O":
            out += buf[5:5 + n]
        buf = buf[5 + n:]
    return out


def rate(name: str, fn: Callable[[], bytes], n: int) -> None:
    reply = fn()
    assert reply.startswith(b"0\0"), (name, reply[:80])
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t0
    print(f"{name:58s} {n / dt:8.1f} calls/s  ({dt / n * 1e3:6.2f} ms/call, n={n})")


def wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-qrexec-") as tmp:
        base = Path(tmp)
        run, conf, state = base / "run", base / "etc", base / "lib"
        (conf / "policy.d").mkdir(parents=True)
        (conf / "policy.d" / "30-bench.policy").write_text(POLICY)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        log = (base / "log").open("wb")
        procs = [subprocess.Popen(
            [sys.executable, "-m", "qubesd.daemon", "--state-dir", str(state),
             "--run-dir", str(run), "--config-dir", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)]
        try:
            wait(lambda: qubesd_call(run, "admin.vm.List+ dom0 name dom0").startswith(b"0\0"),
                 "qubesd")
            for i in range(20):
                name = "mgmt" if i == 0 else f"vm{i:02d}"
                r = qubesd_call(run, "admin.vm.Create.StandaloneVM+ dom0 name dom0",
                                f"name={name} label=red".encode())
                assert r == b"0\0", r
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "qrexec.daemon", "--run-dir", str(run),
                 "--config-dir", str(conf)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO))
            qubesd_call(run, "admin.vm.Start+ dom0 name mgmt")
            sock = run / "qrexec" / "mgmt.sock"
            wait(sock.exists, "mgmt socket")
            print(f"admin.vm.List, 21 domains, sequential calls ({os.cpu_count()} CPUs)")
            rate("direct on qubesd.sock, source dom0",
                 lambda: qubesd_call(run, "admin.vm.List+ dom0 name dom0"), 500)
            rate("direct on qubesd.sock, source mgmt (policy-filtered)",
                 lambda: qubesd_call(run, "admin.vm.List+ mgmt keyword adminvm"), 500)
            rate("via qrexec-daemon, domain socket in-process", lambda: qrexec_raw(sock), 500)
            cenv = dict(env, QREXEC_VM_SOCKET=str(sock))

            def via_client() -> bytes:
                return subprocess.run(
                    [sys.executable, "-m", "qrexec.client_vm", "dom0", "admin.vm.List"],
                    input=b"", capture_output=True, env=cenv, check=True).stdout

            rate("via qrexec-client-vm process (python -m)", via_client, 50)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
