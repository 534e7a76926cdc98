"""Finding and running a qrexec service (spec qrexec.md §7 "Service lookup on the target").

Used by qrexec-daemon for dom0 services and by the domain agent (`qrexec.agent`) for a
domain's own services. A service is looked up as ``<svc>+<arg>``, then ``<svc>``, in each
directory in order. It may be:

* an executable: run with ``argv[1]`` = the argument (only when non-empty) and the ``QREXEC_*``
  environment; its stdout/stderr become frames and its exit status the call's status;
* a UNIX socket: it first receives ``<svc>+<arg> <source>[ <type> <target>]\\0``, then the
  caller's stdin; its reply is stdout and the status is 0.

Output goes through ``send(kind, data)`` (see `qrexec.transport` frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from qrexec import transport

Send = Callable[[bytes, bytes], Awaitable[None]]
CHUNK = 65536


def find_service(dirs: Sequence[Path], service: str, arg: str) -> Path | None:
    """The first existing ``svc+arg`` or ``svc`` file in ``dirs`` (in that order per dir)."""
    names = [f"{service}+{arg}", service] if arg else [service]
    for d in dirs:
        for name in names:
            p = Path(d) / name
            try:
                st = p.stat()
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISREG(st.st_mode):
                return p
    return None


def service_environment(
    service: str, arg: str, source: str, requested_target: str | None
) -> dict[str, str]:
    """The ``QREXEC_*`` variables of spec §7, added to the daemon's own environment."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("QREXEC_"):
            del env[k]
    env["QREXEC_SERVICE_FULL_NAME"] = f"{service}+{arg}"
    env["QREXEC_REMOTE_DOMAIN"] = source
    env["QREXEC_SERVICE_ARGUMENT"] = arg
    if requested_target is None:
        env["QREXEC_REQUESTED_TARGET_TYPE"] = ""
    else:
        kind, value = transport.requested_target_descriptor(requested_target)
        env["QREXEC_REQUESTED_TARGET_TYPE"] = kind
        if kind == "keyword":
            env["QREXEC_REQUESTED_TARGET_KEYWORD"] = value
        else:
            env["QREXEC_REQUESTED_TARGET"] = value
    return env


async def pump_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``."""
    try:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except (ConnectionError, OSError):
        pass


async def run_service(
    path: Path,
    service: str,
    arg: str,
    source: str,
    requested_target: str | None,
    stdin: asyncio.StreamReader,
    send: Send,
) -> int:
    """Run the service at ``path`` (from `find_service`); return its exit status.

    The caller sends the exit frame."""
    st = path.stat()
    if stat.S_ISSOCK(st.st_mode):
        return await run_socket_service(path, service, arg, source, requested_target, stdin, send)
    if not os.access(path, os.X_OK):
        await send(transport.FRAME_STDERR, f"service {path.name} is not executable\n".encode())
        return transport.EXIT_NO_SERVICE
    return await _run_executable(path, service, arg, source, requested_target, stdin, send)


async def run_socket_service(
    path: Path,
    service: str,
    arg: str,
    source: str,
    requested_target: str | None,
    stdin: asyncio.StreamReader,
    send: Send,
) -> int:
    """A socket-based service: the descriptor ``svc+arg source [type target]\0``, then
    stdin; everything the socket answers is stdout. qubesd.sock is one of these."""
    descriptor = f"{service}+{arg} {source}"
    if requested_target is not None:
        kind, value = transport.requested_target_descriptor(requested_target)
        descriptor += f" {kind} {value}"
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=CHUNK)
    except OSError as e:
        await send(transport.FRAME_STDERR, f"cannot connect to service socket: {e}\n".encode())
        return transport.EXIT_QREXEC_ERROR
    writer.write(descriptor.encode("ascii") + b"\0")
    feeder = asyncio.create_task(pump_raw(stdin, writer))
    try:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                break
            await send(transport.FRAME_STDOUT, chunk)
    except (ConnectionError, OSError):
        pass
    finally:
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
        writer.close()
    return transport.EXIT_OK


async def _run_executable(
    path: Path,
    service: str,
    arg: str,
    source: str,
    requested_target: str | None,
    stdin: asyncio.StreamReader,
    send: Send,
) -> int:
    argv = [str(path)] + ([arg] if arg else [])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=service_environment(service, arg, source, requested_target),
            start_new_session=True,
        )
    except OSError as e:
        await send(transport.FRAME_STDERR, f"cannot execute service: {e}\n".encode())
        return transport.EXIT_QREXEC_ERROR
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc_stdin = proc.stdin

    async def feed() -> None:
        try:
            while True:
                chunk = await stdin.read(CHUNK)
                if not chunk:
                    break
                proc_stdin.write(chunk)
                await proc_stdin.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                proc_stdin.close()

    async def relay(stream: asyncio.StreamReader, kind: bytes) -> None:
        while True:
            chunk = await stream.read(CHUNK)
            if not chunk:
                return
            await send(kind, chunk)

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.gather(
            relay(proc.stdout, transport.FRAME_STDOUT), relay(proc.stderr, transport.FRAME_STDERR)
        )
        status = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
    return status if status >= 0 else 128 - status
