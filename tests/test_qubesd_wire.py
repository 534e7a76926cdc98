"""qubesd wire protocol through the real socket (spec/admin-api.md 2.1-2.4, 8.2 items 3, 21, 49).

Byte-exact replies, the framing errors that drop the connection, the 64 KiB cap, the
generic validation order, the declared arg/payload/destination rules of every registered
method, and random or mutated frames that must neither crash the daemon nor change
qubes.xml. One daemon per module: none of these tests may change the store.
"""

import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qubesd_harness import QubesdProcess, seed_upstream_fixture

from qubesd import exc as qexc
from qubesd import protocol
from qubesd.api import admin as _admin  # noqa: F401 - registers the methods
from qubesd.api import internal as _internal  # noqa: F401
from qubesd.registry import REGISTRY, Dest, Presence

ADMINVM_UUID = "00000000-0000-0000-0000-000000000000"


def send_raw(path, data: bytes, timeout: float = 10, half_close: bool = True) -> bytes:
    """Send bytes, half-close, read everything; a reset by the daemon reads as b''."""
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    return b"".join(chunks)


def wire_class(name: str):
    return getattr(qexc, name, None)


def assert_protocol_error(reply: bytes, message: str | None = None) -> None:
    assert reply.startswith(b"2\0"), reply
    name, _tb, msg = reply[2:].split(b"\0")[:3]
    cls = wire_class(name.decode())
    assert cls is not None and issubclass(cls, qexc.ProtocolError), reply
    if message is not None:
        assert msg.decode() == message, reply
    assert reply.endswith(b"\0")


def xml_state(q: QubesdProcess) -> tuple[int, int, bytes]:
    st_ = os.stat(q.xml)
    return st_.st_ino, st_.st_mtime_ns, q.xml.read_bytes()


def list_line(q: QubesdProcess) -> bytes:
    return q.call("admin.vm.List", "dom0")


#: qrexec policy for the calls made from test-vm1 (the gate denies by default)
POLICY = """\
admin.vm.List * test-vm1 @adminvm allow target=dom0
admin.vm.List * test-vm1 test-vm1 allow target=dom0
"""


@pytest.fixture(scope="module")
def q(tmp_path_factory):
    root = tmp_path_factory.mktemp("wire") / "q"
    (root / "etc" / "policy.d").mkdir(parents=True)
    (root / "etc" / "policy.d" / "30-test.policy").write_text(POLICY)
    daemon = QubesdProcess(root).start()
    seed_upstream_fixture(daemon)
    daemon.vm1_uuid = daemon.ok("admin.vm.property.Get", "test-vm1", "uuid").split(" ")[2]
    daemon.baseline = xml_state(daemon)
    yield daemon
    try:
        assert xml_state(daemon) == daemon.baseline, "a wire test changed qubes.xml"
    finally:
        daemon.stop()


@pytest.fixture(autouse=True)
def _store_unchanged(q):
    yield
    assert xml_state(q) == q.baseline, "qubes.xml changed"
    assert q.proc.poll() is None, "daemon died"


# -- response framing ---------------------------------------------------------------------

def test_ok_bytes_exact(q):
    reply = send_raw(q.socket, b"admin.vm.List+ dom0 name dom0\0")
    uuid_tmpl = q.ok("admin.vm.property.Get", "test-template", "uuid").split(" ")[2]
    assert reply == (
        b"0\0dom0 class=AdminVM state=Running uuid=" + ADMINVM_UUID.encode() + b"\n"
        b"test-template class=TemplateVM state=Halted uuid=" + uuid_tmpl.encode() + b"\n"
        b"test-vm1 class=AppVM state=Halted uuid=" + q.vm1_uuid.encode() + b"\n")


def test_ok_without_value_and_label_value(q):
    assert send_raw(q.socket, b"admin.vm.property.Get+label dom0 name test-vm1\0") == \
        b"0\0default=False type=label red"
    # a value-less success is exactly "0\0": Start of a running dom0 is an error, so use
    # a GetDefault without default
    assert send_raw(q.socket, b"admin.vm.property.GetDefault+template dom0 name test-vm1\0") \
        == b"0\0"


def test_exception_bytes_exact(q):
    assert send_raw(q.socket, b"admin.vm.List+ dom0 name nosuchvm\0") == \
        b"2\0QubesVMNotFoundError\0\0No such domain: 'nosuchvm'\0"
    assert send_raw(q.socket, b"admin.no.Such+ dom0 name dom0\0") == \
        b"2\0ProtocolError\0\0no such method: 'admin.no.Such'\0"


