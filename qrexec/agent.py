"""The domain-side qrexec agent: offers a domain's services to allowed callers.

``python -m qrexec.agent --socket R/qrexec/<domain>.sock --services-dir DIR [--services-dir DIR2]``

It connects to its own domain's socket (waiting for it to appear), registers with ``SERVE``,
and for every ``REQ <id> <user> <service>+<arg> <source>`` opens ``ACCEPT <id>`` and runs the
service found in the services directories (executable or UNIX socket, `qrexec.services`),
sending its output as frames (`qrexec.transport`). When the domain stops (socket gone), it waits
for the socket to come back, unless ``--once``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path

from qrexec import services, transport

log = logging.getLogger("qrexec.agent")


async def _serve_one_call(
    sock: str, dirs: list[Path], call_id: str, service_and_arg: str, source: str
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock, limit=transport.MAX_LINE)

    async def send(kind: bytes, data: bytes) -> None:
        writer.write(transport.frame(kind, data))
        await writer.drain()

    try:
        writer.write(f"ACCEPT {call_id}\n".encode("ascii"))
        service, arg = transport.split_service(service_and_arg)
        path = services.find_service(dirs, service, arg)
        if path is None:
            await send(transport.FRAME_STDERR, f"no such service: {service}\n".encode())
            status = transport.EXIT_NO_SERVICE
        else:
            status = await services.run_service(path, service, arg, source, None, reader, send)
        log.info("call from %s: %s -> %d", source, service_and_arg, status)
        writer.write(transport.exit_frame(status))
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def run_agent(sock: str, dirs: list[Path], once: bool = False) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(sock, limit=transport.MAX_LINE)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(b"SERVE\n")
            if await reader.readline() != b"OK\n":
                raise ConnectionError("registration refused")
            log.info("agent registered on %s", sock)
            while True:
                line = await reader.readline()
                if not line:
                    break
                words = line.decode("ascii", "replace").split()
                if len(words) != 5 or words[0] != "REQ":
                    log.warning("bad request line from the daemon")
                    continue
                _, call_id, _user, service_and_arg, source = words
                t = asyncio.create_task(_serve_one_call(sock, dirs, call_id, service_and_arg, source))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        log.info("agent disconnected from %s", sock)
        if once:
            return
        await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qrexec-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--services-dir", action="append", type=Path, default=[])
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_agent(args.socket, args.services_dir, args.once))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
