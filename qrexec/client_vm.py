"""qrexec-client-vm: the caller's side of a qrexec call, from inside a domain.

``qrexec-client-vm [-t] [-T] [-p PREFIX] [--buffer-size=N] TARGET SERVICE[+ARG] [LOCAL_PROGRAM ARGS...]``

The domain's socket comes from ``$QREXEC_VM_SOCKET`` (``<run-dir>/qrexec/<domain>.sock``); the
daemon knows who we are from that socket alone. Sends ``CALL TARGET SERVICE\\n`` (framing in
`qrexec.transport`), streams stdin (after the optional ``-p`` prefix) until EOF and half-closes,
and writes the service's reply to stdout unchanged as it arrives (so ``admin.Events`` streams).
With LOCAL_PROGRAM, the program's stdout is the payload and the reply is its stdin.

Exit: the service's status (0 when delivered to qubesd or a socket service), 126 refused
("Request refused" on stderr), 127 no such service, 125 qrexec error (e.g. no socket).
``-t``/``-T`` (escape-character filtering) are accepted and ignored: output is passed unchanged.

Kept free of asyncio and argparse so that it starts fast.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from qrexec import transport

USAGE = (
    "usage: qrexec-client-vm [-t] [-T] [-p PREFIX] [--buffer-size=N] "
    "TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]\n"
)


def _die(message: str, status: int = transport.EXIT_QREXEC_ERROR) -> int:
    sys.stderr.write(f"qrexec-client-vm: {message}\n")
    sys.stderr.flush()
    return status


def _parse(argv: list[str]) -> tuple[bytes, list[str]] | None:
    prefix = b""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a in ("-t", "-T", "-tT", "-Tt", "--filter-escape-chars-stdout",
                 "--filter-escape-chars-stderr", "--no-filter-escape-chars-stdout",
                 "--no-filter-escape-chars-stderr", "--replace-esc-stdout",
                 "--replace-esc-stderr", "--no-exit-on-service-eof",
                 "--no-exit-on-client-eof"):
            i += 1
        elif a == "-p" or a == "--prefix-data":
            if i + 1 >= len(argv):
                return None
            prefix = argv[i + 1].encode()
            i += 2
        elif a.startswith("-p") and len(a) > 2:
            prefix = a[2:].encode()
            i += 1
        elif a.startswith("--prefix-data="):
            prefix = a.split("=", 1)[1].encode()
            i += 1
        elif a.startswith("--buffer-size="):
            i += 1
        elif a == "--buffer-size":
            i += 2
        else:
            return None
    rest = argv[i:]
    if len(rest) < 2:
        return None
    return prefix, rest


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _pump_input(sock: socket.socket, in_fd: int, prefix: bytes) -> None:
    try:
        if prefix:
            sock.sendall(prefix)
        while True:
            try:
                chunk = os.read(in_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            sock.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def call(target: str, service: str, sock_path: str, prefix: bytes, in_fd: int, out_fd: int,
         err_fd: int) -> int:
    """Run one call; returns the exit status."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
    except OSError as e:
        return _die(f"cannot connect to qrexec socket {sock_path}: {e.strerror or e}")
    # the daemon turns anything unusual into "_"; doing it for space and newline here keeps
    # the request line well-formed with the same result
    target = target.replace("$", "@").replace(" ", "_").replace("\n", "_")
    service = service.replace(" ", "_").replace("\n", "_")
    try:
        sock.sendall(f"CALL {target} {service}\n".encode("utf-8", "surrogateescape"))
    except OSError as e:
        return _die(f"cannot send the request: {e}")
    feeder = threading.Thread(target=_pump_input, args=(sock, in_fd, prefix), daemon=True)
    feeder.start()
    status = transport.EXIT_QREXEC_ERROR
    stdout_open = True
    try:
        while True:
            header = _recv_exact(sock, transport.FRAME_HEADER.size)
            if header is None:
                return _die("connection to qrexec daemon lost")
            kind, length = transport.FRAME_HEADER.unpack(header)
            if length > transport.MAX_FRAME:
                return _die("protocol error")
            data = _recv_exact(sock, length) if length else b""
            if data is None:
                return _die("connection to qrexec daemon lost")
            if kind == transport.FRAME_STDOUT:
                if stdout_open:
                    try:
                        _write_all(out_fd, data)
                    except BrokenPipeError:
                        stdout_open = False
            elif kind == transport.FRAME_STDERR:
                try:
                    _write_all(err_fd, data)
                except OSError:
                    pass
            elif kind == transport.FRAME_EXIT and length == 4:
                status = int(transport.EXIT_STRUCT.unpack(data)[0]) & 0xFF
                break
            else:
                return _die("protocol error")
    except OSError as e:
        return _die(f"qrexec connection error: {e}")
    finally:
        sock.close()
    if status == transport.EXIT_REFUSED:
        sys.stderr.write("Request refused\n")
        sys.stderr.flush()
    return status


HELP = USAGE + """
Call SERVICE (with its +ARG) on TARGET as the domain whose socket you use: stdin is the
payload, stdout the reply (for Admin API calls, qubesd's reply bytes unchanged).

  TARGET    a domain name, or dom0 / @adminvm for global Admin API calls
  -p PREFIX send PREFIX before stdin; -t/-T are accepted and ignored
  LOCAL_PROGRAM  run it with its stdout as the payload and the reply as its stdin

Environment: QREXEC_VM_SOCKET, the domain's socket (<run-dir>/qrexec/<domain>.sock),
which is also the caller's identity.
Exit status: the service's status (0 for Admin API calls whatever qubesd answered),
126 refused by policy, 127 no such service, 125 qrexec error.
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(HELP)
        return 0
    parsed = _parse(args)
    if parsed is None:
        sys.stderr.write(USAGE)
        return 2
    prefix, rest = parsed
    target, service, local_program = rest[0], rest[1], rest[2:]
    sock_path = os.environ.get("QREXEC_VM_SOCKET")
    if not sock_path:
        return _die("QREXEC_VM_SOCKET is not set")
    if not local_program:
        return call(target, service, sock_path, prefix, 0, 1, 2)
    # LOCAL_PROGRAM: its stdout is the payload, the reply is its stdin.
    import subprocess

    try:
        proc = subprocess.Popen(local_program, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as e:
        return _die(f"cannot run {local_program[0]}: {e}")
    assert proc.stdin is not None and proc.stdout is not None
    status = call(target, service, sock_path, prefix, proc.stdout.fileno(), proc.stdin.fileno(), 2)
    proc.stdin.close()
    proc.wait()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
