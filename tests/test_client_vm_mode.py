"""VM mode end to end: the tools in a management VM, through the real qrexec-daemon.

qubesd and qrexec-daemon run as subprocesses; dom0 creates a template and a management VM
``mgmt`` and starts it (so qrexec-daemon creates ``run/qrexec/mgmt.sock``); then the tools
run with ``$QREXEC_VM_SOCKET`` set and no qubesd socket, so every call goes through
``qrexec-client-vm`` and the qrexec policy below.
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

POLICY = """\
admin.vm.List * mgmt @adminvm allow target=dom0
admin.vm.List * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.List * mgmt mgmt allow target=dom0
admin.label.List * mgmt @adminvm allow target=dom0
admin.vm.property.GetAll * mgmt @anyvm deny notify=no
admin.vm.property.Get * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.property.List * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.Create.AppVM * mgmt @adminvm allow target=dom0
admin.vm.tag.List * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.tag.Get * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.tag.Set * mgmt @tag:created-by-mgmt allow target=dom0
"""


def _wait_for(path: Path, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 40
    while not path.exists():
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                pytest.fail(f"{proc.args} exited with {proc.returncode}:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within 40 s:\n" + "\n".join(
                log.read_text(errors="replace")[-2000:] for log in logs))
        time.sleep(0.05)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("vmmode")
    for sub in ("lib", "run", "etc/policy.d"):
        (base / sub).mkdir(parents=True)
    (base / "etc/policy.d/30-test.policy").write_text(POLICY)
    dirs = ["--run-dir", str(base / "run"), "--config-dir", str(base / "etc")]
    procs: list[subprocess.Popen[bytes]] = []
    logs = [base / "qubesd.log", base / "qrexec.log"]
    try:
        with open(logs[0], "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "qubesd.daemon", "--state-dir", str(base / "lib"),
                 *dirs], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        _wait_for(base / "run/qubesd.sock", procs, logs)
        with open(logs[1], "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "qrexec.daemon", *dirs],
                                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        dom0 = {"QUBESD_SOCKET": str(base / "run/qubesd.sock")}
        for argv in (["qubesd.tools.qvm_create", "--class", "TemplateVM", "-l", "black", "tpl"],
                     ["qubesd.tools.qvm_create", "-t", "tpl", "-l", "red", "other"],
                     ["qubesd.tools.qvm_create", "-t", "tpl", "-l", "red", "mgmt"],
                     ["qubesd.tools.lifecycle", "qvm-start", "mgmt"]):
            res = run(argv, dom0)
            assert res.returncode == 0, res.stderr
        _wait_for(base / "run/qrexec/mgmt.sock", procs, logs)
        yield {"base": base, "vm_socket": base / "run/qrexec/mgmt.sock"}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run(argv: list[str], extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("QREXEC_VM_SOCKET", None)
    env.pop("QUBESD_SOCKET", None)
    env.update(extra_env)
    # qrexec-client-vm is found on PATH or next to sys.executable (the venv's bin)
    res = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def in_vm(system: dict[str, Path], *argv: str) -> subprocess.CompletedProcess[str]:
    return run(list(argv), {"QREXEC_VM_SOCKET": str(system["vm_socket"]),
                            # a dom0 socket that does not exist: VM mode must not use it
                            "QUBESD_SOCKET": str(system["base"] / "nowhere.sock")})


def test_vm_mode_create_list_tags(system: dict[str, Path]) -> None:
    res = in_vm(system, "qubesd.tools.qvm_create", "-t", "tpl", "-l", "green", "made")
    assert (res.returncode, res.stderr) == (0, "")
    # GetAll is denied by policy: qvm-ls falls back to per-property Get
    res = in_vm(system, "qubesd.tools.qvm_ls", "--raw-data", "-O", "name,class,label",
                "made")
    assert (res.returncode, res.stdout) == (0, "made|AppVM|green\n"), res.stderr
    res = in_vm(system, "qubesd.tools.qvm_ls", "--raw-list")
    names = res.stdout.split()
    assert "made" in names and "other" not in names, (res.stdout, res.stderr)
    res = in_vm(system, "qubesd.tools.qvm_tags", "made", "add", "mine")
    assert res.returncode == 0, res.stderr
    res = in_vm(system, "qubesd.tools.qvm_tags", "made")
    assert {"mine", "created-by-mgmt"} <= set(res.stdout.split())


def test_vm_mode_refused_call_is_one_clean_line(system: dict[str, Path]) -> None:
    res = in_vm(system, "qubesd.tools.qvm_prefs", "made", "memory", "500")
    assert res.returncode == 1
    assert res.stderr.startswith("qvm-prefs: error: ") and res.stderr.count("\n") == 1
    assert "refused" in res.stderr
