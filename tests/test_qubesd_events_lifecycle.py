"""admin.Events streams and domain lifecycle on libvirt's test:///default driver.

Spec/admin-api.md 5.2 (stream bytes and order, 8.2 item 35), 6.4 (power states and
transitions), 3.1 (lifecycle errors), 8.2 items 34, 37 and 46 (disposable cleanup).
Each stream is a raw socket; the changes are made through other connections.
"""

import re
import socket
import time

import pytest
from qubesd_harness import QubesdProcess

START_EVENTS = ["domain-pre-start", "domain-pre-spawn", "domain-spawn",
                "domain-pre-unpaused", "domain-unpaused", "domain-start"]


class EventStream:
    """A raw admin.Events connection, parsed frame by frame."""

    def __init__(self, q: QubesdProcess, dest: str = "dom0", src: str = "dom0",
                 method: str = "admin.Events") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(q.socket))
        self.sock.sendall(f"{method}+ {src} name {dest}\0".encode())
        self.sock.shutdown(socket.SHUT_WR)
        self.buf = b""
        self.raw: list[bytes] = []

    def _split(self) -> bytes | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        assert buf.startswith(b"1\0"), f"not an EVENT frame: {buf[:200]!r}"
        pos, fields = 2, 0
        while True:
            end = buf.find(b"\0", pos)
            if end < 0:
                return None
            field = buf[pos:end]
            pos = end + 1
            fields += 1
            # fields: subject, event, then key/value pairs ended by an empty key
            if fields >= 3 and (fields - 3) % 2 == 0 and field == b"":
                frame, self.buf = buf[:pos], buf[pos:]
                return frame

    def next(self, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while (frame := self._split()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete frame; have {self.buf!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"stream closed; buffer {self.buf!r}")
            self.buf += chunk
        self.raw.append(frame)
        return frame

    def until(self, predicate, timeout: float = 10) -> list[bytes]:
        frames = []
        while True:
            frame = self.next(timeout)
            frames.append(frame)
            if predicate(frame):
                return frames

    def until_event(self, name: str, subject: str | None = None,
                    timeout: float = 10) -> list[bytes]:
        return self.until(lambda f: parse(f)[1] == name and (
            subject is None or parse(f)[0] == subject), timeout)

    def quiet(self, wait: float = 0.3) -> list[bytes]:
        """Frames that arrive within ``wait`` seconds (expected: none)."""
        frames = []
        try:
            while True:
                frames.append(self.next(wait))
        except TimeoutError:
            return frames

    def close(self) -> None:
        self.sock.close()


def parse(frame: bytes) -> tuple[str, str, dict[str, str]]:
    parts = frame[2:-2].split(b"\0")
    subject, event, rest = parts[0].decode(), parts[1].decode(), parts[2:]
    return subject, event, {rest[i].decode(): rest[i + 1].decode()
                            for i in range(0, len(rest), 2)}


def names(frames, prefix: str = "") -> list[str]:
    return [parse(f)[1] for f in frames if parse(f)[1].startswith(prefix)]


def state(q, vm: str) -> str:
    line = q.ok("admin.vm.List", vm)
    return re.search(r"state=(\S+)", line).group(1)


def wait_state(q, vm: str, wanted: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (current := state(q, vm)) != wanted:
        assert time.monotonic() < deadline, f"{vm} is {current}, wanted {wanted}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def q(tmp_path_factory):
    daemon = QubesdProcess(tmp_path_factory.mktemp("evlc") / "q").start()
    daemon.ok("admin.property.Set", "dom0", "default_kernel", b"1.0")
    daemon.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=test-template label=black")
    daemon.ok("admin.property.Set", "dom0", "default_template", b"test-template")
    daemon.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=test-vm1 label=red")
    yield daemon
    daemon.stop()


_counter = iter(range(1000))


@pytest.fixture
def vm(q):
    """A fresh AppVM for one test, removed afterwards whatever its state."""
    name = f"lc{next(_counter)}"
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", f"name={name} label=red".encode())
    yield name
    if name in q.ok("admin.vm.List"):
        if state(q, name) != "Halted":
            q.call("admin.vm.Kill", name)
            wait_state(q, name, "Halted")
        q.ok("admin.vm.Remove", name)


@pytest.fixture
def stream(q):
    streams = []

    def open_stream(dest="dom0", **kwargs):
        s = EventStream(q, dest, **kwargs)
        assert s.next() == b"1\0\0connection-established\0\0"
        streams.append(s)
        return s
    yield open_stream
    for s in streams:
        s.close()


# -- 35: the dom0 stream, byte for byte --------------------------------------------------

def test_35_dom0_stream_bytes(q, stream):
    ev = stream()
    q.ok("admin.vm.property.Set", "test-vm1", "vcpus", b"3")
    assert ev.until_event("property-set:vcpus") == [
        b"1\0test-vm1\0property-pre-set:vcpus\0name\0vcpus\0newvalue\x003\0oldvalue\x002\0\0",
        b"1\0test-vm1\0property-set:vcpus\0name\0vcpus\0newvalue\x003\0oldvalue\x002\0\0",
    ]
    q.ok("admin.vm.property.Reset", "test-vm1", "vcpus")
    assert ev.until_event("property-del:vcpus") == [
        b"1\0test-vm1\0property-pre-reset:vcpus\0name\0vcpus\0oldvalue\x003\0\0",
        b"1\0test-vm1\0property-pre-del:vcpus\0name\0vcpus\0oldvalue\x003\0\0",
        b"1\0test-vm1\0property-reset:vcpus\0name\0vcpus\0oldvalue\x003\0\0",
        b"1\0test-vm1\0property-del:vcpus\0name\0vcpus\0oldvalue\x003\0\0",
    ]
    q.ok("admin.vm.feature.Set", "test-vm1", "x", b"1")
    assert ev.until_event("domain-feature-set:x") == [
        b"1\0test-vm1\0domain-feature-pre-set:x\0feature\0x\0value\x001\0\0",
        b"1\0test-vm1\0domain-feature-set:x\0feature\0x\0value\x001\0\0",
    ]
    q.ok("admin.vm.tag.Set", "test-vm1", "t1")
    assert ev.until_event("domain-tag-add:t1") == [
        b"1\0test-vm1\0domain-tag-add:t1\0tag\0t1\0\0"]
    q.ok("admin.property.Set", "dom0", "default_kernel", b"2.0")
    assert ev.until_event("property-set:default_kernel") == [
        (b"1\0\0property-pre-set:default_kernel\0name\0default_kernel\0newvalue\x002.0\0"
         b"oldvalue\x001.0\0\0"),
        (b"1\0\0property-set:default_kernel\0name\0default_kernel\0newvalue\x002.0\0"
         b"oldvalue\x001.0\0\0"),
    ]
    q.ok("admin.property.Set", "dom0", "default_kernel", b"1.0")
    ev.until_event("property-set:default_kernel")
    # a domain added during the stream: domain-add, then its own events
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=test-vm5 label=red")
    q.ok("admin.vm.property.Set", "test-vm5", "vcpus", b"4")
    frames = ev.until_event("property-set:vcpus", "test-vm5")
    assert frames[0] == b"1\0\0domain-add\0vm\0test-vm5\0\0"
    assert b"1\0test-vm5\0domain-tag-add:created-by-dom0\0tag\0created-by-dom0\0\0" in frames
    assert frames[-1] == (b"1\0test-vm5\0property-set:vcpus\0name\0vcpus\0newvalue\x004\0"
                          b"oldvalue\x002\0\0")
    q.ok("admin.vm.Remove", "test-vm5")
    assert ev.until_event("domain-delete") == [
        b"1\0\0domain-pre-delete\0vm\0test-vm5\0\0",
        b"1\0\0domain-delete\0vm\0test-vm5\0\0"]
    q.ok("admin.vm.feature.Remove", "test-vm1", "x")
    assert ev.until_event("domain-feature-delete:x") == [
        b"1\0test-vm1\0domain-feature-pre-delete:x\0feature\0x\0\0",
        b"1\0test-vm1\0domain-feature-delete:x\0feature\0x\0\0"]
    q.ok("admin.vm.tag.Remove", "test-vm1", "t1")
    assert ev.until_event("domain-tag-delete:t1") == [
        b"1\0test-vm1\0domain-tag-delete:t1\0tag\0t1\0\0"]
    # no admin-permission:* event was ever forwarded (5.2), and reads fire nothing
    q.ok("admin.vm.property.Get", "test-vm1", "vcpus")
    q.ok("admin.vm.List")
    assert ev.quiet() == []
    assert not any(b"admin-permission" in f for f in ev.raw)


def test_none_value_rendered_as_None(q, stream, vm):
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=net-none label=red")
    q.ok("admin.vm.property.Set", "net-none", "provides_network", b"True")
    q.ok("admin.vm.property.Set", vm, "netvm", b"net-none")
    ev = stream(vm)
    q.ok("admin.vm.property.Set", vm, "netvm", b"")
    frames = ev.until_event("property-set:netvm")
    assert frames[-1] == (f"1\0{vm}\0property-set:netvm\0name\0netvm\0newvalue\0None\0"
                          "oldvalue\0net-none\0\0").encode()
    q.ok("admin.vm.Remove", "net-none")


def test_vm_stream_only_that_vm(q, stream, vm):
    ev = stream(vm)
    q.ok("admin.vm.property.Set", "test-template", "vcpus", b"3")
    q.ok("admin.property.Set", "dom0", "stats_interval", b"7")
    q.ok("admin.vm.property.Set", vm, "memory", b"500")
    frames = ev.until_event("property-set:memory")
    assert {parse(f)[0] for f in frames} == {vm}, frames
    assert names(frames) == ["property-pre-set:memory", "property-set:memory"]
    q.ok("admin.vm.property.Reset", "test-template", "vcpus")
    q.ok("admin.property.Reset", "dom0", "stats_interval")
    assert ev.quiet() == []


def test_several_streams_and_disconnect(q, stream):
    a, b = stream(), stream()
    c = EventStream(q)
    assert c.next() == b"1\0\0connection-established\0\0"
    c.close()  # a client going away must not disturb the others
    q.ok("admin.vm.tag.Set", "test-vm1", "multi")
    for s in (a, b):
        assert s.until_event("domain-tag-add:multi") == [
            b"1\0test-vm1\0domain-tag-add:multi\0tag\0multi\0\0"]
    q.ok("admin.vm.tag.Remove", "test-vm1", "multi")
    assert q.ok("admin.vm.List").startswith("dom0 ")


# -- lifecycle: events and states ---------------------------------------------------------

def test_start_event_order_and_state(q, stream, vm):
    ev = stream(vm)
    assert q.call("admin.vm.Start", vm) == b"0\0"
    frames = ev.until_event("domain-start")
    assert names(frames, "domain-") == START_EVENTS
    assert state(q, vm) == "Running"
    assert parse(frames[0])[2].get("start_guid") == "True"
    # already running: a no-op, no events
    assert q.call("admin.vm.Start", vm) == b"0\0"
    assert names(ev.quiet(), "domain-") == []
    assert re.fullmatch(r"mem=\d+ mem_static_max=\d+ cputime=\d+ power_state=Running",
                        q.ok("admin.vm.CurrentState", vm))
    assert q.ok("admin.vm.property.Get", vm, "start_time") != "default=True type=str "


def test_xid_of_running_domain(q, vm):
    """xid is -1 only when not running (spec 6.2); a running domain has its libvirt id."""
    assert q.ok("admin.vm.property.Get", vm, "xid") == "default=True type=int -1"
    q.ok("admin.vm.Start", vm)
    xid = q.ok("admin.vm.property.Get", vm, "xid")
    assert re.fullmatch(r"default=True type=int \d+", xid), xid


def test_shutdown_wait_event_order(q, stream, vm):
    q.ok("admin.vm.Start", vm)
    ev = stream(vm)
    assert q.call("admin.vm.Shutdown", vm, "wait") == b"0\0"
    assert state(q, vm) == "Halted"
    frames = ev.until_event("domain-shutdown")
    domain = names(frames, "domain-")
    assert domain[0] == "domain-pre-shutdown"
    assert domain[-2:] == ["domain-stopped", "domain-shutdown"]
    assert parse(frames[0])[2] == {"force": "False"}
    assert q.call("admin.vm.CurrentState", vm) == \
        b"0\0mem=0 mem_static_max=0 cputime=0 power_state=Halted"
    assert q.ok("admin.vm.property.Get", vm, "xid") == "default=True type=int -1"


def test_shutdown_without_wait_eventually_halts(q, vm):
    q.ok("admin.vm.Start", vm)
    assert q.call("admin.vm.Shutdown", vm) == b"0\0"
    wait_state(q, vm, "Halted")


@pytest.mark.parametrize("arg", ["force", "wait", "force+wait", "wait+force"])
def test_34_shutdown_args(q, vm, arg):
    assert q.error("admin.vm.Shutdown", vm, arg)[0] == "QubesVMNotStartedError"
    q.ok("admin.vm.Start", vm)
    assert q.call("admin.vm.Shutdown", vm, arg) == b"0\0"
    wait_state(q, vm, "Halted")


def test_34_shutdown_bad_arg(q, vm):
    q.ok("admin.vm.Start", vm)
    for arg in ("forcewait", "now", "force+", "+wait"):
        assert q.error("admin.vm.Shutdown", vm, arg) == \
            ("ProtocolError", "Argument must match: force, wait")
    assert state(q, vm) == "Running"


def test_kill(q, stream, vm):
    q.ok("admin.vm.Start", vm)
    ev = stream(vm)
    assert q.call("admin.vm.Kill", vm) == b"0\0"
    assert state(q, vm) == "Halted"
    assert names(ev.until_event("domain-shutdown"), "domain-")[-2:] == \
        ["domain-stopped", "domain-shutdown"]
    assert q.error("admin.vm.Kill", vm)[0] == "QubesVMNotStartedError"


def test_pause_unpause(q, stream, vm):
    assert q.error("admin.vm.Pause", vm)[0] == "QubesVMNotRunningError"
    assert q.error("admin.vm.Unpause", vm)[0] == "QubesVMNotPausedError"
    q.ok("admin.vm.Start", vm)
    assert q.error("admin.vm.Unpause", vm)[0] == "QubesVMNotPausedError"
    ev = stream(vm)
    assert q.call("admin.vm.Pause", vm) == b"0\0"
    assert state(q, vm) == "Paused"
    assert names(ev.until_event("domain-paused"), "domain-") == \
        ["domain-pre-paused", "domain-paused"]
    assert re.fullmatch(r"mem=\d+ mem_static_max=\d+ cputime=\d+ power_state=Paused",
                        q.ok("admin.vm.CurrentState", vm))
    assert q.call("admin.vm.Unpause", vm) == b"0\0"
    assert state(q, vm) == "Running"
    assert names(ev.until_event("domain-unpaused"), "domain-") == \
        ["domain-pre-unpaused", "domain-unpaused"]
    # a paused domain: shutdown needs force (then it is destroyed)
    q.ok("admin.vm.Pause", vm)
    assert q.error("admin.vm.Shutdown", vm)[0] == "QubesVMNotRunningError"
    assert state(q, vm) == "Paused"
    q.ok("admin.vm.Shutdown", vm, "force+wait")
    assert state(q, vm) == "Halted"


def test_suspend_resume(q, vm):
    assert q.error("admin.vm.Resume", vm)[0] == "QubesVMNotSuspendedError"
    q.ok("admin.vm.Start", vm)
    assert q.call("admin.vm.Suspend", vm) == b"0\0"
    assert state(q, vm) in ("Suspended", "Paused")  # the test driver falls back to pause
    assert q.call("admin.vm.Resume", vm) == b"0\0"
    assert state(q, vm) == "Running"
    q.ok("admin.vm.Kill", vm)


def test_paused_domain_can_be_killed(q, vm):
    q.ok("admin.vm.Start", vm)
    q.ok("admin.vm.Pause", vm)
    q.ok("admin.vm.Kill", vm)
    assert state(q, vm) == "Halted"


def test_remove_running_refused(q, vm):
    q.ok("admin.vm.Start", vm)
    before = q.xml.read_bytes()
    assert q.error("admin.vm.Remove", vm)[0] == "QubesVMNotHaltedError"
    assert q.xml.read_bytes() == before
    assert state(q, vm) == "Running"
    q.ok("admin.vm.Shutdown", vm, "wait")
    assert q.call("admin.vm.Remove", vm) == b"0\0"
    assert vm not in q.ok("admin.vm.List")


def test_states_in_list(q, vm):
    q.ok("admin.vm.Start", vm)
    listing = q.ok("admin.vm.List")
    assert re.search(rf"^{vm} class=AppVM state=Running uuid=", listing, re.MULTILINE)
    assert re.search(r"^dom0 class=AdminVM state=Running ", listing)
    assert re.search(r"^test-template class=TemplateVM state=Halted ", listing, re.MULTILINE)
    q.ok("admin.vm.Pause", vm)
    assert f"{vm} class=AppVM state=Paused" in q.ok("admin.vm.List")
    q.ok("admin.vm.Kill", vm)


def test_netvm_started_first(q, vm):
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=net-lc label=red")
    q.ok("admin.vm.property.Set", "net-lc", "provides_network", b"True")
    q.ok("admin.vm.property.Set", vm, "netvm", b"net-lc")
    q.ok("admin.vm.Start", vm)
    assert state(q, "net-lc") == "Running"
    q.ok("admin.vm.Kill", vm)
    q.ok("admin.vm.Kill", "net-lc")
    q.ok("admin.vm.property.Reset", vm, "netvm")
    q.ok("admin.vm.Remove", "net-lc")


def test_dom0_errors(q):
    assert q.error("admin.vm.Start", "dom0") == \
        ("QubesVMNotHaltedError", "Cannot start Dom0 fake domain!")
    assert q.error("admin.vm.Shutdown", "dom0") == \
        ("QubesVMError", "Cannot shutdown Dom0 fake domain!")
    assert q.error("admin.vm.Kill", "dom0") == \
        ("QubesVMError", "Cannot kill Dom0 fake domain!")
    from qubesd import exc as qexc
    for method in ("admin.vm.Pause", "admin.vm.Suspend", "admin.vm.Unpause",
                   "admin.vm.Resume"):
        name = q.error(method, "dom0")[0]
        assert issubclass(getattr(qexc, name), qexc.QubesVMError), (method, name)
    assert re.fullmatch(r"mem=\d+ mem_static_max=\d+ cputime=\d+ power_state=Running",
                        q.ok("admin.vm.CurrentState", "dom0"))
    assert q.ok("admin.vm.List", "dom0").startswith("dom0 class=AdminVM state=Running")


def test_start_without_template_fails_cleanly(q):
    """A failed start leaves the domain Halted and reports domain-start-failed or an
    error, never a half-started domain."""
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=lc-prohibit label=red")
    q.ok("admin.vm.feature.Set", "lc-prohibit", "prohibit-start", b"testing")
    assert q.error("admin.vm.Start", "lc-prohibit")[0] == "QubesException"
    assert state(q, "lc-prohibit") == "Halted"
    q.ok("admin.vm.Remove", "lc-prohibit")


# -- 46: disposables are removed after shutdown --------------------------------------------

def test_dispvm_removed_after_shutdown(q, stream):
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=dvm-lc label=green")
    q.ok("admin.vm.property.Set", "dvm-lc", "template_for_dispvms", b"True")
    disp = q.ok("admin.vm.CreateDisposable", "dvm-lc")
    assert re.fullmatch(r"disp\d+", disp)
    assert f"{disp} class=DispVM state=Halted" in q.ok("admin.vm.List")
    ev = stream()
    q.ok("admin.vm.Start", disp)
    assert state(q, disp) == "Running"
    q.ok("admin.vm.Shutdown", disp, "wait")
    frames = ev.until(lambda f: parse(f)[1] == "domain-delete"
                      and parse(f)[2].get("vm") == disp)
    assert names(frames, "domain-")[-2:] == ["domain-pre-delete", "domain-delete"]
    deadline = time.monotonic() + 10
    while f"<property name=\"name\">{disp}</property>" in q.xml.read_text():
        assert time.monotonic() < deadline, "disposable still in qubes.xml"
        time.sleep(0.05)
    assert disp not in q.ok("admin.vm.List")
    assert q.error("admin.vm.List", disp)[0] == "QubesVMNotFoundError"
    # the disposable template is free again
    q.ok("admin.vm.Remove", "dvm-lc")


def test_dispvm_killed_is_removed(q):
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=dvm-kill label=green")
    q.ok("admin.vm.property.Set", "dvm-kill", "template_for_dispvms", b"True")
    disp = q.ok("admin.vm.CreateDisposable", "dvm-kill")
    q.ok("admin.vm.Start", disp)
    q.ok("admin.vm.Kill", disp)
    deadline = time.monotonic() + 10
    while disp in q.ok("admin.vm.List"):
        assert time.monotonic() < deadline, "killed disposable not removed"
        time.sleep(0.05)
    q.ok("admin.vm.Remove", "dvm-kill")


def test_stats_stream(q, vm):
    q.ok("admin.property.Set", "dom0", "stats_interval", b"1")
    q.ok("admin.vm.Start", vm)
    try:
        assert q.error("admin.vm.Stats", "test-template")[0] == "QubesVMNotRunningError"
        st = EventStream(q, vm, method="admin.vm.Stats")
        try:
            assert st.next() == b"1\0\0connection-established\0\0"
            subject, event, kwargs = parse(st.next(timeout=5))
            assert (subject, event) == (vm, "vm-stats")
            assert {"memory_kb", "cpu_time", "cpu_usage", "online_vcpus"} <= set(kwargs)
        finally:
            st.close()
    finally:
        q.ok("admin.property.Reset", "dom0", "stats_interval")
        q.ok("admin.vm.Kill", vm)
