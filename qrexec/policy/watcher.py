"""Reloading: rebuild the snapshot when policy files change.

Polling of ``stat()`` data (mtime, size, inode) of the policy directories,
everything under them, the legacy directory, and every file the current
snapshot read (absolute includes).  A change rebuilds a new immutable
snapshot and swaps it in with one attribute assignment (atomic in CPython);
evaluations in flight keep the snapshot they started with.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from .engine import PolicySnapshot, default_legacy_dir, load_policy

log = logging.getLogger("qrexec.policy")

Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def _stat_entry(path: str) -> tuple[str, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


class PolicyWatcher:
    """Keeps :attr:`snapshot` current for a list of policy directories.

    Use :meth:`start` for a background polling thread, or call :meth:`check`
    yourself (for example from an asyncio timer).  ``on_reload(snapshot)`` is
    called after each swap.
    """

    def __init__(self, dirs: Sequence[str | Path], *, legacy_dir: str | Path | None = None,
                 interval: float = 0.5,
                 on_reload: Callable[[PolicySnapshot], None] | None = None) -> None:
        self.dirs = [os.fspath(d) for d in dirs]
        self.legacy_dir = os.fspath(legacy_dir or default_legacy_dir(self.dirs) or "")
        self.interval = interval
        self.on_reload = on_reload
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fingerprint: Fingerprint = ()
        self._snapshot: PolicySnapshot = self._load()

    @property
    def snapshot(self) -> PolicySnapshot:
        """The current snapshot (never None)."""
        return self._snapshot

    def _fingerprint_now(self, files: Sequence[str]) -> Fingerprint:
        out = []
        roots = list(self.dirs)
        if self.legacy_dir:
            roots.append(self.legacy_dir)
        for root in roots:
            e = _stat_entry(root)
            if e is None:
                out.append((root, -1, -1, -1, -1))
                continue
            out.append(e)
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    e = _stat_entry(os.path.join(dirpath, name))
                    if e is not None:
                        out.append(e)
        for f in files:
            e = _stat_entry(f)
            out.append(e if e is not None else (f, -1, -1, -1, -1))
        return tuple(out)

    def _load(self) -> PolicySnapshot:
        before = self._fingerprint_now(())
        snap = load_policy(self.dirs, legacy_dir=self.legacy_dir or None)
        after = self._fingerprint_now(snap.files)
        # something changed while loading: make the next check reload again
        self._fingerprint = after if after[: len(before)] == before else ()
        return snap

    def check(self) -> bool:
        """Reload if anything changed; True if a new snapshot was swapped in."""
        with self._lock:
            if self._fingerprint_now(self._snapshot.files) == self._fingerprint:
                return False
            old = self._snapshot
            snap = self._load()
            if snap.id == old.id and snap.error == old.error:
                return False
            self._snapshot = snap
            if snap.error:
                log.error("policy reload failed, denying everything: %s", snap.error)
            else:
                log.info("policy reloaded: %d rules, id %s", len(snap.rules), snap.id[:12])
        if self.on_reload is not None:
            try:
                self.on_reload(snap)
            except Exception:
                log.exception("on_reload callback failed")
        return True

    def reload(self) -> PolicySnapshot:
        """Force a reload now (e.g. after a policy admin write)."""
        with self._lock:
            self._fingerprint = ()
        self.check()
        return self._snapshot

    def start(self) -> None:
        """Start the background polling thread (daemon thread)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("policy watcher error")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