def test_event_bytes_exact(q):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(q.socket))
        sock.sendall(b"admin.Events+ dom0 name dom0\0")
        sock.shutdown(socket.SHUT_WR)
        first = b""
        want = b"1\0\0connection-established\0\0"
        while len(first) < len(want):
            chunk = sock.recv(len(want) - len(first))
            assert chunk, first
            first += chunk
        assert first == want
    assert q.call("admin.vm.List", "dom0").startswith(b"0\0dom0 ")


def test_percent_in_message_is_doubled(q):
    """Our documented deviation (server.py): a bare % in a message would crash the stock
    client's %-formatting, so the daemon sends it doubled."""
    assert send_raw(q.socket, b"admin.no%Such+ dom0 name dom0\0") == \
        b"2\0ProtocolError\0\0no such method: 'admin.no%%Such'\0"


def test_keyword_adminvm(q):
    expected = list_line(q)
    assert send_raw(q.socket, b"admin.vm.List+ dom0 keyword adminvm\0") == expected
    assert send_raw(q.socket, b"admin.vm.List dom0 keyword adminvm\0") == expected


def test_no_plus_means_empty_arg(q):
    assert send_raw(q.socket, b"admin.vm.List dom0 name dom0\0") == list_line(q)


def test_uuid_addressing_src_and_dest(q):
    line = f"test-vm1 class=AppVM state=Halted uuid={q.vm1_uuid}\n".encode()
    assert send_raw(q.socket, f"admin.vm.List+ dom0 name uuid:{q.vm1_uuid}\0".encode()) \
        == b"0\0" + line
    assert send_raw(q.socket, f"admin.vm.List+ uuid:{ADMINVM_UUID} name dom0\0".encode()) \
        == list_line(q)
    assert send_raw(q.socket, f"admin.vm.List+ dom0 name uuid:{ADMINVM_UUID}\0".encode()) \
        == list_line(q)
    # the destination resolved by uuid is the domain itself
    assert send_raw(q.socket, f"admin.vm.property.Get+name dom0 name uuid:{q.vm1_uuid}\0"
                    .encode()) == b"0\0default=False type=str test-vm1"
    # a non-dom0 source given by uuid (allowed by the module's policy)
    assert send_raw(q.socket, f"admin.vm.List+ uuid:{q.vm1_uuid} name test-vm1\0"
                    .encode()) == b"0\0" + line


@pytest.mark.parametrize("ref, cls, message", [
    ("uuid:", "QubesVMInvalidUUIDError", "VM UUID is not valid: ''"),
    ("uuid:" + ADMINVM_UUID.upper().replace("0", "A"), "QubesVMInvalidUUIDError", None),
    ("uuid:" + ADMINVM_UUID + "0", "QubesVMInvalidUUIDError", None),
    ("uuid:00000000-0000-0000-0000-00000000000g", "QubesVMInvalidUUIDError", None),
    ("uuid:12345678-1234-1234-1234-123456789abc", "QubesVMNotFoundError", None),
    (".test-vm1", "QubesValueError",
     "VM name cannot start with hyphen, underscore, dot or numbers"),
    ("1vm", "QubesValueError", "VM name cannot start with hyphen, underscore, dot or numbers"),
    ("a" * 32, "QubesValueError", "VM name must be shorter than 32 characters"),
    ("bad!name", "QubesValueError", "VM name contains illegal characters"),
    ("nosuchvm", "QubesVMNotFoundError", "No such domain: 'nosuchvm'"),
])
def test_bad_dest_and_src(q, ref, cls, message):
    for data in (f"admin.vm.List+ dom0 name {ref}\0".encode(),
                 f"admin.vm.List+ {ref} name dom0\0".encode()):
        reply = send_raw(q.socket, data)
        assert reply.startswith(b"2\0" + cls.encode() + b"\0\0"), (data, reply)
        if message is not None:
            assert reply == b"2\0" + cls.encode() + b"\0\0" + message.encode() + b"\0"


# -- request framing errors: connection dropped, no bytes ---------------------------------

FRAMING_ERRORS = [
    b"admin.vm.List+ dom0 name dom0",             # no NUL
    b"",                                          # nothing at all
    b"admin.vm.List+ dom0 name\0",                # 3 fields
    b"admin.vm.List+ dom0\0",                     # 2 fields
    b"admin.vm.List+\0",                          # 1 field
    b"admin.vm.List+ dom0 id dom0\0",             # bad dest type
    b"admin.vm.List+ dom0 keyword dom0\0",        # keyword other than adminvm
    b"admin.vm.List+ dom0 keyword adminvm2\0",
    b"admin.vm.List+ dom0 NAME dom0\0",
]


