"""qrexec-daemon: per-domain sockets, policy evaluation and routing of qrexec calls.

``qrexec-daemon [--run-dir R] [--config-dir C]``, or in-process ``await serve(R, C)``.

* One UNIX socket per running domain, ``R/qrexec/<name>.sock`` (mode 0660), created on
  ``domain-start`` and removed on ``domain-shutdown``/``domain-delete``, following qubesd's
  ``admin.Events`` stream as dom0 on ``R/qubesd.sock`` (resynchronised with ``admin.vm.List`` on
  every (re)connection). dom0 never gets a socket. A connection on ``<name>.sock`` **is** that
  domain: the source of every request is taken from the socket, never from what the peer sends.
* Framing on a domain socket (full text in `qrexec.transport`): the caller sends one line
  ``CALL <target> <service>[+<arg>]\n`` (target chars outside ``[A-Za-z0-9_.-@:]`` and service
  chars outside ``[A-Za-z0-9_.+-]`` become ``_``; a service starting with ``+`` is refused), then
  the payload until it half-closes. The daemon answers with frames
  ``<type:1><len:u32 BE><data>``: ``O`` stdout (the reply, unchanged), ``E`` stderr, and last
  ``X`` with the u32 exit status (0 delivered, 126 refused, 127 no such service, 125 qrexec
  error, else the service's own status). A domain agent sends ``SERVE\n`` instead, gets ``OK\n``
  and then lines ``REQ <id> <user> <svc>+<arg> <source>\n``; it answers each on a new
  connection ``ACCEPT <id>\n`` (payload in, frames out). Ask agents use
  ``R/qrexec/ask-agent.sock``: ``AGENT <guivm>\n`` then JSON lines both ways.
* Every ``CALL`` is evaluated against the qrexec policy in ``R/policy.d`` and ``C/policy.d``
  (reloaded on change) with the system info of qubesd's ``internal.GetSystemInfo`` (cached,
  refreshed when events say domains, tags, power states or relevant properties changed).
* Routing of an allowed call:

  - target dom0, service ``admin.*`` or ``policy.*``: ``R/qubesd.sock`` with the exact descriptor
    ``service+arg source name|keyword target\\0`` (the target as *requested*: ``keyword adminvm``
    for dom0/@adminvm), then the payload; qubesd's reply bytes are relayed unchanged, exit 0;
  - target dom0, other services: ``C/qubes-rpc/`` then ``R/qubes-rpc/`` (`qrexec.services`);
  - target another domain: forwarded to the agent that domain registered with ``SERVE``;
    a halted target is first started through qubesd (``admin.vm.Start``) when the policy says
    ``autostart``;
  - ``ask``: asked through the ask agent registered for the *source's* GUI domain (``guivm`` in
    the system info); no agent (or no guivm) means deny.

* Refusals end with exit 126, unknown services with 127, qrexec errors with 125.
* One log line per call: source, service+arg, requested and resolved target, verdict, rule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrexec import services, transport

log = logging.getLogger("qrexec.daemon")

ADMIN_PREFIXES = ("admin.", "policy.")
RUNNING_STATES = ("Running", "Paused", "Suspended")
AGENT_WAIT = 15.0
ASK_TIMEOUT = 120.0
RECONNECT_DELAY = 0.5

# Events after which the system info (domains, tags, power states, guivm, ...) is stale.
_SYSINFO_EVENTS = (
    "domain-add",
    "domain-delete",
    "domain-start",
    "domain-spawn",
    "domain-shutdown",
    "domain-stopped",
    "domain-paused",
    "domain-unpaused",
    "domain-start-failed",
    "domain-tag-add:",
    "domain-tag-delete:",
    "domain-feature-set:internal",
    "domain-feature-delete:internal",
)
_SYSINFO_PROPERTIES = {
    "name",
    "guivm",
    "default_dispvm",
    "template_for_dispvms",
    "label",
    "relayvm",
    "transport_rpc",
    "template",
}


def _sysinfo_stale(event: str) -> bool:
    if event.startswith(_SYSINFO_EVENTS):
        return True
    for prefix in ("property-set:", "property-reset:", "property-del:"):
        if event.startswith(prefix):
            return event[len(prefix) :] in _SYSINFO_PROPERTIES
    return False


class QubesdError(Exception):
    """qubesd answered with an exception frame."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type


