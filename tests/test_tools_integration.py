"""The qvm-* tools as subprocesses against the real daemon (``python -m qubesd.daemon``).

One daemon per module, in a temporary state/run/config tree, on libvirt's test driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "run" / "qubesd.sock"
        self.log = base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for sub in ("lib", "run", "etc"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "qubesd.daemon", "--state-dir", str(self.base / "lib"),
                "--run-dir", str(self.base / "run"), "--config-dir", str(self.base / "etc")]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 40
        while not self.socket.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"qubesd exited with {self.proc.returncode}:\n"
                            f"{self.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("qubesd did not create its socket within 40 s:\n"
                            f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("QREXEC_VM_SOCKET", None)
        env["QUBESD_SOCKET"] = str(self.socket)
        return env


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("qubesd"))
    d.start()
    try:
        yield d
    finally:
        d.stop()


TOOLS = {
    "qvm-ls": ["-m", "qubesd.tools.qvm_ls"],
    "qvm-prefs": ["-m", "qubesd.tools.qvm_prefs"],
    "qubes-prefs": ["-m", "qubesd.tools.qubes_prefs"],
    "qvm-create": ["-m", "qubesd.tools.qvm_create"],
    "qvm-remove": ["-m", "qubesd.tools.qvm_remove"],
    "qvm-tags": ["-m", "qubesd.tools.qvm_tags"],
    "qvm-features": ["-m", "qubesd.tools.qvm_features"],
    "qubesd-query": ["-m", "qubesd.tools.qubesd_query"],
    **{name: ["-m", "qubesd.tools.lifecycle", name]
       for name in ("qvm-start", "qvm-shutdown", "qvm-pause", "qvm-unpause", "qvm-kill")},
}


def tool(daemon: Daemon, name: str, *args: str, stdin: bytes = b"",
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *TOOLS[name], *args], cwd=ROOT,
                          env=env or daemon.env(), input=stdin, capture_output=True,
                          timeout=120, check=False)
    result = subprocess.CompletedProcess(proc.args, proc.returncode,
                                         proc.stdout.decode(errors="replace"),
                                         proc.stderr.decode(errors="replace"))
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    assert result.stderr == "", result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], prog: str) -> str:
    """An error: exit 1 and exactly one line ``<prog>: error: ...``."""
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) >= 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0][len(f"{prog}: error: "):]


def ls_rows(daemon: Daemon) -> dict[str, list[str]]:
    lines = ok(tool(daemon, "qvm-ls")).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "CLASS", "LABEL", "TEMPLATE", "NETVM"]
    return {line.split()[0]: line.split() for line in lines[1:]}


@pytest.fixture(scope="module")
def template(daemon: Daemon) -> str:
    ok(tool(daemon, "qvm-create", "--class", "TemplateVM", "--label", "black", "it-tpl"))
    return "it-tpl"


def test_qvm_ls_shows_dom0(daemon: Daemon) -> None:
    rows = ls_rows(daemon)
    assert rows["dom0"][:4] == ["dom0", "Running", "AdminVM", "black"]
    assert next(iter(rows)) == "dom0"


def test_qubesd_query_raw_bytes(daemon: Daemon) -> None:
    proc = subprocess.run([sys.executable, *TOOLS["qubesd-query"], "-e", "--fail", "dom0",
                           "admin.vm.List", "dom0"], cwd=ROOT, env=daemon.env(),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"0\0dom0 class=AdminVM state=Running uuid=")
    proc = subprocess.run([sys.executable, *TOOLS["qubesd-query"], "-e", "--fail", "dom0",
                           "admin.no.Such", "dom0"], cwd=ROOT, env=daemon.env(),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b"2\0ProtocolError\0\0no such method: 'admin.no.Such'\0"


def test_create_prefs_and_ls(daemon: Daemon, template: str) -> None:
    ok(tool(daemon, "qvm-create", "-t", template, "-l", "red", "-p", "memory=500",
            "it-work"))
    rows = ls_rows(daemon)
    assert rows["it-work"][:5] == ["it-work", "Halted", "AppVM", "red", template]
    assert rows[template][:4] == [template, "Halted", "TemplateVM", "black"]
    assert ok(tool(daemon, "qvm-prefs", "it-work", "memory")) == "500\n"
    assert ok(tool(daemon, "qvm-prefs", "it-work", "template")) == f"{template}\n"
    ok(tool(daemon, "qvm-prefs", "it-work", "vcpus", "3"))
    assert ok(tool(daemon, "qvm-prefs", "it-work", "vcpus")) == "3\n"
    listing = ok(tool(daemon, "qvm-prefs", "it-work")).splitlines()
    flags = {line.split()[0]: line.split()[1] for line in listing}
    assert flags["vcpus"] == "-" and flags["label"] == "-"
    assert flags["debug"] == "D"
    ok(tool(daemon, "qvm-prefs", "it-work", "--default", "vcpus"))
    assert flags != {line.split()[0]: line.split()[1]
                     for line in ok(tool(daemon, "qvm-prefs", "it-work")).splitlines()}
    msg = fails(tool(daemon, "qvm-prefs", "it-work", "nosuchprop"), "qvm-prefs")
    assert msg == "no such property: 'nosuchprop'"
    msg = fails(tool(daemon, "qvm-prefs", "it-work", "memory", "lots"), "qvm-prefs")
    assert "int" in msg
    fails(tool(daemon, "qvm-prefs", "it-nosuch", "memory"), "qvm-prefs")
    raw = ok(tool(daemon, "qvm-ls", "--raw-data", "--fields", "name,memory,vcpus", "it-work"))
    assert raw.startswith("it-work|500|")


def test_create_errors(daemon: Daemon, template: str) -> None:
    assert "exists" in fails(tool(daemon, "qvm-create", "-t", template, "-l", "red",
                                  template), "qvm-create")
    assert "label" in fails(tool(daemon, "qvm-create", "-t", template, "-l", "mauve",
                                 "it-x"), "qvm-create")
    msg = fails(tool(daemon, "qvm-create", "-t", template, "-l", "red", "-p", "vcpus=0",
                     "it-bad"), "qvm-create")
    assert "vcpus" in msg and "removed" in msg
    assert "it-bad" not in ok(tool(daemon, "qvm-ls", "--raw-list")).split()


def test_global_prefs(daemon: Daemon, template: str) -> None:
    ok(tool(daemon, "qubes-prefs", "default_template", template))
    assert ok(tool(daemon, "qubes-prefs", "default_template")) == f"{template}\n"
    listing = ok(tool(daemon, "qubes-prefs"))
    assert any(line.split()[:3] == ["default_template", "-", template]
               for line in listing.splitlines())
    # a qube created without --template gets the default one
    ok(tool(daemon, "qvm-create", "-l", "green", "it-deft"))
    assert ok(tool(daemon, "qvm-prefs", "it-deft", "template")) == f"{template}\n"
    ok(tool(daemon, "qvm-remove", "-f", "it-deft"))


def test_tags_and_features(daemon: Daemon, template: str) -> None:
    ok(tool(daemon, "qvm-create", "-t", template, "-l", "blue", "it-tags"))
    ok(tool(daemon, "qvm-tags", "it-tags", "add", "alpha", "beta"))
    tags = ok(tool(daemon, "qvm-tags", "it-tags")).split()
    assert {"alpha", "beta"} <= set(tags) and tags == sorted(tags)
    ok(tool(daemon, "qvm-tags", "it-tags", "del", "alpha"))
    assert "alpha" not in ok(tool(daemon, "qvm-tags", "it-tags", "list")).split()
    fails(tool(daemon, "qvm-tags", "it-tags", "del", "alpha"), "qvm-tags")
    fails(tool(daemon, "qvm-tags", "it-tags", "add", "bad/tag"), "qvm-tags")

    ok(tool(daemon, "qvm-features", "it-tags", "feat1", "value one"))
    assert ok(tool(daemon, "qvm-features", "it-tags", "feat1")) == "value one\n"
    listing = ok(tool(daemon, "qvm-features", "it-tags"))
    assert listing.split() == ["feat1", "value", "one"]
    missing = tool(daemon, "qvm-features", "it-tags", "nosuch")
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "")
    ok(tool(daemon, "qvm-features", "it-tags", "--unset", "feat1"))
    assert tool(daemon, "qvm-features", "it-tags", "feat1").returncode == 1
    ok(tool(daemon, "qvm-remove", "-f", "it-tags"))


def test_lifecycle(daemon: Daemon, template: str) -> None:
    ok(tool(daemon, "qvm-create", "-t", template, "-l", "orange", "it-life"))
    ok(tool(daemon, "qvm-start", "it-life"))
    assert ls_rows(daemon)["it-life"][1] == "Running"
    ok(tool(daemon, "qvm-start", "it-life"))  # already running: no error
    ok(tool(daemon, "qvm-pause", "it-life"))
    assert ls_rows(daemon)["it-life"][1] == "Paused"
    ok(tool(daemon, "qvm-unpause", "it-life"))
    assert ls_rows(daemon)["it-life"][1] == "Running"
    msg = fails(tool(daemon, "qvm-remove", "-f", "it-life"), "qvm-remove")
    assert "it-life" in msg
    ok(tool(daemon, "qvm-shutdown", "--wait", "it-life"))
    assert ls_rows(daemon)["it-life"][1] == "Halted"
    ok(tool(daemon, "qvm-shutdown", "it-life"))  # halted: ignored
    ok(tool(daemon, "qvm-start", "it-life"))
    ok(tool(daemon, "qvm-kill", "it-life"))
    assert ls_rows(daemon)["it-life"][1] == "Halted"
    ok(tool(daemon, "qvm-start", "it-life"))
    ok(tool(daemon, "qvm-shutdown", "--all", "--wait", "--force"))
    rows = ls_rows(daemon)
    assert rows["it-life"][1] == "Halted" and rows["dom0"][1] == "Running"
    fails(tool(daemon, "qvm-shutdown", "dom0"), "qvm-shutdown")
    ok(tool(daemon, "qvm-remove", "-f", "it-life"))


def test_remove(daemon: Daemon, template: str) -> None:
    ok(tool(daemon, "qvm-create", "-t", template, "-l", "purple", "it-rm"))
    cancelled = tool(daemon, "qvm-remove", "it-rm", stdin=b"n\n")
    assert cancelled.returncode == 1 and "cancelled" in cancelled.stdout
    assert "it-rm" in ok(tool(daemon, "qvm-ls", "--raw-list")).split()
    ok(tool(daemon, "qvm-remove", "-f", "it-rm"))
    assert "it-rm" not in ok(tool(daemon, "qvm-ls", "--raw-list")).split()
    assert fails(tool(daemon, "qvm-remove", "-f", "it-rm"), "qvm-remove") == \
        "no such domain: 'it-rm'"
    # dom0 cannot be removed; a template in use cannot either
    fails(tool(daemon, "qvm-remove", "-f", "dom0"), "qvm-remove")
    ok(tool(daemon, "qvm-create", "-t", template, "-l", "purple", "it-user"))
    msg = fails(tool(daemon, "qvm-remove", "-f", template), "qvm-remove")
    assert template in msg


def test_state_survives_restart(daemon: Daemon, template: str) -> None:
    ok(tool(daemon, "qvm-create", "-t", template, "-l", "yellow", "it-keep"))
    ok(tool(daemon, "qvm-tags", "it-keep", "add", "kept"))
    daemon.stop()
    daemon.socket.unlink(missing_ok=True)
    daemon.start()
    assert "it-keep" in ok(tool(daemon, "qvm-ls", "--raw-list")).split()
    assert "kept" in ok(tool(daemon, "qvm-tags", "it-keep")).split()


def test_daemon_not_running(tmp_path: Path) -> None:
    env = dict(os.environ, QUBESD_SOCKET=str(tmp_path / "nothing.sock"))
    env.pop("QREXEC_VM_SOCKET", None)
    proc = subprocess.run([sys.executable, *TOOLS["qvm-ls"]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("qvm-ls: error: Failed to connect to qubesd service at "
                                  f"{tmp_path / 'nothing.sock'}")
    assert "make run" in proc.stderr and proc.stderr.count("\n") == 1
