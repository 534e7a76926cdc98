"""Append-only audit log: one JSON object per line, one ``write(2)`` per record.

The file is opened with ``O_APPEND``, so every record lands at the end even with several
writers, and each record is written with a single ``os.write`` of the whole line, so
readers never see two records interleaved. A lock additionally serialises the writers of
one process (it also covers the rare short write, which is retried for the remainder).
Values are JSON-escaped with ``ensure_ascii``: a caller-chosen argument cannot forge a
line break or a second record.

Record fields (DESIGN section 4, point 5)::

    time        ISO 8601 UTC with microseconds
    source      calling VM
    user        user it acts for, or null
    method      e.g. admin.vm.Start
    argument    the +arg, "" if none
    destination destination domain name ("dom0" for global calls)
    result      "allow" or "deny"
    reasons     {layer: reason}, e.g. {"qrexec": "...:12", "casbin": "...", "value": "..."}
    snapshot    id of the policy snapshot that decided
    latency_us  time the gate took, in microseconds
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Self

_second_cache: tuple[int, str] = (-1, "")


def now() -> str:
    """The ``time`` field of a record: ISO 8601 UTC with microseconds."""
    return _now()


def _now() -> str:
    """ISO 8601 UTC with microseconds; the formatted second is reused, since formatting
    a datetime costs more than the rest of a record."""
    global _second_cache
    now = time.time()
    second = int(now)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    return f"{prefix}.{int((now - second) * 1e6):06d}Z"


class AuditLog:
    """Writer side. Thread-safe; keep one instance per file per process."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o600, fsync: bool = False):
        self.path = os.fspath(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode
        )

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line (adds ``time`` if missing)."""
        if "time" not in record:
            record = {"time": _now(), **record}
        data = (
            json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        ).encode("ascii")
        self.write_line(data)

    def write_line(self, data: bytes) -> None:
        """Write one already-encoded record; ``data`` must be one JSON object and end in
        a newline (a hot path may encode records itself, see :func:`now`)."""
        with self._lock:
            if self._fd is None:
                raise ValueError("audit log is closed")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self._fsync:
                os.fsync(self._fd)

    def record(
        self,
        *,
        source: str,
        method: str,
        destination: str,
        allowed: bool,
        reasons: Mapping[str, str],
        snapshot: str,
        latency_us: float,
        user: str | None = None,
        argument: str = "",
        **extra: Any,
    ) -> dict[str, Any]:
        """Build, write and return one record with the standard fields."""
        rec: dict[str, Any] = {
            "time": _now(),
            "source": source,
            "user": user,
            "method": method,
            "argument": argument,
            "destination": destination,
            "result": "allow" if allowed else "deny",
            "reasons": dict(reasons),
            "snapshot": snapshot,
            "latency_us": round(float(latency_us), 1),
        }
        rec.update(extra)
        self.append(rec)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit(
    path: str | os.PathLike[str],
    *,
    user: str | None = None,
    domain: str | None = None,
    source: str | None = None,
    method: str | None = None,
    result: str | None = None,
    since: str | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Records of the log at ``path`` matching every given filter, oldest first.

    ``domain`` matches the destination or the source; ``since`` is an ISO time compared
    as text (the format sorts); ``limit`` keeps only the last N matches. Lines that do
    not parse (e.g. torn by a crash mid-write) are skipped. A missing file reads empty.
    """

    def match(rec: dict[str, Any]) -> bool:
        if user is not None and rec.get("user") != user:
            return False
        if domain is not None and domain not in (rec.get("destination"), rec.get("source")):
            return False
        if source is not None and rec.get("source") != source:
            return False
        if method is not None and rec.get("method") != method:
            return False
        if result is not None and rec.get("result") != result:
            return False
        return since is None or str(rec.get("time", "")) >= since

    def scan() -> Iterator[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and match(rec):
                        yield rec
        except FileNotFoundError:
            return

    if limit is None:
        yield from scan()
    else:
        yield from deque(scan(), maxlen=max(0, limit))
