"""Audit log: whole-line records under concurrent writers, and the filtered reader."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from acl import AuditLog, read_audit


def _write(log: AuditLog, who: str, n: int) -> None:
    for i in range(n):
        log.record(
            source=f"{who}-admin",
            user=who,
            method="admin.vm.Start",
            argument="",
            destination=f"{who}-vm{i % 7}",
            allowed=i % 3 != 0,
            reasons={"qrexec": "x.policy:3", "casbin": "grant #1" + "y" * (i % 300)},
            snapshot="abc",
            latency_us=12.34,
        )


def test_concurrent_appends_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    users = [f"user{i}" for i in range(8)]
    per = 500
    with AuditLog(path) as log:
        threads = [threading.Thread(target=_write, args=(log, u, per)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    raw = path.read_bytes().split(b"\n")
    assert raw[-1] == b""
    records = [json.loads(line) for line in raw[:-1]]  # every line is one whole record
    assert len(records) == len(users) * per
    for u in users:
        mine = [r for r in records if r["user"] == u]
        assert len(mine) == per
        # each writer's own records keep their order
        assert [r["destination"] for r in mine] == [f"{u}-vm{i % 7}" for i in range(per)]
    rec = records[0]
    assert set(rec) >= {
        "time", "source", "user", "method", "argument", "destination", "result",
        "reasons", "snapshot", "latency_us",
    }
    assert rec["result"] in ("allow", "deny") and rec["time"].endswith("Z")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)


def test_two_writers_on_one_file_append(tmp_path: Path) -> None:
    # Two independent opens (as after a daemon restart) must not overwrite each other.
    path = tmp_path / "audit.log"
    a, b = AuditLog(path), AuditLog(path)
    ta = threading.Thread(target=_write, args=(a, "a", 300))
    tb = threading.Thread(target=_write, args=(b, "b", 300))
    ta.start()
    tb.start()
    ta.join()
    tb.join()
    a.close()
    b.close()
    assert len(list(read_audit(path))) == 600


def test_reader_filters(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        _write(log, "alice", 20)
        _write(log, "bob", 10)
        log.append({"time": "2000-01-01T00:00:00.000000Z", "user": "old", "destination": "w"})
    assert len(list(read_audit(path, user="alice"))) == 20
    assert len(list(read_audit(path, user="bob", result="deny"))) == 4  # i % 3 == 0
    by_domain = list(read_audit(path, domain="alice-vm0"))
    assert len(by_domain) == 3 and all(r["destination"] == "alice-vm0" for r in by_domain)
    assert len(list(read_audit(path, domain="bob-admin"))) == 10  # source matches too
    last = list(read_audit(path, user="alice", limit=2))
    assert [r["destination"] for r in last] == ["alice-vm4", "alice-vm5"]  # i = 18, 19
    assert [r["user"] for r in read_audit(path, since="2001")] == ["alice"] * 20 + ["bob"] * 10
    assert list(read_audit(tmp_path / "missing.log")) == []


def test_hostile_values_cannot_forge_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        log.record(
            source="evil", method="admin.vm.Start", argument='x\n{"user": "alice"}',
            destination="d\u2028", allowed=False, reasons={"casbin": "no"}, snapshot="s",
            latency_us=1,
        )
    data = path.read_bytes()
    assert data.count(b"\n") == 1 and data.isascii()
    (rec,) = read_audit(path)
    assert rec["argument"] == 'x\n{"user": "alice"}' and rec["user"] is None


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        _write(log, "alice", 3)
    with open(path, "ab") as f:
        f.write(b'{"user": "alice", "meth')
    assert len(list(read_audit(path, user="alice"))) == 3
