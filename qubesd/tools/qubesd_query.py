"""qubesd-query: low-level qubesd call; writes the raw reply to stdout.

``qubesd-query [-c SOCK] [-e] [--fail] [--null] [--single-line] [--max-bytes N]
SRC METHOD DEST [ARG]`` sends ``"{METHOD}+{ARG} {SRC} name {DEST}\\0" + stdin`` and copies
the reply, byte for byte, to stdout (spec/admin-api.md section 2.3).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from qubesd import paths
from qubesd.client import QubesDaemonCommunicationError, SocketTransport
from qubesd.tools import _common

MAX_PAYLOAD_SIZE = 65536
SINGLE_LINE_MAX = 1024


def get_parser() -> argparse.ArgumentParser:
    parser = _common.ToolParser(
        prog="qubesd-query",
        description="Low-level qubesd interrogation tool: sends one request and writes the "
                    "raw reply (0\\0..., 2\\0..., or an event stream) to stdout.")
    parser.add_argument("--connect", "-c", metavar="PATH", dest="socket", default=None,
                        help=f"path to the qubesd UNIX socket (default: $QUBESD_SOCKET or "
                             f"{paths.qubesd_socket()})")
    parser.add_argument("--empty", "-e", dest="payload", action="store_false", default=True,
                        help="do not read stdin; send an empty payload")
    parser.add_argument("--fail", action="store_true",
                        help="exit with the reply's type digit (0 OK, 2 exception); 1 if "
                             "there is no valid reply")
    parser.add_argument("--null", action="store_true",
                        help="print an extra NUL byte after the reply")
    parser.add_argument("--single-line", action="store_true",
                        help="read only one line of printable ASCII from stdin as payload")
    parser.add_argument("--max-bytes", type=int, metavar="N",
                        help=f"maximum payload size read from stdin (at most "
                             f"{MAX_PAYLOAD_SIZE})")
    parser.add_argument("src", metavar="SRC", help="source qube (e.g. dom0)")
    parser.add_argument("method", metavar="METHOD", help="method name, e.g. admin.vm.List")
    parser.add_argument("dest", metavar="DEST", help="destination qube (dom0 for global calls)")
    parser.add_argument("arg", metavar="ARG", nargs="?", default="",
                        help="argument to the method")
    return parser


def _read_single_line(limit: int) -> bytes:
    untrusted_value = bytearray()
    for _ in range(limit):
        untrusted_byte = os.read(0, 1)
        if not untrusted_byte:
            raise _common.ToolError("end of input without a newline")
        (code,) = untrusted_byte
        if code == 10:
            return bytes(untrusted_value)
        if not 0x20 <= code <= 0x7E:
            raise _common.ToolError(f"invalid byte {code} in input")
        untrusted_value.append(code)
    raise _common.ToolError(f"no newline found in first {limit} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    limit = SINGLE_LINE_MAX if args.single_line else MAX_PAYLOAD_SIZE
    if args.max_bytes is not None:
        if args.max_bytes > MAX_PAYLOAD_SIZE or args.max_bytes < 0:
            parser.error(f"--max-bytes must be between 0 and {MAX_PAYLOAD_SIZE}")
        limit = args.max_bytes
    for name in ("src", "method", "dest", "arg"):
        value = getattr(args, name)
        if any(c in value for c in " \0") or not value.isascii():
            parser.error(f"{name.upper()} must be ASCII without spaces or NUL")

    def body() -> int:
        if not args.payload:
            payload = b""
        elif args.single_line:
            payload = _read_single_line(limit)
        else:
            payload = sys.stdin.buffer.read(MAX_PAYLOAD_SIZE + 1)
            if len(payload) > limit:
                raise _common.ToolError(f"payload too long (max {limit})")
        transport = SocketTransport(args.socket, src=args.src)
        out = sys.stdout.buffer
        code = 1
        try:
            if args.method in ("admin.Events", "admin.vm.Stats"):
                code = _stream(transport, args, payload, out)
            else:
                reply = transport.call_raw(args.dest, args.method, args.arg, payload)
                out.write(reply)
                if reply[:1].isdigit() and reply[1:2] == b"\0":
                    code = int(reply[:1])
        except QubesDaemonCommunicationError as err:
            raise _common.ToolError(str(err)) from None
        finally:
            if args.null:
                out.write(b"\0")
            out.flush()
        return code if args.fail else 0

    return _common.run("qubesd-query", body)


def _stream(transport: SocketTransport, args: argparse.Namespace, payload: bytes,
            out: object) -> int:
    """Copy a streaming reply as it arrives (until the daemon closes or Ctrl-C)."""
    sock = transport.connect()
    code = 1
    try:
        sock.sendall(transport.header(args.dest, args.method, args.arg) + payload)
        sock.shutdown(socket.SHUT_WR)
        first = True
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            if first and chunk[:1].isdigit():
                code = int(chunk[:1])
            first = False
            out.write(chunk)  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]
    finally:
        sock.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