async def qubesd_call(sock: Path, header: str, payload: bytes = b"") -> bytes:
    """One request on a qubesd socket; the OK content, or QubesdError."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(header.encode("ascii") + b"\0" + payload)
        writer.write_eof()
        data = await reader.read()
    finally:
        writer.close()
    if data.startswith(b"0\0"):
        return data[2:]
    if data.startswith(b"2\0"):
        parts = data.split(b"\0")
        exc_type = parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
        msg = parts[3].decode("utf-8", "replace") if len(parts) > 3 else ""
        raise QubesdError(exc_type, msg)
    raise QubesdError("ProtocolError", f"unexpected reply from qubesd: {data[:40]!r}")


@dataclass
class DomainEndpoint:
    name: str
    path: Path
    server: asyncio.Server
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass
class DomainAgent:
    domain: str
    writer: asyncio.StreamWriter


@dataclass
class AskAgent:
    guivm: str
    writer: asyncio.StreamWriter
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Decision:
    verdict: str  # allow | deny
    target: str = ""
    user: str = "DEFAULT"
    autostart: bool = True
    rule: str = "-"
    reason: str = ""
    asked: bool = False


def _resolve_uuid(target: str, raw_sysinfo: dict[str, Any]) -> str:
    """``uuid:<u>`` -> the domain's name (dom0's uuid -> ``dom0``); anything else unchanged."""
    if not target.startswith("uuid:"):
        return target
    uuid = target[5:]
    if uuid == "00000000-0000-0000-0000-000000000000":
        return "dom0"
    for name, dom in (raw_sysinfo.get("domains") or {}).items():
        if isinstance(dom, dict) and dom.get("uuid") == uuid:
            return str(name)
    return target


def _rule_str(rule: Any) -> str:
    if rule is None:
        return "-"
    if isinstance(rule, tuple) and len(rule) == 2:
        return f"{rule[0]}:{rule[1]}"
    if isinstance(rule, dict):
        return f"{rule.get('file')}:{rule.get('line')}"
    for f, ln in (("file", "line"), ("filepath", "lineno"), ("path", "lineno")):
        if hasattr(rule, f) and hasattr(rule, ln):
            return f"{getattr(rule, f)}:{getattr(rule, ln)}"
    return str(rule)


class PolicySource:
    """The current qrexec policy snapshot of ``R/policy.d`` + ``C/policy.d``."""

    def __init__(self, dirs: list[Path]) -> None:
        from qrexec.policy import PolicyWatcher

        self.dirs = dirs
        self.watcher = PolicyWatcher(dirs)
        if self.watcher.snapshot.error:
            log.error("policy failed to load, denying everything: %s", self.watcher.snapshot.error)
        self.watcher.start()

    def snapshot(self) -> Any:
        return self.watcher.snapshot

    def close(self) -> None:
        self.watcher.stop()


class QrexecDaemon:
    def __init__(self, run_dir: Path, config_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.config_dir = Path(config_dir)
        self.sock_dir = self.run_dir / "qrexec"
        self.qubesd_sock = self.run_dir / "qubesd.sock"
        self.internal_sock = self.run_dir / "qubesd.internal.sock"
        self.service_dirs = [self.config_dir / "qubes-rpc", self.run_dir / "qubes-rpc"]
        self.endpoints: dict[str, DomainEndpoint] = {}
        self.agents: dict[str, DomainAgent] = {}
        self.agent_changed = asyncio.Condition()
        self.pending: dict[str, tuple[str, asyncio.Future[Any]]] = {}
        self.ask_agents: dict[str, AskAgent] = {}
        self.policy = PolicySource([self.run_dir / "policy.d", self.config_dir / "policy.d"])
        self.events_connected = False
        self.synced = asyncio.Event()
        self._sysinfo_gen = 0
        self._sysinfo: tuple[int, dict[str, Any], Any] | None = None
        self._sysinfo_lock = asyncio.Lock()
        self._ask_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.sock_dir.glob("*.sock"):
            with contextlib.suppress(OSError):
                stale.unlink()
        path = self.sock_dir / transport.ASK_AGENT_SOCKET
        self._ask_server = await asyncio.start_unix_server(
            self._handle_ask_agent, path=str(path), limit=transport.MAX_LINE
        )
        os.chmod(path, 0o660)
        self._spawn(self._follow_qubesd())

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        for name in list(self.endpoints):
            await self._remove_domain(name)
        self.policy.close()
        if self._ask_server is not None:
            self._ask_server.close()
            with contextlib.suppress(OSError):
                (self.sock_dir / transport.ASK_AGENT_SOCKET).unlink()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ qubesd events

    async def _follow_qubesd(self) -> None:
        while True:
            try:
                await self._events_session()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.IncompleteReadError, transport.ProtocolError) as e:
                log.debug("qubesd events connection: %s", e)
            except Exception:
                log.exception("qubesd events connection failed")
            if self.events_connected:
                log.warning("lost qubesd events stream; reconnecting")
            self.events_connected = False
            self._sysinfo_gen += 1
            await asyncio.sleep(RECONNECT_DELAY)

    async def _events_session(self) -> None:
        reader, writer = await asyncio.open_unix_connection(
            str(self.qubesd_sock), limit=transport.MAX_LINE
        )
        try:
            writer.write(b"admin.Events+ dom0 name dom0\0")
            writer.write_eof()
            subject, event, _ = await self._read_event(reader)
            if event != "connection-established":
                raise transport.ProtocolError(f"unexpected first event {event!r}")
            self._sysinfo_gen += 1
            await self._sync_running()
            self.events_connected = True
            self.synced.set()
            log.info("following qubesd events (%d running domains)", len(self.endpoints))
            while True:
                subject, event, kwargs = await self._read_event(reader)
                await self._on_event(subject, event, kwargs)
        finally:
            writer.close()

    @staticmethod
    async def _read_event(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
        kind = await reader.readuntil(b"\0")
        if kind == b"2\0":
            exc = await reader.readuntil(b"\0")
            await reader.readuntil(b"\0")
            msg = await reader.readuntil(b"\0")
            raise transport.ProtocolError(f"qubesd refused admin.Events: {exc!r} {msg!r}")
        if kind != b"1\0":
            raise transport.ProtocolError(f"bad event frame type {kind!r}")
        subject = (await reader.readuntil(b"\0"))[:-1].decode("ascii", "replace")
        event = (await reader.readuntil(b"\0"))[:-1].decode("ascii", "replace")
        kwargs: dict[str, str] = {}
        while True:
            key = (await reader.readuntil(b"\0"))[:-1]
            if not key:
                break
            value = (await reader.readuntil(b"\0"))[:-1]
            kwargs[key.decode("ascii", "replace")] = value.decode("ascii", "replace")
        return subject, event, kwargs

    async def _on_event(self, subject: str, event: str, kwargs: dict[str, str]) -> None:
        if _sysinfo_stale(event):
            self._sysinfo_gen += 1
        if event == "domain-start" and subject:
            await self._add_domain(subject)
        elif event in ("domain-shutdown", "domain-stopped") and subject:
            await self._remove_domain(subject)
        elif event == "domain-delete":
            name = kwargs.get("vm") or subject
            if name:
                await self._remove_domain(name)

    async def _sync_running(self) -> None:
        data = await qubesd_call(self.qubesd_sock, "admin.vm.List+ dom0 name dom0")
        running: set[str] = set()
        for untrusted_line in data.decode("ascii", "replace").splitlines():
            name, _, rest = untrusted_line.partition(" ")
            props = dict(p.split("=", 1) for p in rest.split() if "=" in p)
            if name == "dom0" or props.get("class") == "AdminVM":
                continue
            if props.get("state") in RUNNING_STATES:
                running.add(name)
        for name in list(self.endpoints):
            if name not in running:
                await self._remove_domain(name)
        for name in running:
            await self._add_domain(name)

    # ------------------------------------------------------------------ per-domain sockets

    async def _add_domain(self, name: str) -> None:
        if name in self.endpoints or name == "dom0":
            return
        if (
            not name
            or "/" in name
            or name.startswith(".")
            or f"{name}.sock" == transport.ASK_AGENT_SOCKET
        ):
            log.error("refusing to create a qrexec socket for domain %r", name)
            return
        path = self.sock_dir / f"{name}.sock"
        with contextlib.suppress(OSError):
            path.unlink()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self._handle_domain_conn(name, r, w)

        server = await asyncio.start_unix_server(handler, path=str(path), limit=transport.MAX_LINE)
        os.chmod(path, 0o660)
        self.endpoints[name] = DomainEndpoint(name, path, server)
        log.info("domain %s: socket %s", name, path)

    async def _remove_domain(self, name: str) -> None:
        ep = self.endpoints.pop(name, None)
        if ep is None:
            return
        ep.server.close()
        with contextlib.suppress(OSError):
            ep.path.unlink()
        agent = self.agents.pop(name, None)
        if agent is not None:
            agent.writer.close()
        for t in list(ep.tasks):
            t.cancel()
        for dom, fut in list(self.pending.values()):
            if dom == name and not fut.done():
                fut.set_exception(ConnectionError(f"{name} stopped"))
        log.info("domain %s: socket removed", name)

    async def _handle_domain_conn(
        self, domain: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ep = self.endpoints.get(domain)
        task = asyncio.current_task()
        if ep is None or task is None:
            writer.close()
            return
        ep.tasks.add(task)
        try:
            try:
                untrusted_line = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            untrusted_words = untrusted_line[:-1].split(b" ")
            verb = untrusted_words[0]
            if verb == b"CALL" and len(untrusted_words) == 3:
                await self._handle_call(
                    domain, untrusted_words[1], untrusted_words[2], reader, writer
                )
            elif verb == b"SERVE" and len(untrusted_words) == 1:
                await self._handle_serve(domain, reader, writer)
            elif verb == b"ACCEPT" and len(untrusted_words) == 2:
                await self._handle_accept(domain, untrusted_words[1], reader, writer)
            else:
                log.warning("domain %s: malformed request line", domain)
                await _finish(writer, transport.EXIT_QREXEC_ERROR, "malformed request\n")
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("domain %s: request failed", domain)
            with contextlib.suppress(Exception):
                await _finish(writer, transport.EXIT_QREXEC_ERROR, "internal qrexec error\n")
        finally:
            ep.tasks.discard(task)
            writer.close()

    # ------------------------------------------------------------------ domain agents

    async def _handle_serve(
        self, domain: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        old = self.agents.get(domain)
        if old is not None:
            old.writer.close()
        agent = DomainAgent(domain, writer)
        async with self.agent_changed:
            self.agents[domain] = agent
            self.agent_changed.notify_all()
        writer.write(b"OK\n")
        await writer.drain()
        log.info("domain %s: agent registered", domain)
        try:
            while await reader.read(4096):  # the agent sends nothing more; EOF means it left
                pass
        finally:
            if self.agents.get(domain) is agent:
                del self.agents[domain]
                log.info("domain %s: agent left", domain)

    async def _handle_accept(
        self,
        domain: str,
        untrusted_id: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        call_id = untrusted_id.decode("ascii", "replace")
        entry = self.pending.get(call_id)
        if entry is None or entry[0] != domain or entry[1].done():
            log.warning("domain %s: ACCEPT for unknown call", domain)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry[1].set_result((reader, writer, done))
        await done  # the calling side owns the connection until the call ends

    async def _wait_agent(self, domain: str, timeout: float) -> DomainAgent | None:
        async with self.agent_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.agent_changed.wait_for(lambda: domain in self.agents), timeout
                )
        return self.agents.get(domain)

    # ------------------------------------------------------------------ system info, policy

    async def system_info(self) -> tuple[dict[str, Any], Any]:
        """(raw JSON dict, SystemInfo); refreshed when events said it changed."""
        from qrexec.policy import SystemInfo

        async with self._sysinfo_lock:
            gen = self._sysinfo_gen
            if self._sysinfo is not None and self._sysinfo[0] == gen and self.events_connected:
                return self._sysinfo[1], self._sysinfo[2]
            data = await qubesd_call(self.internal_sock, "internal.GetSystemInfo+ dom0 name dom0")
            raw = json.loads(data)
            info = SystemInfo.from_json(raw)
            self._sysinfo = (gen, raw, info)
            return raw, info

    async def decide(
        self, source: str, service: str, arg: str, requested: str
    ) -> tuple[Decision, dict[str, Any]]:
        raw, info = await self.system_info()
        snap = self.policy.snapshot()
        res = snap.evaluate(service, arg, source, requested, info)
        rule = _rule_str(getattr(res, "rule", None))
        reason = str(getattr(res, "reason", "") or "")
        if res.result == "deny":
            return Decision("deny", rule=rule, reason=reason), raw
        if res.result == "allow":
            target = str(res.target)
            dec = Decision(
                "allow",
                target="dom0" if target == "@adminvm" else target,
                user=str(res.user or "DEFAULT"),
                autostart=bool(res.autostart),
                rule=rule,
                reason=reason,
            )
            return dec, raw
        # ask
        targets = [str(t) for t in (res.targets_for_ask or [])]
        answer = await self._ask(raw, source, service, arg, requested, res, targets, rule)
        if answer is None:
            return Decision("deny", rule=rule, reason="no ask agent or user said no", asked=True), raw
        chosen = "dom0" if answer == "@adminvm" else answer
        if chosen not in targets:
            return Decision("deny", rule=rule, reason=f"target {chosen} not offered", asked=True), raw
        return (
            Decision(
                "allow",
                target=chosen,
                user=str(res.user or "DEFAULT"),
                autostart=bool(res.autostart),
                rule=rule,
                reason="allowed by the user",
                asked=True,
            ),
            raw,
        )

    # ------------------------------------------------------------------ ask agents

    async def _handle_ask_agent(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        agent: AskAgent | None = None
        try:
            untrusted_line = await reader.readuntil(b"\n")
            words = untrusted_line.decode("ascii", "replace").split()
            if len(words) != 2 or words[0] != "AGENT":
                writer.close()
                return
            agent = AskAgent(transport.sanitize_target(words[1].encode()), writer)
            old = self.ask_agents.get(agent.guivm)
            if old is not None:
                old.writer.close()
            self.ask_agents[agent.guivm] = agent
            writer.write(b"OK\n")
            await writer.drain()
            log.info("ask agent registered for GUI domain %s", agent.guivm)
            while True:
                untrusted_line = await reader.readline()
                if not untrusted_line:
                    break
                try:
                    untrusted_msg = json.loads(untrusted_line)
                    fut = agent.pending.pop(str(untrusted_msg["id"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if not fut.done():
                    fut.set_result(untrusted_msg)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            if agent is not None:
                if self.ask_agents.get(agent.guivm) is agent:
                    del self.ask_agents[agent.guivm]
                for fut in agent.pending.values():
                    if not fut.done():
                        fut.set_result({"answer": "deny"})
            writer.close()

    async def _ask(
        self,
        raw_sysinfo: dict[str, Any],
        source: str,
        service: str,
        arg: str,
        requested: str,
        res: Any,
        targets: list[str],
        rule: str,
    ) -> str | None:
        """The target the user chose, or None (denied / nobody to ask)."""
        dom = raw_sysinfo.get("domains", {}).get(source) or {}
        guivm = dom.get("guivm")
        if not guivm:
            log.info("ask for %s: source has no guivm", source)
            return None
        agent = self.ask_agents.get(guivm)
        if agent is None:
            log.info("ask for %s: no ask agent for GUI domain %s", source, guivm)
            return None
        call_id = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        agent.pending[call_id] = fut
        default = getattr(res, "default_target", None)
        msg = {
            "id": call_id,
            "source": source,
            "target": requested,
            "service": service,
            "argument": arg,
            "targets": targets,
            "default_target": str(default) if default else None,
            "rule": rule,
        }
        try:
            agent.writer.write(json.dumps(msg).encode() + b"\n")
            await agent.writer.drain()
            untrusted_answer = await asyncio.wait_for(fut, ASK_TIMEOUT)
        except (TimeoutError, OSError):
            return None
        finally:
            agent.pending.pop(call_id, None)
        if untrusted_answer.get("answer") != "allow":
            return None
        untrusted_target = untrusted_answer.get("target") or (str(default) if default else "")
        if not isinstance(untrusted_target, str) or not untrusted_target:
            return None
        return transport.sanitize_target(untrusted_target.encode("ascii", "replace"))

    # ------------------------------------------------------------------ calls

    async def _handle_call(
        self,
        source: str,
        untrusted_target: bytes,
        untrusted_service: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        t0 = time.monotonic()
        try:
            requested = transport.sanitize_target(untrusted_target)
            service_and_arg = transport.sanitize_service(untrusted_service)
        except transport.ProtocolError as e:
            log.warning("call source=%s: malformed request: %s", source, e)
            await _finish(writer, transport.EXIT_QREXEC_ERROR, f"{e}\n")
            return
        service, arg = transport.split_service(service_and_arg)
        if not requested:
            requested = "@default"
        desc = f"source={source} service={service}+{arg} requested={requested}"
        try:
            dec, raw = await self.decide(source, service, arg, requested)
        except (OSError, QubesdError, ValueError) as e:
            log.warning("call %s verdict=error (no system info from qubesd: %s)", desc, e)
            await _finish(writer, transport.EXIT_QREXEC_ERROR, "qrexec: qubesd unavailable\n")
            return
        except Exception as e:  # noqa: BLE001 - fail closed: any policy trouble denies
            log.warning("call %s verdict=deny (error: %s)", desc, e)
            await _finish(writer, transport.EXIT_REFUSED)
            return
        if dec.verdict == "allow":
            dec.target = _resolve_uuid(dec.target, raw)
        if dec.verdict == "allow" and dec.target == source:
            dec = Decision("deny", rule=dec.rule, reason="loopback qrexec connection not supported")
        verdict = ("asked-" if dec.asked else "") + dec.verdict
        log.info(
            "call %s target=%s verdict=%s rule=%s%s",
            desc,
            dec.target or "-",
            verdict,
            dec.rule,
            f" ({dec.reason})" if dec.reason and dec.verdict == "deny" else "",
        )
        if dec.verdict != "allow":
            await _finish(writer, transport.EXIT_REFUSED)
            return
        if dec.target == "dom0":
            if service.startswith(ADMIN_PREFIXES):
                status = await self._relay_qubesd(
                    source, service, arg, requested, reader, writer
                )
            else:
                status = await self._dom0_service(source, service, arg, requested, reader, writer)
        elif dec.target.startswith("@dispvm"):
            status = transport.EXIT_QREXEC_ERROR
            await _send(writer, transport.FRAME_STDERR, b"disposable targets are not supported\n")
        else:
            status = await self._domain_service(source, service, arg, dec, reader, writer)
        log.debug("call %s done status=%d in %.1f ms", desc, status, (time.monotonic() - t0) * 1e3)
        await _finish(writer, status)

    async def _relay_qubesd(
        self,
        source: str,
        service: str,
        arg: str,
        requested: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> int:
        # qubesd.sock is a socket-based service, as /etc/qubes-rpc/admin.* are upstream:
        # the descriptor is exactly qubesd's request header

        async def send(kind: bytes, data: bytes) -> None:
            await _send(writer, kind, data)

        return await services.run_socket_service(self.qubesd_sock, service, arg, source,
                                                 requested, reader, send)

    async def _dom0_service(
        self,
        source: str,
        service: str,
        arg: str,
        requested: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> int:
        path = services.find_service(self.service_dirs, service, arg)
        if path is None:
            log.info("call source=%s service=%s+%s: no such dom0 service", source, service, arg)
            await _send(writer, transport.FRAME_STDERR, f"no such service: {service}\n".encode())
            return transport.EXIT_NO_SERVICE

        async def send(kind: bytes, data: bytes) -> None:
            await _send(writer, kind, data)

        return await services.run_service(path, service, arg, source, requested, reader, send)

    async def _start_domain(self, name: str) -> None:
        try:
            await qubesd_call(self.qubesd_sock, f"admin.vm.Start+ dom0 name {name}")
        except QubesdError as e:
            if e.exc_type != "QubesVMNotHaltedError":
                raise

    async def _domain_service(
        self,
        source: str,
        service: str,
        arg: str,
        dec: Decision,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> int:
        target = dec.target
        if target not in self.endpoints:
            if not dec.autostart:
                log.info("call to %s refused: target not running, no autostart", target)
                return transport.EXIT_REFUSED
            try:
                log.info("autostarting %s for %s", target, source)
                await self._start_domain(target)
            except (QubesdError, OSError) as e:
                await _send(writer, transport.FRAME_STDERR, f"cannot start {target}: {e}\n".encode())
                return transport.EXIT_QREXEC_ERROR
        agent = await self._wait_agent(target, AGENT_WAIT)
        if agent is None:
            await _send(writer, transport.FRAME_STDERR, f"no qrexec agent in {target}\n".encode())
            return transport.EXIT_QREXEC_ERROR
        call_id = secrets.token_hex(12)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = (target, fut)
        try:
            agent.writer.write(f"REQ {call_id} {dec.user} {service}+{arg} {source}\n".encode())
            await agent.writer.drain()
            s_reader, s_writer, done = await asyncio.wait_for(fut, AGENT_WAIT)
        except (TimeoutError, OSError):
            await _send(writer, transport.FRAME_STDERR, f"agent in {target} did not answer\n".encode())
            return transport.EXIT_QREXEC_ERROR
        finally:
            self.pending.pop(call_id, None)
        feeder = asyncio.create_task(services.pump_raw(reader, s_writer))
        try:
            while True:
                try:
                    kind, data = await read_frame(s_reader)
                except (asyncio.IncompleteReadError, transport.ProtocolError, OSError):
                    return transport.EXIT_QREXEC_ERROR
                if kind == transport.FRAME_EXIT:
                    return int(transport.EXIT_STRUCT.unpack(data)[0])
                await _send(writer, kind, data)
        finally:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
            if not done.done():
                done.set_result(None)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(transport.FRAME_HEADER.size)
    kind, length = transport.FRAME_HEADER.unpack(header)
    if kind not in (transport.FRAME_STDOUT, transport.FRAME_STDERR, transport.FRAME_EXIT):
        raise transport.ProtocolError(f"bad frame type {kind!r}")
    if length > transport.MAX_FRAME or (
        kind == transport.FRAME_EXIT and length != transport.EXIT_STRUCT.size
    ):
        raise transport.ProtocolError("bad frame length")
    return kind, await reader.readexactly(length)


async def _send(writer: asyncio.StreamWriter, kind: bytes, data: bytes) -> None:
    writer.write(transport.frame(kind, data))
    await writer.drain()


async def _finish(writer: asyncio.StreamWriter, status: int, message: str = "") -> None:
    with contextlib.suppress(ConnectionError, OSError):
        if message:
            writer.write(transport.frame(transport.FRAME_STDERR, message.encode()))
        writer.write(transport.exit_frame(status))
        await writer.drain()


async def serve(run_dir: Path | str, config_dir: Path | str) -> None:
    """Run the qrexec daemon in the current event loop until cancelled."""
    daemon = QrexecDaemon(Path(run_dir), Path(config_dir))
    await daemon.start()
    try:
        await asyncio.Event().wait()
    finally:
        await daemon.stop()


def _default_dirs() -> tuple[Path, Path]:
    from qubesd import paths

    return paths.run_dir(), paths.DEFAULT_CONFIG_DIR


def main(argv: Iterable[str] | None = None) -> int:
    run_default, config_default = _default_dirs()
    parser = argparse.ArgumentParser(prog="qrexec-daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=run_default)
    parser.add_argument("--config-dir", type=Path, default=config_default)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(args.run_dir, args.config_dir)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
