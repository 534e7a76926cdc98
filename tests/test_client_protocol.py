"""Unit tests of qubesd.client: reply parsing, framing, events, transports."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest
from test_client_support import MiniModel, err, fake_qubesd, ok

from qubesd import exc
from qubesd.client import (
    EventParser,
    PropertyValue,
    QrexecTransport,
    Qubes,
    QubesCallRefusedError,
    QubesDaemonAccessError,
    QubesDaemonCommunicationError,
    SocketTransport,
    default_transport,
    error_message,
    parse_getall,
    parse_response,
)

# --- reply parsing (spec/client-compat.md section 1) ----------------------------------


def test_ok_reply_returns_content() -> None:
    assert parse_response(b"0\0") == b""
    assert parse_response(b"0\0default=False type=label red") == b"default=False type=label red"


def test_ok_reply_may_contain_nul() -> None:
    assert parse_response(b"0\0a\0b") == b"a\0b"


def test_exception_reply_maps_to_qubesd_exc_class_by_name() -> None:
    with pytest.raises(exc.QubesVMNotFoundError) as info:
        parse_response(b"2\0QubesVMNotFoundError\0\0No such domain: 'nosuchvm'\0")
    assert error_message(info.value) == "No such domain: 'nosuchvm'"
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("name,cls", [
    ("ProtocolError", exc.ProtocolError),
    ("PermissionDenied", exc.PermissionDenied),
    ("QubesNoSuchPropertyError", exc.QubesNoSuchPropertyError),
    ("QubesVMNotHaltedError", exc.QubesVMNotHaltedError),
    ("QubesVMNotRunningError", exc.QubesVMNotStartedError),
    ("QubesFeatureNotFoundError", exc.QubesFeatureNotFoundError),
])
def test_exception_classes(name: str, cls: type) -> None:
    with pytest.raises(cls) as info:
        parse_response(err(name, "some message"))
    assert error_message(info.value) == "some message"
    assert info.value.wire_type == name


def test_unknown_exception_name_becomes_generic() -> None:
    with pytest.raises(exc.QubesException) as info:
        parse_response(err("QubesSomethingNewError", "new"))
    assert type(info.value) is exc.QubesException
    assert error_message(info.value) == "new"


def test_exception_format_args_are_applied() -> None:
    with pytest.raises(exc.QubesException) as info:
        parse_response(b"2\0QubesException\0\0used %d of %s\0" + b"100\0disk\0")
    assert error_message(info.value) == "used 100 of disk"


def test_exception_message_with_percent_and_no_args_is_kept() -> None:
    with pytest.raises(exc.QubesException) as info:
        parse_response(err("QubesException", "used 100% of disk"))
    assert error_message(info.value) == "used 100% of disk"


def test_exception_without_trailing_nul_is_a_communication_error() -> None:
    with pytest.raises(QubesDaemonCommunicationError, match="Invalid response format"):
        parse_response(b"2\0QubesException\0\0message")


def test_empty_reply_is_access_error() -> None:
    with pytest.raises(QubesDaemonAccessError, match="empty response"):
        parse_response(b"")


@pytest.mark.parametrize("data", [b"0", b"1\0\0connection-established\0\0", b"x\0", b"3\0"])
def test_other_replies_are_communication_errors(data: bytes) -> None:
    with pytest.raises(QubesDaemonCommunicationError) as info:
        parse_response(data)
    assert not isinstance(info.value, QubesDaemonAccessError)


# --- property values -----------------------------------------------------------------


def test_property_value_parsing() -> None:
    pv = PropertyValue.parse("default=True type=vm ")
    assert pv.is_default and pv.type == "vm" and pv.value is None
    assert PropertyValue.parse("default=False type=int 400").value == 400
    assert PropertyValue.parse("default=False type=bool True").value is True
    assert PropertyValue.parse("default=False type=str a b c").value == "a b c"
    with pytest.raises(QubesDaemonCommunicationError):
        PropertyValue.parse("default=False type=str")


def test_getall_unescapes_backslash_and_newline() -> None:
    props = parse_getall("a default=False type=str x\\ny\\\\z\nb default=True type=vm \n")
    assert props["a"].value == "x\ny\\z"
    assert props["b"].value is None
    assert list(props) == ["a", "b"]


# --- events --------------------------------------------------------------------------


def test_event_parser_byte_by_byte() -> None:
    stream = (b"1\0\0connection-established\0\0"
              b"1\0test-vm1\0property-set:vcpus\0name\0vcpus\0newvalue\0003\0oldvalue\0002\0\0"
              b"1\0vm\0domain-tag-add:t1\0tag\0t1\0\0")
    parser = EventParser()
    events = []
    for i in range(len(stream)):
        events += parser.feed(stream[i:i + 1])
    assert not parser.pending
    assert [(e.subject, e.name) for e in events] == [
        (None, "connection-established"), ("test-vm1", "property-set:vcpus"),
        ("vm", "domain-tag-add:t1")]
    assert events[1].kwargs == {"name": "vcpus", "newvalue": "3", "oldvalue": "2"}


def test_event_parser_empty_value_is_not_terminator() -> None:
    parser = EventParser()
    events = parser.feed(b"1\0vm\0property-set:netvm\0name\0netvm\0newvalue\0\0\0")
    assert events[0].kwargs == {"name": "netvm", "newvalue": ""}


def test_event_parser_rejects_non_event_frames() -> None:
    with pytest.raises(QubesDaemonCommunicationError):
        EventParser().feed(b"0\0")
    with pytest.raises(exc.PermissionDenied):
        EventParser().feed(err("PermissionDenied", "no"))


def test_events_over_socket(tmp_path: Path) -> None:
    def handler(src, method, arg, dest, payload):
        assert method == "admin.Events"

        async def stream(writer: asyncio.StreamWriter) -> None:
            writer.write(b"1\0\0connection-established\0\0")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"1\0work\0domain-start\0start_guid\0True\0\0")
            await writer.drain()
        return stream

    with fake_qubesd(tmp_path, handler) as server:
        events = list(SocketTransport(server.path).events("dom0", timeout=5))
    assert [e.name for e in events] == ["connection-established", "domain-start"]
    assert server.requests == [b"admin.Events+ dom0 name dom0\0"]


# --- socket transport ----------------------------------------------------------------


def test_socket_framing_exact_bytes(tmp_path: Path) -> None:
    with fake_qubesd(tmp_path, lambda *a: ok()) as server:
        app = Qubes(SocketTransport(server.path))
        app.qubesd_call("dom0", "admin.vm.List")
        app.qubesd_call("work", "admin.vm.property.Set", "netvm", b"sys-firewall")
        app.qubesd_call("work", "admin.vm.feature.Set", "x", b"a\0b")
    assert server.requests == [
        b"admin.vm.List+ dom0 name dom0\0",
        b"admin.vm.property.Set+netvm dom0 name work\0sys-firewall",
        b"admin.vm.feature.Set+x dom0 name work\0a\0b",
    ]


def test_default_socket_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QREXEC_VM_SOCKET", raising=False)
    monkeypatch.setenv("QUBESD_SOCKET", str(tmp_path / "x.sock"))
    transport = default_transport()
    assert isinstance(transport, SocketTransport)
    assert transport.path == tmp_path / "x.sock"


def test_daemon_not_running_message(tmp_path: Path) -> None:
    app = Qubes(SocketTransport(tmp_path / "missing.sock"))
    with pytest.raises(QubesDaemonCommunicationError) as info:
        app.domains.refresh()
    msg = str(info.value)
    assert str(tmp_path / "missing.sock") in msg and "make run" in msg


def test_connection_closed_without_reply(tmp_path: Path) -> None:
    with fake_qubesd(tmp_path, lambda *a: None) as server, \
            pytest.raises(QubesDaemonAccessError):
        Qubes(SocketTransport(server.path)).qubesd_call("dom0", "admin.vm.List")


# --- object API against the mini model -----------------------------------------------


def test_object_api(tmp_path: Path) -> None:
    model = MiniModel()
    with fake_qubesd(tmp_path, model) as server:
        app = Qubes(SocketTransport(server.path))
        assert list(app.domains) == ["dom0", "fedora", "sys-net", "work"]
        work = app.domains["work"]
        assert (work.klass, work.state) == ("AppVM", "Halted")
        assert work.get_property("memory") == 400
        work.set_property("memory", 800)
        assert work.get_property_info("memory") == PropertyValue(False, "int", "800")
        work.reset_property("memory")
        assert work.property_is_default("memory")
        assert app.get_property("default_template") == "fedora"
        work.tags.add("t1")
        assert "t1" in work.tags and list(work.tags) == ["t1"]
        work.features["f"] = True
        assert work.features["f"] == "1" and work.features.get("nope") is None
        with pytest.raises(exc.QubesVMNotFoundError):
            app.domains["nosuch"]
        new = app.create_vm("AppVM", "new", "red", template="fedora")
        assert new.name == "new" and "new" in app.domains
        assert server.requests[-2] == \
            b"admin.vm.Create.AppVM+fedora dom0 name dom0\0name=new label=red"
        new.remove()
        assert "new" not in app.domains
        work.start()
        assert work.get_power_state() == "Running"
        work.shutdown(force=True, wait=True)
        assert server.requests[-1] == b"admin.vm.Shutdown+force+wait dom0 name work\0"


def test_get_all_falls_back_to_get_on_access_error(tmp_path: Path) -> None:
    model = MiniModel()
    model.getall_refused = True
    with fake_qubesd(tmp_path, model) as server:
        props = Qubes(SocketTransport(server.path)).domains["work"].get_all_properties()
    assert props["memory"].value == 400 and props["netvm"].value == "sys-net"
    assert any(r.startswith(b"admin.vm.property.Get+memory ") for r in server.requests)


def test_get_all_other_errors_propagate(tmp_path: Path) -> None:
    with fake_qubesd(tmp_path, lambda *a: err("QubesException", "boom")) as server:
        app = Qubes(SocketTransport(server.path))
        with pytest.raises(exc.QubesException, match="boom"):
            app.get_all_properties()


def test_create_in_pool_payload(tmp_path: Path) -> None:
    model = MiniModel()
    with fake_qubesd(tmp_path, lambda *a: ok() if a[1].startswith("admin.vm.CreateInPool")
                     else model(*a)) as server:
        model.add("p", "AppVM", "Halted", "red")
        Qubes(SocketTransport(server.path)).create_vm("AppVM", "p", "red", pools={
            "private": "fast"})
    assert b"admin.vm.CreateInPool.AppVM+ dom0 name dom0\0name=p label=red pool:private=fast" \
        in server.requests


# --- VM mode (qrexec-client-vm) ------------------------------------------------------

FAKE_CLIENT = """#!{python}
import os, sys
log = os.environ["FAKE_QREXEC_LOG"]
data = sys.stdin.buffer.read()
with open(log, "ab") as f:
    f.write(repr((sys.argv[1:], data)).encode() + b"\\n")