@pytest.mark.parametrize("data", FRAMING_ERRORS)
def test_framing_error_drops_connection(q, data):
    assert send_raw(q.socket, data) == b""
    assert list_line(q).startswith(b"0\0dom0 ")


def test_framing_error_with_payload_after_bad_header(q):
    assert send_raw(q.socket, b"admin.vm.List+ dom0 name\0payload\0more") == b""
    assert list_line(q).startswith(b"0\0dom0 ")


def test_request_size_limit(q):
    header = b"admin.vm.List+ dom0 name dom0\0"
    at_limit = header + b"x" * (protocol.MAX_REQUEST - len(header))
    assert len(at_limit) == 65536
    # exactly 64 KiB is still a request: it gets the "unexpected payload" error
    assert_protocol_error(send_raw(q.socket, at_limit), "unexpected payload")
    assert send_raw(q.socket, at_limit + b"x") == b""
    assert send_raw(q.socket, header + b"x" * 200000) == b""
    assert list_line(q).startswith(b"0\0dom0 ")


def test_oversized_request_dropped_without_half_close(q):
    """The daemon must drop the connection as soon as the cap is passed, not at EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(q.socket))
        got = b"x"
        try:
            sock.sendall(b"admin.vm.List+ dom0 name dom0\0" + b"y" * 70000)
            got = sock.recv(100)
        except (BrokenPipeError, ConnectionResetError):
            got = b""
        assert got == b""
    assert list_line(q).startswith(b"0\0dom0 ")


def test_nothing_processed_before_eof(q):
    """The API is not interactive: without the half-close there is no answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        sock.connect(str(q.socket))
        sock.sendall(b"admin.vm.List+ dom0 name dom0\0")
        with pytest.raises(socket.timeout):
            sock.recv(100)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data == list_line(q)


def test_payload_may_contain_nul(q):
    # the header ends at the first NUL; the rest (with NULs) is payload
    assert_protocol_error(send_raw(q.socket, b"admin.vm.List+ dom0 name dom0\0\0\0a\0"),
                          "unexpected payload")


def test_many_concurrent_connections_left_open(q):
    """Idle half-written clients must not block others."""
    idle = []
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(q.socket))
            s.sendall(b"admin.vm.List+ dom0 na")
            idle.append(s)
        start = time.monotonic()
        assert list_line(q).startswith(b"0\0dom0 ")
        assert time.monotonic() - start < 5
    finally:
        for s in idle:
            s.close()


# -- validation order (2.4) -------------------------------------------------------------

@pytest.mark.parametrize("data, cls, message", [
    # src before dest
    (b"admin.no.Such+x nosrc name nodest\0p", "QubesVMNotFoundError", "No such domain: 'nosrc'"),
    (b"admin.no.Such+x .bad name nodest\0p", "QubesValueError", None),
    (b"admin.no.Such+x uuid: name .bad\0p", "QubesVMInvalidUUIDError", None),
    # dest before method
    (b"admin.no.Such+x dom0 name nodest\0p", "QubesVMNotFoundError",
     "No such domain: 'nodest'"),
    (b"admin.no.Such+x dom0 name uuid:x\0p", "QubesVMInvalidUUIDError",
     "VM UUID is not valid: 'x'"),
    # method before payload
    (b"admin.no.Such+x dom0 name test-vm1\0p", "ProtocolError",
     "no such method: 'admin.no.Such'"),
    # payload before arg before dest class
    (b"admin.label.List+x dom0 name test-vm1\0p", "ProtocolError", "unexpected payload"),
    (b"admin.label.Create+ dom0 name test-vm1\0", "ProtocolError", "expected payload"),
    # arg before dest class
    (b"admin.label.List+x dom0 name test-vm1\0", "ProtocolError", "unexpected argument"),
    (b"admin.label.Get+ dom0 name test-vm1\0", "ProtocolError", "expected an argument"),
    # dest class last of the generic checks
    (b"admin.label.List+ dom0 name test-vm1\0", "ProtocolError",
     "expected destination to be AdminVM"),
    # generic checks before the handler's own (unknown property with payload)
    (b"admin.vm.property.Get+nosuchprop dom0 name test-vm1\0p", "ProtocolError",
     "unexpected payload"),
    (b"admin.vm.property.Get+nosuchprop dom0 name test-vm1\0", "QubesNoSuchPropertyError",
     None),
])
def test_validation_order(q, data, cls, message):
    reply = send_raw(q.socket, data)
    assert reply.startswith(b"2\0" + cls.encode() + b"\0\0"), reply
    if message is not None:
        assert reply == b"2\0" + cls.encode() + b"\0\0" + message.encode() + b"\0"


