"""The UNIX-socket servers speaking the qubesd wire protocol.

One connection is one request: read until the client half-closes (at most 64 KiB), answer
once (or stream events), close. A framing error or an oversized request drops the
connection without a reply, as upstream. An unexpected internal error is logged with its
traceback and answered with a ``QubesException`` instead of upstream's silent abort, so
the client gets a clear message and the daemon keeps serving.
"""

import asyncio
import logging
import os
import socket
import traceback

from qubesd import protocol
from qubesd.dispatch import Dispatcher
from qubesd.exc import WIRE_EXCEPTIONS, PermissionDenied, ProtocolError

log = logging.getLogger("qubesd.server")


def _class_name(exc: BaseException) -> str | None:
    """The wire name of an exception the caller may see, or None for internal errors."""
    if isinstance(exc, WIRE_EXCEPTIONS):
        return type(exc).__name__
    return None


class QubesdProtocol(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher, debug: bool) -> None:
        self.dispatcher = dispatcher
        self.debug = debug
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task | None = None
        self.closed = False
        self.request: protocol.Request | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            return  # data after EOF cannot happen; ignore anything else defensively
        self.buffer += data
        if len(self.buffer) > protocol.MAX_REQUEST:
            log.warning("request too long; dropping connection")
            self.transport.abort()
            self.closed = True

    def eof_received(self) -> bool:
        if self.closed:
            return False
        try:
            request = protocol.parse_request(bytes(self.buffer))
        except protocol.FramingError as err:
            log.warning("framing error: %s; dropping connection", err)
            self.transport.abort()
            return False
        self.buffer.clear()
        self.request = request
        self.task = asyncio.ensure_future(self.respond(request))
        return True  # keep the write side open for the reply

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.task is not None and not self.task.done():
            method = self.dispatcher.methods.get(self.request.method)
            if method is not None and method.stream:  # only streams are cancellable
                self.task.cancel()

    def send_event(self, subject, event: str, kwargs: dict) -> None:
        if self.closed:
            return
        name = "" if subject is None or subject is self.dispatcher.daemon.app else str(subject)
        self.transport.write(protocol.event(name, event, kwargs))

    async def respond(self, request: protocol.Request) -> None:
        try:
            result = await self.dispatcher.execute(request, self.send_event)
            reply = protocol.ok(result)
            method = self.dispatcher.methods.get(request.method)
            if method is not None and method.mutating:  # what changed, and who asked
                log.info("%s+%s %s -> %s: done", request.method, request.arg, request.src,
                         request.dest)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - every error becomes a reply
            reply = self.error_reply(request, exc)
        if not self.closed:
            self.transport.write(reply)
            self.transport.close()

    def error_reply(self, request: protocol.Request, exc: Exception) -> bytes:
        name = _class_name(exc)
        where = f"{request.method}+{request.arg} {request.src} -> {request.dest}"
        if name is None:
            log.error("unexpected error in %s", where, exc_info=exc)
            name, message = "QubesException", f"Internal error in {request.method}: {exc}"
        else:
            message = str(exc)
            if isinstance(exc, (PermissionDenied, ProtocolError)):
                log.warning("failed call %s: %s: %s", where, name, message)
            else:
                log.debug("failed call %s: %s: %s", where, name, message)
        tb = "".join(traceback.format_exception(exc)) if self.debug else ""
        # the stock client formats the message with %; a bare % would crash it
        return protocol.exception(name, message.replace("%", "%%"), tb)


async def serve(path: str, dispatcher: Dispatcher, debug: bool = False) -> asyncio.AbstractServer:
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket of a dead daemon
        else:
            raise FileExistsError(f"another daemon is listening on {path}")
        finally:
            probe.close()
    old_umask = os.umask(0o007)
    try:
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: QubesdProtocol(dispatcher, debug), path, backlog=512)
    finally:
        os.umask(old_umask)
    return server

