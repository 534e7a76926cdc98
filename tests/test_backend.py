"""LibvirtBackend against the real libvirt binding on test:///default (no mocks).

Every test opens its own connection and closes it, and test:///default resets to
its built-in state once the last connection in the process is closed, so tests do
not see each other's domains. Waits for events have a deadline only so a broken
event path fails instead of hanging; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import threading
import uuid as uuidlib
from collections.abc import Awaitable, Callable

import libvirt
import pytest
from lxml import etree

from qubesd import backend_xml
from qubesd.backend import BackendError, DomainSpec, LibvirtBackend

URI = "test:///default"


def new_spec(name: str = "work", **kw: object) -> DomainSpec:
    return DomainSpec(name=name, uuid=str(uuidlib.uuid4()), **kw)  # type: ignore[arg-type]


def run(body: Callable[[LibvirtBackend], Awaitable[None]], **backend_kw: object) -> None:
    async def main() -> None:
        backend = LibvirtBackend(URI, **backend_kw)  # type: ignore[arg-type]
        await backend.open(asyncio.get_running_loop())
        try:
            await body(backend)
        finally:
            backend.close()

    asyncio.run(main())


class Recorder:
    """Collects lifecycle events; remembers the thread each arrived in."""

    def __init__(self, backend: LibvirtBackend, only: str | None = None) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.threads: set[int] = set()
        self.only = only
        backend.on_lifecycle(self)

    def __call__(self, uuid: str, event: str, detail: int) -> None:
        if self.only is None or uuid == self.only:
            self.events.append((uuid, event, detail))
            self.threads.add(threading.get_ident())

    def names(self) -> list[str]:
        return [e for _u, e, _d in self.events]

    async def wait_for(self, count: int, deadline: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while len(self.events) < count and loop.time() < end:
            await asyncio.sleep(0.001)


# ----------------------------------------------------------------- domain XML


def test_xml_pvh_with_network_and_metadata() -> None:
    spec = new_spec(
        memory_mib=400,
        maxmem_mib=4000,
        vcpus=2,
        kernel="/var/lib/qubes/vm-kernels/6.6/vmlinuz",
        kernelopts="swiotlb=2048",
        netvm="sys-firewall",
        mac="00:16:3e:5e:6c:00",
        ip="10.137.0.5",
        qid=7,
    )
    root = etree.fromstring(backend_xml.build_domain_xml(spec, "xen"))
    assert root.get("type") == "xen"
    assert root.findtext("name") == "work"
    assert root.findtext("uuid") == spec.uuid
    assert root.findtext("memory") == "4000"
    assert root.findtext("currentMemory") == "400"
    assert root.findtext("vcpu") == "2"
    assert root.find("os/type").text == "xenpvh"
    assert root.findtext("os/kernel") == spec.kernel
    assert root.findtext("os/cmdline") == "swiotlb=2048"
    assert [root.findtext(x) for x in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3
    iface = root.find("devices/interface")
    assert iface.get("type") == "ethernet"
    assert iface.find("mac").get("address") == spec.mac
    assert iface.find("ip").get("address") == spec.ip
    assert iface.find("backenddomain").get("name") == "sys-firewall"
    assert root.find("devices/console").get("type") == "pty"
    assert backend_xml.parse_qid(backend_xml.build_domain_xml(spec)) == 7


def test_xml_modes_and_flavours() -> None:
    hvm = etree.fromstring(backend_xml.build_domain_xml(new_spec(virt_mode="hvm")))
    assert hvm.find("os/type").text == "hvm"
    assert hvm.find("os/loader") is not None
    assert hvm.find("os/kernel") is None  # no kernel given: no <kernel>/<cmdline>
    pv = etree.fromstring(backend_xml.build_domain_xml(new_spec(virt_mode="pv", kernel="/k")))
    assert pv.find("os/type").text == "linux"
    assert pv.find("cpu") is None and pv.find("features") is None
    kvm = etree.fromstring(backend_xml.build_domain_xml(new_spec(netvm="n", ip="1.2.3.4"), "kvm"))
    assert kvm.get("type") == "kvm" and kvm.find("os/type").text == "hvm"
    # an <ip> on a kvm tap would configure the host side: left out
    assert kvm.find("devices/interface/ip") is None
    no_net = etree.fromstring(backend_xml.build_domain_xml(new_spec()))
    assert no_net.find("devices/interface") is None
    hot = etree.fromstring(backend_xml.build_domain_xml(new_spec(memory_hotplug=True)))
    assert hot.find("maxMemory") is not None
    with pytest.raises(ValueError):
        backend_xml.build_domain_xml(new_spec(virt_mode="bogus"))


# ----------------------------------------------------------------- lifecycle


def test_full_lifecycle_power_states() -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec(kernel="/k", kernelopts="quiet", netvm="sys-net", qid=3)
        assert b.power_state(spec.uuid) == "Halted"
        await b.start(spec)
        assert b.power_state(spec.uuid) == "Running"
        assert b.is_defined(spec.uuid)
        await b.pause(spec.uuid)
        assert b.power_state(spec.uuid) == "Paused"
        await b.unpause(spec.uuid)
        assert b.power_state(spec.uuid) == "Running"
        # the test driver cannot PM-suspend: suspend falls back to a pause
        await b.suspend(spec.uuid)
        assert b.power_state(spec.uuid) == "Paused"
        await b.resume(spec.uuid)
        assert b.power_state(spec.uuid) == "Running"
        await b.shutdown(spec.uuid)
        assert b.power_state(spec.uuid) == "Halted"
        # stays defined, restartable, then killable
        await b.start(spec)
        assert b.power_state(spec.uuid) == "Running"
        await b.kill(spec.uuid)
        assert b.power_state(spec.uuid) == "Halted"
        # qid survives in our metadata namespace
        xml = b.conn.lookupByUUIDString(spec.uuid).XMLDesc()
        assert backend_xml.parse_qid(xml) == 3

    run(body)


@pytest.mark.parametrize("virt_mode", ["pvh", "hvm", "pv"])
@pytest.mark.parametrize("domain_type", ["xen", "kvm"])
def test_test_driver_accepts_every_flavour(virt_mode: str, domain_type: str) -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec(virt_mode=virt_mode, kernel="/k", netvm="sys-net", mac="00:16:3e:00:00:01")
        await b.start(spec)
        assert b.power_state(spec.uuid) == "Running"
        await b.kill(spec.uuid)

    run(body, domain_type=domain_type)


def test_start_paused_and_force_shutdown_of_paused() -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec()
        rec = Recorder(b, only=spec.uuid)
        await b.start(spec, paused=True)
        assert b.power_state(spec.uuid) == "Paused"
        # a paused guest cannot act on a shutdown request, so force destroys it
        await b.shutdown(spec.uuid, force=True)
        assert b.power_state(spec.uuid) == "Halted"
        await rec.wait_for(4)
        assert rec.names()[:2] == ["defined", "started"]  # then suspended: see start()
        assert rec.events[-1][1:] == ("stopped", libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)

    run(body)


def test_callbacks_in_order_in_loop_thread() -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec()
        rec = Recorder(b, only=spec.uuid)
        await b.start(spec)
        await b.suspend(spec.uuid)
        await b.resume(spec.uuid)
        await b.shutdown(spec.uuid)
        await rec.wait_for(5)
        assert rec.names() == ["defined", "started", "suspended", "resumed", "stopped"]
        assert rec.events[-1][2] == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
        assert rec.threads == {threading.get_ident()}
        await b.start(spec)
        await b.kill(spec.uuid)
        b.undefine(spec.uuid)
        await rec.wait_for(9)
        # every start redefines (the spec may have changed), hence "defined" again
        assert rec.names()[5:] == ["defined", "started", "stopped", "undefined"]
        assert rec.events[7][2] == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED

    run(body)


def test_failing_callback_does_not_starve_others() -> None:
    async def body(b: LibvirtBackend) -> None:
        def broken(_u: str, _e: str, _d: int) -> None:
            raise RuntimeError("subscriber bug")

        b.on_lifecycle(broken)
        spec = new_spec()
        rec = Recorder(b, only=spec.uuid)
        await b.start(spec)
        await rec.wait_for(2)
        assert rec.names() == ["defined", "started"]
        await b.kill(spec.uuid)

    run(body)


def test_unsubscribe() -> None:
    async def body(b: LibvirtBackend) -> None:
        got: list[str] = []
        remove = b.on_lifecycle(lambda u, e, d: got.append(e))
        remove()
        remove()  # idempotent
        spec = new_spec()
        rec = Recorder(b, only=spec.uuid)
        await b.start(spec)
        await rec.wait_for(2)
        assert got == []

    run(body)


# ----------------------------------------------------------------- errors


def test_errors_carry_libvirt_message() -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec()
        await b.start(spec)
        await b.kill(spec.uuid)
        with pytest.raises(BackendError) as info:
            await b.kill(spec.uuid)
        assert "domain is not running" in str(info.value)
        assert info.value.code == libvirt.VIR_ERR_OPERATION_INVALID

        await b.start(spec)
        with pytest.raises(BackendError) as info:
            await b.start(spec)
        assert "already running" in str(info.value)

        missing = str(uuidlib.uuid4())
        with pytest.raises(BackendError) as info:
            await b.pause(missing)
        assert info.value.code == libvirt.VIR_ERR_NO_DOMAIN
        assert str(info.value) == "Domain not found"  # libvirt's words, verbatim
        assert b.power_state(missing) == "Halted"
        assert b.current_state(missing) == (0, 0, 0, "Halted")
        b.undefine(missing)  # not an error

        with pytest.raises(BackendError) as info:
            await b.start(new_spec(virt_mode="bogus"))
        assert "virt_mode" in str(info.value) and info.value.code is None

    run(body)


def test_stale_definitions_are_replaced() -> None:
    async def body(b: LibvirtBackend) -> None:
        old = new_spec("reused")
        await b.start(old)
        await b.kill(old.uuid)
        # same name, new uuid (qube removed and re-created without undefine)
        new = new_spec("reused")
        await b.start(new)
        assert b.power_state(new.uuid) == "Running"
        assert not b.is_defined(old.uuid)
        # same uuid, new name (qube renamed)
        await b.kill(new.uuid)
        renamed = DomainSpec(name="renamed", uuid=new.uuid)
        await b.start(renamed)
        assert b.conn.lookupByUUIDString(new.uuid).name() == "renamed"
        # a running holder of the name is not touched: libvirt's error surfaces
        clash = new_spec("renamed")
        with pytest.raises(BackendError) as info:
            await b.start(clash)
        assert "already" in str(info.value)
        assert b.power_state(new.uuid) == "Running"

    run(body)


def test_undefine() -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec()
        await b.start(spec)
        await b.kill(spec.uuid)
        b.undefine(spec.uuid)
        assert not b.is_defined(spec.uuid)
        b.undefine(spec.uuid)

    run(body)


# ----------------------------------------------------------------- queries


def test_power_states_lists_active_only() -> None:
    async def body(b: LibvirtBackend) -> None:
        running, paused, halted = new_spec("a"), new_spec("b"), new_spec("c")
        for s in (running, paused, halted):
            await b.start(s)
        await b.pause(paused.uuid)
        await b.shutdown(halted.uuid)
        states = b.power_states()
        assert states[running.uuid] == "Running"
        assert states[paused.uuid] == "Paused"
        assert halted.uuid not in states

    run(body)


def test_stats_current_state_host_info_console() -> None:
    async def body(b: LibvirtBackend) -> None:
        spec = new_spec(memory_mib=300, maxmem_mib=1000, vcpus=2)
        await b.start(spec)
        first = b.stats()
        assert set(first[spec.uuid]) == {"memory_kb", "cpu_time", "cpu_usage", "online_vcpus"}
        assert first[spec.uuid]["memory_kb"] == 300 * 1024
        assert first[spec.uuid]["online_vcpus"] == 2
        assert first[spec.uuid]["cpu_usage"] == 0  # nothing to compare with yet
        await asyncio.sleep(0.01)
        second = b.stats()[spec.uuid]
        assert 0 <= second["cpu_usage"] <= 100
        assert second["cpu_time"] >= first[spec.uuid]["cpu_time"]

        mem, maxmem, cputime, state = b.current_state(spec.uuid)
        assert (mem, maxmem, state) == (300 * 1024, 1000 * 1024, "Running")
        assert cputime > 0
        # the test driver allocates no pty, so there is no tty to report
        assert b.console_tty(spec.uuid) is None
        await b.kill(spec.uuid)
        assert spec.uuid not in b.stats()
        assert b.current_state(spec.uuid) == (0, 0, 0, "Halted")
        assert b.console_tty(spec.uuid) is None

        mem_mib, cpus = b.host_info()
        assert mem_mib > 0 and cpus > 0

    run(body)


def test_console_tty_parsing() -> None:
    live = "<domain><devices><console type='pty' tty='/dev/pts/3'/></devices></domain>"
    assert backend_xml.console_tty(live) == "/dev/pts/3"
    assert backend_xml.console_tty("<domain><devices/></domain>") is None


# ----------------------------------------------------------------- executor, scale


def test_executor_mode_on_test_driver() -> None:
    async def body(b: LibvirtBackend) -> None:
        assert b.use_executor
        spec = new_spec()
        rec = Recorder(b, only=spec.uuid)
        await b.start(spec)
        await b.pause(spec.uuid)
        await b.unpause(spec.uuid)
        await b.kill(spec.uuid)
        await rec.wait_for(5)
        assert rec.names() == ["defined", "started", "suspended", "resumed", "stopped"]
        with pytest.raises(BackendError):
            await b.kill(spec.uuid)

    run(body, use_executor=True)


def test_thousand_domains_define_start_destroy() -> None:
    n = 1000

    async def body(b: LibvirtBackend) -> None:
        specs = [new_spec(f"vm{i:04d}", netvm="sys-net", qid=i + 1) for i in range(n)]
        rec = Recorder(b)
        for s in specs:
            await b.start(s)
        states = b.power_states()
        assert all(states[s.uuid] == "Running" for s in specs)
        assert len(b.stats()) >= n
        for s in specs:
            await b.kill(s.uuid)
        for s in specs:
            b.undefine(s.uuid)
        await rec.wait_for(4 * n)
        ours = {s.uuid for s in specs}
        counts: dict[str, int] = {}
        for u, e, _d in rec.events:
            if u in ours:
                counts[e] = counts.get(e, 0) + 1
        assert counts == {"defined": n, "started": n, "stopped": n, "undefined": n}
        assert not any(s.uuid in b.power_states() for s in specs)

    run(body)


def test_close_is_idempotent_and_reopen_works() -> None:
    async def main() -> None:
        b = LibvirtBackend(URI)
        await b.open()
        b.close()
        b.close()
        with pytest.raises(BackendError):
            b.power_states()
        await b.open()
        assert isinstance(b.power_states(), dict)
        b.close()

    asyncio.run(main())