def test_internal_methods_not_on_admin_socket(q):
    assert send_raw(q.socket, b"internal.GetSystemInfo+ dom0 name dom0\0") == \
        b"2\0ProtocolError\0\0no such method: 'internal.GetSystemInfo'\0"


def test_internal_socket_answers(q):
    reply = send_raw(q.internal_socket, b"internal.GetSystemInfo+ dom0 name dom0\0")
    assert reply.startswith(b"0\0{")
    assert send_raw(q.internal_socket, b"admin.vm.List+ dom0 name dom0\0") == \
        b"2\0ProtocolError\0\0no such method: 'admin.vm.List'\0"


# -- item 21: the declared rules of every registered method ------------------------------

ADMIN_METHODS = sorted((m for m in REGISTRY if m.socket == "admin"), key=lambda m: m.name)


def _valid_arg(method) -> str:
    return "x" if method.arg is Presence.REQUIRED else ""


def _valid_payload(method) -> bytes:
    return b"x" if method.payload is Presence.REQUIRED else b""


def _valid_dest(method) -> str:
    return "dom0" if method.dest is Dest.ADMINVM else "test-vm1"


def test_registry_is_not_empty():
    names = {m.name for m in ADMIN_METHODS}
    assert {"admin.vm.List", "admin.vm.property.Set", "admin.Events",
            "admin.vm.Create.AppVM", "admin.label.Create"} <= names


@pytest.mark.parametrize("method", [m for m in ADMIN_METHODS if m.payload is Presence.NONE],
                         ids=lambda m: m.name)
def test_no_payload_methods_refuse_payload(q, method):
    dest = _valid_dest(method)
    for arg in ("", "someprop"):
        reply = q.call(method.name, dest, arg, b"unexpected")
        assert_protocol_error(reply, "unexpected payload")


@pytest.mark.parametrize("method", [m for m in ADMIN_METHODS if m.arg is Presence.NONE],
                         ids=lambda m: m.name)
def test_no_arg_methods_refuse_arg(q, method):
    reply = q.call(method.name, _valid_dest(method), "unexpected", _valid_payload(method))
    assert_protocol_error(reply, "unexpected argument")


@pytest.mark.parametrize("method", [m for m in ADMIN_METHODS if m.dest is Dest.ADMINVM],
                         ids=lambda m: m.name)
def test_dom0_only_methods_refuse_vm_dest(q, method):
    for dest in ("test-vm1", "test-template", f"uuid:{q.vm1_uuid}"):
        reply = q.call(method.name, dest, _valid_arg(method), _valid_payload(method))
        assert_protocol_error(reply, "expected destination to be AdminVM")


def test_vm_only_methods_refuse_dom0(q):
    # none may be registered yet (notes, firewall); the rule is checked for each one that is
    for method in [m for m in ADMIN_METHODS if m.dest is Dest.VM]:
        reply = q.call(method.name, "dom0", _valid_arg(method), _valid_payload(method))
        assert_protocol_error(reply, "expected destination to not be AdminVM")


@pytest.mark.parametrize("method", [m for m in ADMIN_METHODS if m.arg is Presence.REQUIRED],
                         ids=lambda m: m.name)
def test_required_arg_methods_refuse_empty_arg(q, method):
    reply = q.call(method.name, _valid_dest(method), "", _valid_payload(method))
    assert_protocol_error(reply, "expected an argument")


@pytest.mark.parametrize("method",
                         [m for m in ADMIN_METHODS if m.payload is Presence.REQUIRED],
                         ids=lambda m: m.name)
def test_required_payload_methods_refuse_empty_payload(q, method):
    reply = q.call(method.name, _valid_dest(method), _valid_arg(method), b"")
    assert_protocol_error(reply, "expected payload")


def test_upstream_dom0_only_methods_are_declared_dom0_only():
    """Spec 8.2 item 21: these methods must be declared for the AdminVM only."""
    for m in ADMIN_METHODS:
        if (m.name in ("admin.vmclass.List", "admin.deviceclass.List", "admin.pool.volume.List",
                       "admin.backup.Execute", "admin.backup.Info")
                or m.name.startswith(("admin.vm.Create.", "admin.vm.CreateInPool.",
                                      "admin.label.", "admin.property.", "admin.pool."))):
            assert m.dest is Dest.ADMINVM, m.name


