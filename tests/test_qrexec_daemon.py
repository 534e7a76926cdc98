"""qrexec-daemon + qrexec-client-vm through real sockets and real subprocesses.

qubesd is played by `StubQubesd` (a real-socket peer speaking qubesd's framing, which records
what it receives); the policy engine is the real one. End-to-end tests with the real qubesd are
in test_qrexec_e2e.py.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_qrexec_support import (
    REPO,
    StubQubesd,
    client,
    env,
    raw_call,
    start_daemon,
    stop_process,
    wait_for,
)

POLICY = """\
admin.vm.List           *   alice   dom0        allow target=dom0
admin.vm.List           *   alice   @adminvm    allow target=dom0
admin.vm.property.Get   *   alice   @anyvm      allow target=dom0
admin.Events            *   alice   dom0        allow target=dom0
admin.vm.List           *   bob     @anyvm      deny
test.Env                *   alice   dom0        allow
test.Missing            *   alice   dom0        allow
test.Echo               *   alice   bob         allow
test.Echo               *   alice   carol       allow target=bob
test.Echo               *   alice   dave        allow
test.Echo               *   alice   erin        allow autostart=no
test.Exit               *   alice   bob         allow
test.Ask                *   alice   bob         ask default_target=bob
test.Ask                *   mallory bob         ask
"""

ENV_SERVICE = """#!/bin/sh
echo "argv1=$1"
echo "full=$QREXEC_SERVICE_FULL_NAME"
echo "remote=$QREXEC_REMOTE_DOMAIN"
echo "arg=$QREXEC_SERVICE_ARGUMENT"
echo "type=$QREXEC_REQUESTED_TARGET_TYPE"
echo "target=$QREXEC_REQUESTED_TARGET"
echo "keyword=$QREXEC_REQUESTED_TARGET_KEYWORD"
echo "stdin=$(cat)"
echo "to stderr" >&2
exit 3
"""

ECHO_SERVICE = """#!/bin/sh
echo "echo from $QREXEC_REMOTE_DOMAIN arg=$1: $(cat)"
"""


class Env:
    def __init__(self, tmp: Path) -> None:
        self.run = tmp / "run"
        self.conf = tmp / "etc"
        self.vmrpc = tmp / "vm-rpc"
        for d in (self.run, self.conf / "policy.d", self.conf / "qubes-rpc", self.vmrpc):
            d.mkdir(parents=True)
        (self.conf / "policy.d" / "30-test.policy").write_text(POLICY)
        for name, body in (("test.Env", ENV_SERVICE),):
            p = self.conf / "qubes-rpc" / name
            p.write_text(body)
            p.chmod(0o755)
        for name, body in (("test.Echo", ECHO_SERVICE), ("test.Ask", ECHO_SERVICE),
                           ("test.Exit", "#!/bin/sh\ncat >/dev/null\nexit 7\n")):
            p = self.vmrpc / name
            p.write_text(body)
            p.chmod(0o755)
        self.qubesd = StubQubesd(self.run)
        for name in ("alice", "bob", "mallory"):
            self.qubesd.add_domain(name, "Running")
        for name in ("carol", "dave", "erin"):
            self.qubesd.add_domain(name, "Halted")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = tmp / "qrexec.log"

    def sock(self, name: str) -> Path:
        return self.run / "qrexec" / f"{name}.sock"

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, *args], env=env(), cwd=REPO,
                             stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def agent(self, domain: str) -> subprocess.Popen[bytes]:
        return self.spawn("-m", "qrexec.agent", "--socket", str(self.sock(domain)),
                          "--services-dir", str(self.vmrpc))

    def ask_agent(self, *args: str) -> subprocess.Popen[bytes]:
        p = self.spawn("-m", "qrexec.ask_agent", "--run-dir", str(self.run), *args)
        time.sleep(0.3)
        return p


@pytest.fixture
def qx(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.qubesd.start()
    daemon = start_daemon(e.run, e.conf, e.log)
    e.procs.append(daemon)
    try:
        wait_for(lambda: e.sock("alice").exists(), what="alice socket")
        yield e
    finally:
        for p in reversed(e.procs):
            stop_process(p)
        e.qubesd.shutdown()
        if os.environ.get("QREXEC_TEST_LOG"):
            print(e.log.read_text())


def test_sockets_for_running_domains_only(qx: Env) -> None:
    names = sorted(p.name for p in (qx.run / "qrexec").iterdir())
    assert names == ["alice.sock", "ask-agent.sock", "bob.sock", "mallory.sock"]
    for n in names:
        assert stat.S_IMODE((qx.run / "qrexec" / n).stat().st_mode) == 0o660


def test_socket_follows_start_and_shutdown(qx: Env) -> None:
    qx.qubesd.set_state("carol", "Running")
    wait_for(lambda: qx.sock("carol").exists(), what="carol socket")
    qx.qubesd.set_state("carol", "Halted")
    wait_for(lambda: not qx.sock("carol").exists(), what="carol socket removed")
    qx.qubesd.emit("", "domain-delete", vm="bob")
    wait_for(lambda: not qx.sock("bob").exists(), what="bob socket removed on delete")


def test_allowed_admin_call_reaches_qubesd_with_exact_header(qx: Env) -> None:
    r = client(qx.run, "alice", "dom0", "admin.vm.List", stdin=b"")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"0\0HEADER[admin.vm.List+ alice keyword adminvm]PAYLOAD[]"
    r = client(qx.run, "alice", "work", "admin.vm.property.Get+label", stdin=b"pay\0load")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        b"0\0HEADER[admin.vm.property.Get+label alice name work]PAYLOAD[pay\0load]")


def test_denied_call_exits_126(qx: Env) -> None:
    before = len(qx.qubesd.requests)
    r = client(qx.run, "bob", "dom0", "admin.vm.List")
    assert r.returncode == 126
    assert b"Request refused" in r.stderr
    assert r.stdout == b""
    r = client(qx.run, "alice", "dom0", "admin.vm.Kill")  # no rule at all
    assert r.returncode == 126
    assert not [h for h, _ in qx.qubesd.requests[before:] if "alice" in h or "bob" in h]


def test_caller_cannot_claim_another_identity(qx: Env) -> None:
    # the service, argument, target and payload all try to name bob / dom0 as the source
    status, out, _ = raw_call(
        qx.sock("alice"), b"CALL dom0 admin.vm.List+x\0bob\tname\tdom0\n",
        b"bob name dom0\0admin.vm.List+ dom0 name dom0\0")
    assert status == 0
    assert out.startswith(b"0\0HEADER[admin.vm.List+x_bob_name_dom0 alice keyword adminvm]")
    r = client(qx.run, "alice", "dom0 bob", "admin.vm.List")
    assert r.returncode in (125, 126)
    r = client(qx.run, "alice", "bob\tname", "admin.vm.property.Get+x bob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"0\0HEADER[admin.vm.property.Get+x_bob alice name bob_name]")
    for h in qx.qubesd.headers():
        if h.startswith(("admin.vm.List+x", "admin.vm.property.Get+x")):
            assert h.split(" ")[1] == "alice"


def test_exit_codes_127_and_125(qx: Env) -> None:
    r = client(qx.run, "alice", "dom0", "test.Missing")
    assert r.returncode == 127
    r = client(qx.run, "alice", "dom0", "admin.vm.List", sock=str(qx.run / "nope.sock"))
    assert r.returncode == 125
    assert b"qrexec" in r.stderr
    status, _, _ = raw_call(qx.sock("alice"), b"CALL dom0 +bad\n")
    assert status == 125
    status, _, _ = raw_call(qx.sock("alice"), b"HELLO\n")
    assert status == 125


def test_dom0_executable_service_environment(qx: Env) -> None:
    r = client(qx.run, "alice", "dom0", "test.Env+some-arg", stdin=b"input data")
    assert r.returncode == 3
    lines = dict(ln.split("=", 1) for ln in r.stdout.decode().splitlines())
    assert lines == {
        "argv1": "some-arg", "full": "test.Env+some-arg", "remote": "alice",
        "arg": "some-arg", "type": "keyword", "target": "", "keyword": "adminvm",
        "stdin": "input data",
    }
    assert r.stderr == b"to stderr\n"
    r = client(qx.run, "alice", "dom0", "test.Env")
    assert b"argv1=\n" in r.stdout and b"full=test.Env+\n" in r.stdout


def test_vm_to_vm_call_via_agent(qx: Env) -> None:
    qx.agent("bob")
    time.sleep(0.3)
    r = client(qx.run, "alice", "bob", "test.Echo+hi", stdin=b"ping")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=hi: ping\n"
    r = client(qx.run, "alice", "bob", "test.Exit")
    assert r.returncode == 7
    r = client(qx.run, "alice", "bob", "test.NoSuch")
    assert r.returncode == 126  # no policy rule
    # redirect: carol requested, the call runs in bob
    r = client(qx.run, "alice", "carol", "test.Echo", stdin=b"x")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=: x\n"


def test_autostart_starts_halted_target(qx: Env) -> None:
    qx.agent("dave")  # waits for dave's socket to appear
    r = client(qx.run, "alice", "dave", "test.Echo", stdin=b"wake up")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=: wake up\n"
    assert "admin.vm.Start+ dom0 name dave" in qx.qubesd.headers()
    assert qx.sock("dave").exists()


def test_no_autostart_refuses_halted_target(qx: Env) -> None:
    r = client(qx.run, "alice", "erin", "test.Echo")
    assert r.returncode == 126
    assert "admin.vm.Start+ dom0 name erin" not in qx.qubesd.headers()


def test_ask_allowed_denied_and_without_agent(qx: Env) -> None:
    qx.agent("bob")
    r = client(qx.run, "alice", "bob", "test.Ask")
    assert r.returncode == 126  # no ask agent for dom0
    a = qx.ask_agent("--answer", "allow")
    r = client(qx.run, "alice", "bob", "test.Ask", stdin=b"q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=: q\n"
    stop_process(a)
    qx.ask_agent("--answer", "deny")
    r = client(qx.run, "alice", "bob", "test.Ask")
    assert r.returncode == 126


def test_ask_answer_must_be_an_offered_target(qx: Env) -> None:
    qx.agent("bob")
    qx.ask_agent("--answer", "allow", "--target", "mallory")
    r = client(qx.run, "alice", "bob", "test.Ask")
    assert r.returncode == 126


def test_ask_goes_to_the_sources_gui_domain(qx: Env) -> None:
    qx.qubesd.add_domain("mallory", "Running", guivm="sys-gui-m")
    qx.qubesd.emit("mallory", "property-set:guivm", name="guivm", newvalue="sys-gui-m")
    qx.agent("bob")
    qx.ask_agent("--answer", "allow", "--guivm", "dom0")
    r = client(qx.run, "mallory", "bob", "test.Ask")
    assert r.returncode == 126  # dom0's agent is not mallory's GUI domain
    qx.ask_agent("--answer", "allow", "--guivm", "sys-gui-m", "--target", "bob")
    r = client(qx.run, "mallory", "bob", "test.Ask", stdin=b"m")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from mallory arg=: m\n"


def test_admin_events_stream(qx: Env) -> None:
    e = env()
    e["QREXEC_VM_SOCKET"] = str(qx.sock("alice"))
    p = subprocess.Popen([sys.executable, "-m", "qrexec.client_vm", "dom0", "admin.Events"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=e, cwd=REPO)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.close()
    expected = b"1\0\0connection-established\0\0" + b"".join(
        f"1\0work\0test-event\0n\0{i}\0\0".encode() for i in range(3))
    got = b""
    while len(got) < len(expected):
        chunk = os.read(p.stdout.fileno(), 65536)
        assert chunk
        got += chunk
    assert got == expected
    assert p.poll() is None  # still streaming
    p.kill()
    p.wait()


def test_reconnects_when_qubesd_restarts(qx: Env) -> None:
    qx.qubesd.stop()
    time.sleep(0.3)
    qx.qubesd.domains["bob"]["state"] = "Halted"
    qx.qubesd.domains["carol"]["state"] = "Running"
    import asyncio

    asyncio.run_coroutine_threadsafe(qx.qubesd._listen(), qx.qubesd.loop).result(5)
    wait_for(lambda: qx.sock("carol").exists() and not qx.sock("bob").exists(),
             what="resync after qubesd restart")


def test_client_without_socket_variable() -> None:
    e = env()
    e.pop("QREXEC_VM_SOCKET", None)
    r = subprocess.run([sys.executable, "-m", "qrexec.client_vm", "dom0", "admin.vm.List"],
                       capture_output=True, env=e, cwd=REPO, input=b"", check=False)
    assert r.returncode == 125


def test_socket_is_identity(qx: Env) -> None:
    # two domains calling the same thing get their own name in the header
    for dom in ("alice", "bob"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(qx.sock(dom)))
        s.close()
    r = client(qx.run, "alice", "bob", "admin.vm.property.Get+label")
    assert r.stdout.startswith(b"0\0HEADER[admin.vm.property.Get+label alice name bob]")


def test_prefix_and_local_program(qx: Env) -> None:
    qx.agent("bob")
    time.sleep(0.3)
    r = client(qx.run, "alice", "-t", "-T", "-p", "pre-", "bob", "test.Echo", stdin=b"body")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=: pre-body\n"
    # LOCAL_PROGRAM: its stdout is the payload, the reply is its stdin
    prog = ("import os, sys; os.write(1, b'from-prog'); os.close(1); "
            "open(sys.argv[1], 'w').write(sys.stdin.read())")
    out = qx.run / "prog-out"
    r = client(qx.run, "alice", "bob", "test.Echo", sys.executable, "-c", prog, str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "echo from alice arg=: from-prog\n"


def test_uuid_target_and_policy_reload(qx: Env) -> None:
    qx.agent("bob")
    time.sleep(0.3)
    bob_uuid = qx.qubesd._sysinfo()["domains"]["bob"]["uuid"]
    r = client(qx.run, "alice", f"uuid:{bob_uuid}", "test.Echo", stdin=b"u")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=: u\n"
    pol = qx.conf / "policy.d" / "20-first.policy"
    pol.write_text("test.Echo * alice bob deny\n")
    wait_for(lambda: client(qx.run, "alice", "bob", "test.Echo").returncode == 126,
             what="policy reload")
    log = qx.log.read_text()
    assert "source=alice service=test.Echo+ requested=bob target=- verdict=deny rule=" in log
    assert "20-first.policy:1" in log


def test_qubesd_unreachable_is_a_qrexec_error(qx: Env) -> None:
    qx.qubesd.stop()
    time.sleep(0.3)
    r = client(qx.run, "alice", "dom0", "admin.vm.List")
    assert r.returncode == 125


def test_ask_agent_terminal_mode(qx: Env) -> None:
    qx.agent("bob")
    prompt_log = qx.run / "prompt.txt"
    a = subprocess.Popen([sys.executable, "-m", "qrexec.ask_agent", "--run-dir", str(qx.run)],
                         stdin=subprocess.PIPE, stderr=prompt_log.open("wb"), env=env(), cwd=REPO)
    qx.procs.append(a)
    assert a.stdin is not None
    a.stdin.write(b"y\nn\n")
    a.stdin.flush()
    wait_for(lambda: b"ready" in prompt_log.read_bytes(), what="ask agent")
    r = client(qx.run, "alice", "bob", "test.Ask+an-arg", stdin=b"t")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"echo from alice arg=an-arg: t\n"
    r = client(qx.run, "alice", "bob", "test.Ask")
    assert r.returncode == 126
    shown = prompt_log.read_text()
    for part in ("source:   alice", "target:   bob", "service:  test.Ask",
                 "argument: an-arg", "30-test.policy:13", "Allow? [y/N]"):
        assert part in shown


def test_parallel_calls(qx: Env) -> None:
    qx.agent("bob")
    time.sleep(0.3)
    e = env()
    e["QREXEC_VM_SOCKET"] = str(qx.sock("alice"))
    procs = [subprocess.Popen([sys.executable, "-m", "qrexec.client_vm", "bob", f"test.Echo+{i}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=e, cwd=REPO)
             for i in range(8)]
    outs = [p.communicate(f"n{i}".encode(), timeout=30)[0] for i, p in enumerate(procs)]
    assert [p.returncode for p in procs] == [0] * 8
    assert outs == [f"echo from alice arg={i}: n{i}\n".encode() for i in range(8)]
