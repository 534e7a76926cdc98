"""Wire formats shared by qrexec-daemon, qrexec-client-vm, the domain agent and the ask agent.

Everything here is small and synchronous-import-safe: `qrexec.client_vm` imports this module
and must start fast, so no asyncio at import time.

Domain socket (``<run-dir>/qrexec/<domain>.sock``)
--------------------------------------------------
A connection on that socket *is* the domain; nothing the peer sends names its source.
The first line (at most :data:`MAX_LINE` bytes, ``\\n``-terminated, ASCII) says what it wants:

``CALL <target> <service>[+<arg>]\\n``
    A qrexec call (qrexec-client-vm). Everything after the line, until the caller half-closes
    (``shutdown(SHUT_WR)``), is the service's stdin. The daemon answers with *frames*
    (below): stdout/stderr chunks, then exactly one exit frame, then it closes.
    The daemon sanitises target and service as upstream qrexec-daemon (spec qrexec.md §7).

``SERVE\\n``
    A domain agent offers the domain's services. The daemon answers ``OK\\n`` and then sends one
    line per allowed call to this domain: ``REQ <id> <user> <service>+<arg> <source>\\n``.
    The agent answers each by opening a new connection on the same socket with
    ``ACCEPT <id>\\n``; the daemon then streams the caller's stdin on it (raw, half-closed at
    EOF) and relays the frames the agent sends back (stdout, stderr, exit) to the caller.
    A new ``SERVE`` replaces the previous agent of that domain.

Frames (daemon -> caller, agent -> daemon): ``<type:1 byte><length:u32 big-endian><data>``

===== ================================================================
``O``  stdout bytes (the service's reply, passed through unchanged)
``E``  stderr bytes
``X``  exit status, 4 bytes u32 big-endian; always the last frame
===== ================================================================

Exit statuses: 0 delivered (socket services and qubesd always 0), the service's own status for
executables, 126 refused by policy, 127 no such service, 125 qrexec error.

Ask-agent socket (``<run-dir>/qrexec/ask-agent.sock``)
------------------------------------------------------
Trusted (dom0-side) socket, mode 0660. An agent sends ``AGENT <guivm>\\n`` naming the GUI domain
whose users it asks (``dom0`` for the dom0 agent); the daemon answers ``OK\\n``. Then the daemon
sends JSON lines ``{"id", "source", "target", "service", "argument", "targets",
"default_target", "rule"}`` and the agent answers JSON lines ``{"id", "answer": "allow"|"deny",
"target"}``.
"""

from __future__ import annotations

import re
import struct

MAX_LINE = 65536
MAX_SERVICE_DESCRIPTOR = 65000

FRAME_STDOUT = b"O"
FRAME_STDERR = b"E"
FRAME_EXIT = b"X"
FRAME_HEADER = struct.Struct(">cI")
EXIT_STRUCT = struct.Struct(">I")
MAX_FRAME = 1 << 20

EXIT_OK = 0
EXIT_QREXEC_ERROR = 125
EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127

ASK_AGENT_SOCKET = "ask-agent.sock"

_SERVICE_BAD = re.compile(rb"[^A-Za-z0-9_.+\-]")
_TARGET_BAD = re.compile(rb"[^A-Za-z0-9_.\-@:]")


class ProtocolError(Exception):
    """Malformed input on one of the qrexec sockets."""


def frame(kind: bytes, data: bytes) -> bytes:
    return FRAME_HEADER.pack(kind, len(data)) + data


def exit_frame(status: int) -> bytes:
    return frame(FRAME_EXIT, EXIT_STRUCT.pack(status & 0xFFFFFFFF))


def sanitize_service(untrusted_service: bytes) -> str:
    """Upstream qrexec-daemon: the first char must not be NUL or ``+``, anything outside
    ``[A-Za-z0-9_.+-]`` becomes ``_``."""
    if not untrusted_service or untrusted_service[:1] in (b"\0", b"+"):
        raise ProtocolError("invalid service name")
    if len(untrusted_service) > MAX_SERVICE_DESCRIPTOR:
        raise ProtocolError("service descriptor too long")
    return _SERVICE_BAD.sub(b"_", untrusted_service).decode("ascii")


def sanitize_target(untrusted_target: bytes) -> str:
    """Upstream qrexec-daemon: anything outside ``[A-Za-z0-9_.-@:]`` becomes ``_``."""
    if len(untrusted_target) > 64:
        raise ProtocolError("target name too long")
    return _TARGET_BAD.sub(b"_", untrusted_target).decode("ascii")


def split_service(service_and_arg: str) -> tuple[str, str]:
    """``svc+arg`` -> (``svc``, ``arg``); the argument starts after the first ``+``."""
    service, _, arg = service_and_arg.partition("+")
    return service, arg


def requested_target_descriptor(requested: str) -> tuple[str, str]:
    """(type, value) for the service descriptor and QREXEC_REQUESTED_TARGET*.

    ``dom0``/``@adminvm`` -> ``keyword adminvm``; other ``@x`` tokens -> ``keyword x`` (the ``@``
    stripped, as upstream); anything else -> ``name <requested>``."""
    if requested in ("dom0", "@adminvm", ""):
        return "keyword", "adminvm"
    if requested.startswith("@"):
        return "keyword", requested[1:]
    return "name", requested