# -- robustness: random and mutated frames ------------------------------------------------

READ_ONLY_FRAMES = [
    b"admin.vm.List+ dom0 name dom0\0",
    b"admin.vm.List+ dom0 name test-vm1\0",
    b"admin.vmclass.List+ dom0 name dom0\0",
    b"admin.vm.property.Get+netvm dom0 name test-vm1\0",
    b"admin.vm.property.GetAll+ dom0 name test-vm1\0",
    b"admin.vm.property.List+ dom0 name test-template\0",
    b"admin.vm.property.GetDefault+vcpus dom0 name test-vm1\0",
    b"admin.vm.property.Help+label dom0 name test-vm1\0",
    b"admin.property.Get+default_kernel dom0 keyword adminvm\0",
    b"admin.property.GetAll+ dom0 name dom0\0",
    b"admin.vm.feature.List+ dom0 name test-vm1\0",
    b"admin.vm.feature.CheckWithTemplate+foo dom0 name test-vm1\0",
    b"admin.vm.tag.List+ dom0 name test-vm1\0",
    b"admin.vm.tag.Get+created-by-dom0 dom0 name test-vm1\0",
    b"admin.label.List+ dom0 name dom0\0",
    b"admin.label.Get+red dom0 name dom0\0",
    b"admin.label.Index+red dom0 name dom0\0",
    b"admin.vm.CurrentState+ dom0 name test-vm1\0",
]


def _is_reply(reply: bytes) -> bool:
    if reply == b"":
        return True
    if reply.startswith(b"0\0"):
        return True
    return reply.startswith(b"2\0") and reply.endswith(b"\0") and reply.count(b"\0") >= 4


def _safe_to_send(data: bytes) -> bool:
    """Only frames that cannot legitimately change state or open a stream."""
    try:
        req = protocol.parse_request(data)
    except protocol.FramingError:
        return True
    method = REGISTRY.get(req.method)
    if method is None or method.socket != "admin":
        return True
    return not method.mutating and not method.stream


def _check_alive(q):
    assert list_line(q).startswith(b"0\0dom0 "), "daemon stopped answering"


ROBUST = settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])


@ROBUST
@given(data=st.binary(max_size=300))
def test_random_bytes(q, data):
    if not _safe_to_send(data):
        return
    reply = send_raw(q.socket, data)
    assert _is_reply(reply), (data, reply)
    _check_alive(q)


@ROBUST
@given(words=st.lists(st.sampled_from(
    [b"admin.vm.List", b"admin.vm.property.Get", b"+", b" ", b"\0", b"dom0", b"name",
     b"keyword", b"adminvm", b"test-vm1", b"uuid:", b"..", b"\xff", b"%s", b"\n",
     b"admin.label.Get", b"admin.vm.tag.Get", b"label", b"netvm"]), max_size=14))
def test_token_soup(q, words):
    data = b"".join(words)
    if not _safe_to_send(data):
        return
    reply = send_raw(q.socket, data)
    assert _is_reply(reply), (data, reply)
    _check_alive(q)


@st.composite
def mutated_frames(draw):
    frame = bytearray(draw(st.sampled_from(READ_ONLY_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append"]))
        pos = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and frame:
            del frame[pos:pos + draw(st.integers(1, 5))]
        elif kind == "truncate":
            del frame[pos:]
        else:
            frame += draw(st.binary(min_size=1, max_size=40))
    return bytes(frame)


@ROBUST
@given(data=mutated_frames())
def test_mutated_valid_frames(q, data):
    if not _safe_to_send(data):
        return
    reply = send_raw(q.socket, data)
    assert _is_reply(reply), (data, reply)
    _check_alive(q)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=100), cut=st.integers(0, 100))
def test_client_disconnects_midway(q, data, cut):
    """A client that closes without half-closing, or mid-request, is harmless."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(q.socket))
        try:
            sock.sendall(data[:cut])
        except (BrokenPipeError, ConnectionResetError):
            pass
    _check_alive(q)


def test_valid_frames_after_fuzzing_still_exact(q):
    for frame in READ_ONLY_FRAMES:
        reply = send_raw(q.socket, frame)
        assert reply.startswith((b"0\0", b"2\0QubesFeatureNotFoundError")), \
            (frame, reply)