code = int(os.environ.get("FAKE_QREXEC_EXIT", "0"))
if code:
    sys.stderr.write("Request refused\\n")
    sys.exit(code)
sys.stdout.buffer.write(b"0\\0" + b"dom0 class=AdminVM state=Running uuid=x\\n")
"""


@pytest.fixture
def fake_client_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "qrexec-client-vm"
    script.write_text(FAKE_CLIENT.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("QREXEC_VM_SOCKET", str(tmp_path / "vm.sock"))
    log = tmp_path / "log"
    monkeypatch.setenv("FAKE_QREXEC_LOG", str(log))
    return log


def test_vm_mode_argv_and_payload(fake_client_vm: Path) -> None:
    transport = default_transport()
    assert isinstance(transport, QrexecTransport)
    app = Qubes(transport)
    assert list(app.domains) == ["dom0"]
    app.qubesd_call("work", "admin.vm.property.Set", "memory", b"500")
    calls = [eval(line) for line in fake_client_vm.read_text().splitlines()]
    # no trailing '+' without an argument, unlike dom0 mode
    assert calls == [(["dom0", "admin.vm.List"], b""),
                     (["work", "admin.vm.property.Set+memory"], b"500")]


def test_vm_mode_exit_126_is_refused(fake_client_vm: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QREXEC_EXIT", "126")
    with pytest.raises(QubesCallRefusedError) as info:
        Qubes().qubesd_call("work", "admin.vm.Start")
    assert isinstance(info.value, exc.PermissionDenied)
    assert isinstance(info.value, QubesDaemonAccessError)
    assert "Request refused" in str(info.value)


@pytest.mark.parametrize("code", ["125", "127"])
def test_vm_mode_other_exit_codes(fake_client_vm: Path, monkeypatch: pytest.MonkeyPatch,
                                  code: str) -> None:
    monkeypatch.setenv("FAKE_QREXEC_EXIT", code)
    with pytest.raises(QubesDaemonAccessError) as info:
        Qubes().qubesd_call("work", "admin.vm.Start")
    assert not isinstance(info.value, QubesCallRefusedError)
    assert code in str(info.value)
