"""qrexec-policy CLI, run as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSINFO = {"domains": {
    "dom0": {"tags": [], "type": "AdminVM", "power_state": "Running", "label": "0x000000",
             "uuid": "00000000-0000-0000-0000-000000000000", "template_for_dispvms": False,
             "default_dispvm": None},
    "mgmt": {"tags": [], "type": "AppVM", "power_state": "Running", "uuid": "u1",
             "label": "0xcc0000", "template_for_dispvms": False, "default_dispvm": None},
    "work": {"tags": ["owned"], "type": "AppVM", "power_state": "Running", "uuid": "u2",
             "label": "0x00cc00", "template_for_dispvms": False, "default_dispvm": "dvm"},
    "dvm": {"tags": [], "type": "AppVM", "power_state": "Halted", "uuid": "u3",
            "template_for_dispvms": True, "default_dispvm": None},
}}


def run(*args: str, stdin: str = "", env: dict | None = None, cwd: Path | None = None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "qrexec.tools.policy_cli", *args],
                          input=stdin, capture_output=True, text=True, env=e, check=False,
                          cwd=cwd or ROOT, timeout=60)


@pytest.fixture
def setup(tmp_path: Path):
    pd = tmp_path / "policy.d"
    (pd / "include").mkdir(parents=True)
    (pd / "30-user.policy").write_text(
        "admin.vm.List * mgmt @tag:owned allow target=dom0\n"
        "admin.vm.List * mgmt @adminvm allow target=dom0\n"
        "qubes.Filecopy * work @anyvm ask default_target=mgmt\n"
        "!include-service admin.vm.Start * include/admin-local-rwx\n")
    (pd / "include" / "admin-local-rwx").write_text("mgmt @tag:owned allow,target=dom0\n")
    si = tmp_path / "si.json"
    si.write_text(json.dumps(SYSINFO))
    return pd, si


def test_check_allow_deny_ask(setup):
    pd, si = setup
    r = run("check", "--policy-dir", str(pd), "--system-info", str(si),
            "mgmt", "work", "admin.vm.Start")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("allow target=dom0")
    assert "admin-local-rwx:1" in r.stdout
    r = run("check", "--policy-dir", str(pd), "--system-info", str(si), "--json",
            "mgmt", "dvm", "admin.vm.Start")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out == {"result": "deny", "target": None, "targets_for_ask": None,
                   "default_target": None, "user": None, "autostart": True, "notify": True,
                   "rule": None, "reason": "no matching rule found"}
    r = run("check", "--policy-dir", str(pd), "--system-info", str(si), "--json",
            "work", "", "qubes.Filecopy+x")
    out = json.loads(r.stdout)
    assert r.returncode == 1
    assert (out["result"], out["targets_for_ask"], out["default_target"]) == (
        "ask", ["@dispvm:dvm", "dvm", "mgmt"], "mgmt")
    assert out["rule"] == {"file": str(pd / "30-user.policy"), "line": 3}


def test_check_batch(setup):
    pd, si = setup
    reqs = [{"source": "mgmt", "target": "work", "service": "admin.vm.List"},
            {"source": "mgmt", "target": "dvm", "service": "admin.vm.List"},
            {"source": "mgmt", "target": "@adminvm", "service": "admin.vm.List+"},
            "not an object", {"source": 1}]
    stdin = "\n".join(json.dumps(q) for q in reqs) + "\n{broken\n\n"
    r = run("check", "--batch", "--policy-dir", str(pd), "--system-info", str(si), stdin=stdin)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["result"] for x in lines] == ["allow", "deny", "allow", "deny", "deny", "deny"]
    keys = {"result", "target", "targets_for_ask", "default_target", "user", "autostart",
            "notify", "rule", "reason"}
    assert all(set(x) == keys for x in lines)
    assert lines[0]["rule"]["line"] == 1 and lines[1]["rule"] is None
    assert "invalid request on line 6" in lines[5]["reason"]


def _fake_qubesd(path: Path, reply: bytes, received: list) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            received.append(data)
            conn.sendall(reply)
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_check_asks_qubesd_for_system_info(setup, tmp_path):
    pd, _ = setup
    sock = tmp_path / "internal.sock"
    received: list = []
    t = _fake_qubesd(sock, b"0\0" + json.dumps(SYSINFO).encode(), received)
    r = run("check", "--policy-dir", str(pd), "mgmt", "work", "admin.vm.List",
            env={"QUBESD_INTERNAL_SOCKET": str(sock)})
    t.join(10)
    assert received == [b"internal.GetSystemInfo+ dom0 name dom0\0"]
    assert r.returncode == 0, r.stderr


def test_check_qubesd_error_and_missing(setup, tmp_path):
    pd, _ = setup
    sock = tmp_path / "internal.sock"
    t = _fake_qubesd(sock, b"2\0QubesException\0\0boom\0", [])
    r = run("check", "--policy-dir", str(pd), "mgmt", "work", "admin.vm.List",
            env={"QUBESD_INTERNAL_SOCKET": str(sock)})
    t.join(10)
    assert r.returncode == 2 and "QubesException: boom" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("check", "--policy-dir", str(pd), "mgmt", "work", "admin.vm.List",
            env={"QUBESD_INTERNAL_SOCKET": str(tmp_path / "nope.sock")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "cannot get system info" in r.stderr


def test_check_default_socket_relative_to_cwd(setup, tmp_path):
    pd, _ = setup
    (tmp_path / "var" / "run").mkdir(parents=True)
    received: list = []
    t = _fake_qubesd(tmp_path / "var/run/qubesd.internal.sock",
                     b"0\0" + json.dumps(SYSINFO).encode(), received)
    e = {k: v for k, v in os.environ.items() if k != "QUBESD_INTERNAL_SOCKET"}
    e["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "qrexec.tools.policy_cli", "check",
                        "--policy-dir", str(pd), "mgmt", "work", "admin.vm.List"],
                       capture_output=True, text=True, cwd=tmp_path, env=e, timeout=60,
                       check=False)
    t.join(10)
    assert r.returncode == 0, r.stderr
    assert received


def test_bad_inputs_one_line_errors(setup, tmp_path):
    pd, si = setup
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    for args in (["check", "--policy-dir", str(pd), "--system-info", str(bad), "a", "b", "c"],
                 ["check", "--policy-dir", str(pd), "--system-info", str(tmp_path / "none"),
                  "a", "b", "c"],
                 ["check", "--policy-dir", str(pd), "--system-info", str(si), "a", "b"]):
        r = run(*args)
        assert r.returncode == 2
        assert r.stderr.startswith("qrexec-policy: error: ")
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = run()
    assert r.returncode == 2 and "usage" in r.stderr


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "check" in r.stdout and "lint" in r.stdout
    r = run("check", "--help")
    assert r.returncode == 0 and "--batch" in r.stdout and "--system-info" in r.stdout


def test_lint(setup):
    pd, _ = setup
    r = run("lint", "--policy-dir", str(pd))
    assert r.returncode == 0 and r.stdout.startswith("OK: 4 rules")
    (pd / "40-bad.policy").write_text("# x\nsvc * a b allow target=@anyvm\n")
    r = run("lint", "--policy-dir", str(pd))
    assert r.returncode == 1
    assert r.stdout == f"{pd}/40-bad.policy:2: invalid redirect token: '@anyvm'\n"
    (pd / "40-bad.policy").write_text("!include 40-bad.policy\n")
    r = run("lint", "--policy-dir", str(pd))
    assert r.returncode == 1 and "include cycle" in r.stdout and "Traceback" not in r.stderr
    # a broken policy also fails closed in check
    r = run("check", "--policy-dir", str(pd), "--system-info", str(setup[1]), "--json",
            "mgmt", "work", "admin.vm.Start")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["reason"].startswith("policy failed to load: ")


def test_graph(setup):
    pd, si = setup
    r = run("graph", "--policy-dir", str(pd), "--system-info", str(si))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "digraph g {" and lines[-1] == "}"
    assert '  "mgmt" [color = "#cc0000", penwidth = 3];' in lines
    assert '  "mgmt" -> "dom0" [label="admin.vm.List" color=red];' in lines
    assert '  "mgmt" -> "dom0" [label="admin.vm.Start" color=red];' in lines
    assert not any("orange" in x for x in lines)
    assert len(lines) == len(set(lines))
    r = run("graph", "--policy-dir", str(pd), "--system-info", str(si), "--include-ask",
            "--full-output", "--source", "work")
    assert '  "work" -> "mgmt" [label="qubes.Filecopy ask default_target=mgmt" color=orange];' \
        in r.stdout.splitlines()
    assert '  "@dispvm:dvm" [style = dotted];' in r.stdout.splitlines()
    assert "admin.vm.List" not in r.stdout
    r = run("graph", "--policy-dir", str(pd), "--system-info", str(si), "--include-ask",
            "--skip-labels", "--target", "dom0")
    assert '  "mgmt" -> "dom0" [label="" color=red];' in r.stdout.splitlines()
    assert "orange" not in r.stdout
