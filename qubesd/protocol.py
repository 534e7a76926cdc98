"""The qubesd wire protocol (spec/admin-api.md section 2), with no I/O of its own.

Request:   ``<method>+<arg> <src> <dest_type> <dest>\\0<payload>`` then EOF.
Responses: ``0\\0<content>`` (OK), ``1\\0<subject>\\0<event>\\0(<k>\\0<v>\\0)*\\0`` (EVENT),
           ``2\\0<ExcClass>\\0<traceback>\\0<message>\\0`` (EXCEPTION).
"""

from dataclasses import dataclass

MAX_REQUEST = 65536


class FramingError(Exception):
    """The request cannot be parsed; upstream drops the connection without a reply."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    arg: str
    src: str
    dest: str
    payload: bytes


def parse_request(untrusted_data: bytes) -> Request:
    """Split a complete request into its fields; raises `FramingError` on bad framing."""
    if len(untrusted_data) > MAX_REQUEST:
        raise FramingError("request too long")
    header, sep, payload = untrusted_data.partition(b"\0")
    if not sep:
        raise FramingError("no NUL after header")
    try:
        untrusted_header = header.decode("ascii")
    except UnicodeDecodeError:
        raise FramingError("header is not ASCII") from None
    fields = untrusted_header.split(" ", 3)
    if len(fields) != 4:
        raise FramingError("header needs 4 fields")
    method_arg, src, dest_type, dest = fields
    if dest_type == "keyword":
        if dest != "adminvm":
            raise FramingError(f"unknown keyword {dest!r}")
        dest = "dom0"
    elif dest_type != "name":
        raise FramingError(f"unknown destination type {dest_type!r}")
    method, _, arg = method_arg.partition("+")
    return Request(method, arg, src, dest, payload)


def encode_request(method: str, src: str, dest: str, arg: str = "",
                   payload: bytes = b"") -> bytes:
    return f"{method}+{arg} {src} name {dest}\0".encode("ascii") + payload


def ok(content: str | None) -> bytes:
    if content is None:
        return b"0\0"
    return b"0\0" + content.encode("utf-8")


def exception(class_name: str, message: str, traceback: str = "") -> bytes:
    return b"".join((b"2\0", class_name.encode(), b"\0", traceback.encode("utf-8"), b"\0",
                     message.encode("utf-8", "backslashreplace"), b"\0"))


def event(subject: str, name: str, kwargs: dict) -> bytes:
    """Encode one EVENT frame; values are rendered with ``str()`` as upstream."""
    parts = [b"1", subject.encode("ascii", "replace"), name.encode("ascii", "replace")]
    for key, value in kwargs.items():
        parts.append(str(key).encode("ascii", "replace"))
        parts.append(str(value).encode("ascii", "replace"))
    parts.append(b"")
    return b"\0".join(parts) + b"\0"
