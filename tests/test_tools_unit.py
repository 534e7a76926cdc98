"""The qvm-* tools against the tiny stand-in server (real socket, in-process main())."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from test_client_support import err, fake_qubesd, ok, serve_model

from qubesd.tools import (
    lifecycle,
    qubes_prefs,
    qubesd_query,
    qvm_create,
    qvm_features,
    qvm_ls,
    qvm_prefs,
    qvm_remove,
    qvm_tags,
)


@pytest.fixture
def model_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from serve_model(tmp_path, monkeypatch)


def run(capsys: pytest.CaptureFixture[str], main, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, errout = capsys.readouterr()
    return code, out, errout


def test_qvm_ls_default_columns(model_server, capsys) -> None:
    code, out, errout = run(capsys, qvm_ls.main)
    assert code == 0 and errout == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "CLASS", "LABEL", "TEMPLATE", "NETVM"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == ["dom0", "fedora", "sys-net", "work"]
    assert rows["work"] == ["work", "Halted", "AppVM", "blue", "fedora", "sys-net"]
    assert rows["dom0"] == ["dom0", "Running", "AdminVM", "black", "-", "-"]
    # columns are aligned
    assert len({line.index("STATE") if i == 0 else None for i, line in enumerate(lines)}) >= 1
    assert all(line[lines[0].index("STATE") - 2:lines[0].index("STATE")] == "  "
               for line in lines)


def test_qvm_ls_raw_list_and_fields(model_server, capsys) -> None:
    assert run(capsys, qvm_ls.main, "--raw-list")[1] == "dom0\nfedora\nsys-net\nwork\n"
    code, out, _ = run(capsys, qvm_ls.main, "--raw-data", "--fields", "name,memory,label",
                       "work")
    assert (code, out) == (0, "work|400|blue\n")
    assert run(capsys, qvm_ls.main, "--raw-list", "--running")[1] == "dom0\nsys-net\n"


def test_qvm_ls_getall_fallback(model_server, capsys) -> None:
    model, _ = model_server
    model.getall_refused = True
    code, out, _ = run(capsys, qvm_ls.main, "--raw-data", "-O", "name,label,netvm", "work")
    assert (code, out) == (0, "work|blue|sys-net\n")


def test_qvm_ls_unknown_vm(model_server, capsys) -> None:
    code, _, errout = run(capsys, qvm_ls.main, "nosuch")
    assert code == 1 and errout == "qvm-ls: error: no such domain: 'nosuch'\n"


def test_tools_report_daemon_not_running(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("QREXEC_VM_SOCKET", raising=False)
    monkeypatch.setenv("QUBESD_SOCKET", str(tmp_path / "gone.sock"))
    for main, argv in [(qvm_ls.main, []), (qvm_prefs.main, ["work"]),
                       (lifecycle.start_main, ["work"]), (qvm_tags.main, ["work"])]:
        code, _, errout = run(capsys, main, *argv)
        assert code == 1
        assert errout.count("\n") == 1 and ": error: Failed to connect" in errout
        assert str(tmp_path / "gone.sock") in errout and "make run" in errout


def test_qvm_prefs(model_server, capsys) -> None:
    code, out, _ = run(capsys, qvm_prefs.main, "work")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["debug", "D", "False"]
    assert "label" in out and any(line.split()[:3] == ["label", "-", "blue"] for line in lines)
    assert run(capsys, qvm_prefs.main, "work", "memory")[1] == "400\n"
    assert run(capsys, qvm_prefs.main, "work", "memory", "800")[0] == 0
    assert run(capsys, qvm_prefs.main, "work", "memory")[1] == "800\n"
    assert run(capsys, qvm_prefs.main, "work", "-D", "memory")[0] == 0
    assert run(capsys, qvm_prefs.main, "work", "memory")[1] == "400\n"
    assert run(capsys, qvm_prefs.main, "work", "netvm", "none")[0] == 0
    assert run(capsys, qvm_prefs.main, "work", "netvm")[1] == ""
    code, out, errout = run(capsys, qvm_prefs.main, "work", "nosuch")
    assert (code, errout) == (1, "qvm-prefs: error: no such property: 'nosuch'\n")
    code, out, errout = run(capsys, qvm_prefs.main, "work", "memory", "lots")
    assert (code, errout) == (1, "qvm-prefs: error: Failed to parse property value as int\n")
    code, out, _ = run(capsys, qvm_prefs.main, "work", "--help-property", "memory")
    assert code == 0 and "Help for memory." in out


def test_qubes_prefs(model_server, capsys) -> None:
    assert run(capsys, qubes_prefs.main, "default_template")[1] == "fedora\n"
    code, out, _ = run(capsys, qubes_prefs.main)
    assert code == 0 and out.splitlines()[0].split() == ["default_netvm", "-", "sys-net"]
    assert run(capsys, qubes_prefs.main, "default_netvm", "none")[0] == 0
    _, server = model_server
    assert server.requests[-1] == b"admin.property.Set+default_netvm dom0 name dom0\0"


def test_qvm_create_and_remove(model_server, capsys) -> None:
    model, server = model_server
    code, _, errout = run(capsys, qvm_create.main, "--template", "fedora", "--label", "red",
                          "-p", "memory=600", "new")
    assert (code, errout) == (0, "")
    assert b"admin.vm.Create.AppVM+fedora dom0 name dom0\0name=new label=red" in server.requests
    assert model.vms["new"]["props"]["memory"] == ("False", "int", "600")
    code, _, errout = run(capsys, qvm_create.main, "-l", "red", "new")
    assert (code, errout) == (1, "qvm-create: error: qube already exists: 'new'\n")
    code, _, errout = run(capsys, qvm_create.main, "-l", "mauve", "other")
    assert code == 1 and "unknown label 'mauve'" in errout
    code, _, errout = run(capsys, qvm_create.main, "-l", "red", "-p", "nosuch=1", "bad")
    assert code == 1 and "no such property: 'nosuch'" in errout and "removed" in errout
    assert "bad" not in model.vms
    assert run(capsys, qvm_remove.main, "-f", "new")[0] == 0
    assert "new" not in model.vms
    code, _, errout = run(capsys, qvm_remove.main, "-f", "sys-net")
    assert code == 1 and errout.startswith("qvm-remove: error: Domain is in use: 'sys-net'\n")
    assert "used by qube work: netvm" in errout


def test_qvm_remove_asks(model_server, capsys, monkeypatch) -> None:
    model, _ = model_server
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, out, _ = run(capsys, qvm_remove.main, "work")
    assert code == 1 and "Remove cancelled." in out and "work" in model.vms
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert run(capsys, qvm_remove.main, "work")[0] == 0 and "work" not in model.vms


def test_lifecycle(model_server, capsys) -> None:
    model, server = model_server
    assert run(capsys, lifecycle.start_main, "work")[0] == 0
    assert model.vms["work"]["state"] == "Running"
    assert run(capsys, lifecycle.start_main, "work")[0] == 0  # already running: fine
    assert run(capsys, lifecycle.pause_main, "work")[0] == 0
    code, _, errout = run(capsys, lifecycle.start_main, "work")
    assert code == 1 and "paused" in errout
    assert run(capsys, lifecycle.unpause_main, "work")[0] == 0
    code, _, errout = run(capsys, lifecycle.unpause_main, "work")
    assert (code, errout) == (1, "qvm-unpause: error: domain is not paused: 'work'\n")
    assert run(capsys, lifecycle.shutdown_main, "--wait", "work")[0] == 0
    assert b"admin.vm.Shutdown+wait dom0 name work\0" in server.requests
    assert run(capsys, lifecycle.shutdown_main, "work")[0] == 0  # halted: ignored
    assert run(capsys, lifecycle.kill_main, "work")[0] == 0  # halted: ignored
    assert run(capsys, lifecycle.shutdown_main, "--all", "--exclude", "sys-net")[0] == 0
    assert model.vms["sys-net"]["state"] == "Running"
    assert model.vms["dom0"]["state"] == "Running"
    assert run(capsys, lifecycle.shutdown_main, "--all", "--force")[0] == 0
    assert model.vms["sys-net"]["state"] == "Halted"
    assert b"admin.vm.Shutdown+force dom0 name sys-net\0" in server.requests


def test_qvm_tags(model_server, capsys) -> None:
    assert run(capsys, qvm_tags.main, "work", "add", "t1", "t2")[0] == 0
    assert run(capsys, qvm_tags.main, "work")[1] == "t1\nt2\n"
    assert run(capsys, qvm_tags.main, "work", "list", "t1", "t3")[:2] == (1, "t1\n")
    assert run(capsys, qvm_tags.main, "work", "del", "t1")[0] == 0
    assert run(capsys, qvm_tags.main, "work", "list")[1] == "t2\n"
    code, _, errout = run(capsys, qvm_tags.main, "work", "del", "t9")
    assert (code, errout) == (1, "qvm-tags: error: tag not set: 't9'\n")


def test_qvm_features(model_server, capsys) -> None:
    assert run(capsys, qvm_features.main, "work", "f1", "v1")[0] == 0
    assert run(capsys, qvm_features.main, "work", "longer-name", "v2")[0] == 0
    assert run(capsys, qvm_features.main, "work")[1] == "f1           v1\nlonger-name  v2\n"
    assert run(capsys, qvm_features.main, "work", "f1")[1] == "v1\n"
    assert run(capsys, qvm_features.main, "work", "nosuch") == (1, "", "")
    assert run(capsys, qvm_features.main, "work", "--unset", "f1")[0] == 0
    assert run(capsys, qvm_features.main, "work", "-D", "f1")[0] == 0  # absent: no error
    assert run(capsys, qvm_features.main, "work", "f1")[0] == 1


def test_qubesd_query(tmp_path: Path, capsysbinary, monkeypatch) -> None:
    replies = {"admin.vm.List": ok("dom0 class=AdminVM state=Running uuid=x\n"),
               "admin.no.Such": err("ProtocolError", "no such method: 'admin.no.Such'")}
    with fake_qubesd(tmp_path, lambda s, m, a, d, p: replies[m]) as server:
        code = qubesd_query.main(["-e", "-c", str(server.path), "dom0", "admin.vm.List", "dom0"])
        assert code == 0
        assert capsysbinary.readouterr().out == replies["admin.vm.List"]
        code = qubesd_query.main(["-e", "--fail", "-c", str(server.path), "mgmt",
                                  "admin.no.Such", "work", "arg"])
        assert code == 2
        assert capsysbinary.readouterr().out == replies["admin.no.Such"]
        assert server.requests[-1] == b"admin.no.Such+arg mgmt name work\0"
        code = qubesd_query.main(["-e", "--null", "-c", str(server.path), "dom0",
                                  "admin.vm.List", "dom0"])
        assert capsysbinary.readouterr().out == replies["admin.vm.List"] + b"\0"


def test_qubesd_query_not_running(tmp_path: Path, capsys) -> None:
    code = qubesd_query.main(["-e", "-c", str(tmp_path / "none.sock"), "dom0", "admin.vm.List",
                              "dom0"])
    errout = capsys.readouterr().err
    assert code == 1 and errout.startswith("qubesd-query: error: Failed to connect")


def test_help_works(capsys) -> None:
    for main in (qvm_ls.main, qvm_prefs.main, qubes_prefs.main, qvm_create.main,
                 qvm_remove.main, qvm_tags.main, qvm_features.main, qubesd_query.main,
                 lifecycle.start_main, lifecycle.shutdown_main, lifecycle.kill_main):
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
        assert "QUBESD_SOCKET" in capsys.readouterr().out
