"""Policy admin store (policy.* services, spec 5) and the default policy."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from qrexec.policy import SystemInfo, load_policy
from qrexec.policy.admin import (
    PolicyAdmin,
    PolicyAdminError,
    PolicyAdminFileNotFoundException,
    PolicyAdminInvalidFileNameException,
    PolicyAdminProtocolException,
    PolicyAdminSyntaxException,
    PolicyAdminTokenException,
    validate_change,
    validate_policy_files,
)
from qrexec.policy.defaults import ADMIN_METHODS, install_default_policy, render_default_policy


def tok(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "policy.d"
    (d / "include").mkdir(parents=True)
    return d


@pytest.fixture
def admin(pdir: Path) -> PolicyAdmin:
    return PolicyAdmin(pdir)


def test_list_get_replace_remove(admin, pdir):
    assert admin.call("policy.List", "", b"") == b""
    (pdir / "30-b.policy").write_text("svc * a b allow\n")
    (pdir / "10-a.policy").write_text("")
    (pdir / "README").write_text("x")
    assert admin.call("policy.List", "", b"") == b"10-a\n30-b\n"
    data = admin.call("policy.Get", "30-b", b"")
    assert data == tok(b"svc * a b allow\n").encode() + b"\nsvc * a b allow\n"
    admin.call("policy.Replace", "30-b", tok(b"svc * a b allow\n").encode() + b"\nnew * a b deny\n")
    assert (pdir / "30-b.policy").read_text() == "new * a b deny\n"
    assert (pdir / "30-b.policy").stat().st_mode & 0o777 == 0o664
    admin.call("policy.Replace", "40-c", b"new\n* * @anyvm @anyvm deny\n")
    admin.call("policy.Replace", "50-e", b"any\n")
    assert (pdir / "50-e.policy").read_bytes() == b""
    admin.call("policy.Remove", "40-c", b"any")
    assert not (pdir / "40-c.policy").exists()
    assert [p.name for p in pdir.iterdir() if p.name.startswith(".")] == []


def test_include_services(admin, pdir):
    assert admin.call("policy.include.List", "", b"") == b""
    admin.call("policy.include.Replace", "inc1", b"new\nanything at all, not referenced\n")
    admin.call("policy.include.Replace", "admin-x", b"new\nwork @anyvm allow target=dom0\n")
    assert admin.call("policy.include.List", "", b"") == b"admin-x\ninc1\n"
    admin.call("policy.Replace", "30-svc", b"new\n!include-service svc * include/admin-x\n")
    # now the include is checked in the context that includes it
    with pytest.raises(PolicyAdminSyntaxException) as e:
        admin.call("policy.include.Replace", "admin-x", b"any\nsvc * @anyvm @anyvm allow\n")
    assert str(e.value).startswith("Policy change validation failed: ")
    assert "invalid action: @anyvm" in str(e.value)
    with pytest.raises(PolicyAdminSyntaxException) as e:
        admin.call("policy.include.Remove", "admin-x", b"any")
    assert "including a file that will be removed" in str(e.value)
    token, content = admin.include_get("admin-x")
    assert content == b"work @anyvm allow target=dom0\n" and token == tok(content)
    admin.call("policy.include.Remove", "inc1", b"any")
    assert admin.include_list() == ["admin-x"]


@pytest.mark.parametrize("method,arg,payload,exc,msg", [
    ("policy.List", "x", b"", PolicyAdminProtocolException, "Unexpected argument"),
    ("policy.List", "", b"x", PolicyAdminProtocolException, "Unexpected payload"),
    ("policy.Get", "a", b"x", PolicyAdminProtocolException, "Unexpected payload"),
    ("policy.GetFiles", "a", b"x", PolicyAdminProtocolException, "Unexpected payload"),
    ("policy.Nope", "", b"", PolicyAdminProtocolException, "unrecognized method: policy.Nope"),
    ("policy.Get", "a/b", b"", PolicyAdminProtocolException, 'Invalid argument: "a/b"'),
    ("policy.Get", "qubes.Gpg", b"", PolicyAdminInvalidFileNameException,
     ("Invalid policy file name: qubes.Gpg\n"
      "Names must contain only alphanumeric characters, underscore and hyphen.")),
    ("policy.Get", "", b"", PolicyAdminInvalidFileNameException, "Invalid policy file name: "),
    ("policy.Get", "missing", b"", PolicyAdminFileNotFoundException, "Not found: "),
    ("policy.include.Get", "missing", b"", PolicyAdminFileNotFoundException, "Not found: "),
    ("policy.Replace", "x", b"any", PolicyAdminProtocolException,
     "Payload needs to include first line with token"),
    ("policy.Replace", "x", b"bogus\n", PolicyAdminTokenException, "Unrecognized token"),
    ("policy.Replace", "x", b"sha256:" + b"0" * 64 + b"\n", PolicyAdminTokenException,
     "File doesn't exist, but token isn't 'new'"),
    ("policy.Replace", "10-a", b"new\n", PolicyAdminTokenException,
     "File exists but token is 'new'"),
    ("policy.Replace", "10-a", b"sha256:" + b"0" * 64 + b"\n", PolicyAdminTokenException,
     "Token mismatch"),
    ("policy.Replace", "10-a", b"any\nsvc * a b nope\n", PolicyAdminSyntaxException,
     "Policy change validation failed: "),
    ("policy.Replace", "10-a", b"any\n!include include/missing\n", PolicyAdminSyntaxException,
     "not a file"),
    ("policy.Replace", "10-a", b"any\n\xff\n", PolicyAdminProtocolException, "UTF-8"),
    ("policy.Remove", "10-a", b"any\n", PolicyAdminTokenException, "Unrecognized token"),
    ("policy.Remove", "gone", b"any", PolicyAdminFileNotFoundException, "Not found: "),
    ("policy.Remove", "gone", b"new", PolicyAdminFileNotFoundException, "Not found: "),
    ("policy.GetFiles", "", b"", PolicyAdminProtocolException, "Service cannot be empty."),
    ("policy.GetFiles", "a+b", b"", PolicyAdminProtocolException,
     "Service 'a+b' contains invalid characters"),
])
def test_errors(admin, pdir, method, arg, payload, exc, msg):
    (pdir / "10-a.policy").write_text("svc * a b allow\n")
    with pytest.raises(exc) as e:
        admin.call(method, arg, payload)
    assert str(e.value).startswith(msg) or msg in str(e.value), str(e.value)
    assert isinstance(e.value, PolicyAdminError)
    assert (pdir / "10-a.policy").read_text() == "svc * a b allow\n"  # nothing changed


@pytest.mark.parametrize("name", ["Upper", "ABC", "x-Y"])
def test_replace_refuses_names_that_break_loading(admin, pdir, name):
    with pytest.raises(PolicyAdminInvalidFileNameException):
        admin.call("policy.Replace", name, b"new\n")
    assert not (pdir / f"{name}.policy").exists()
    assert load_policy([pdir]).error is None
    # include names are free (they are never scanned as policy files)
    admin.call("policy.include.Replace", name, b"new\nwhatever\n")


def test_remove_recovers_from_bad_file(admin, pdir):
    (pdir / "Upper.policy").write_text("")
    assert load_policy([pdir]).error is not None
    with pytest.raises(PolicyAdminSyntaxException):
        admin.call("policy.Replace", "10-x", b"new\n")
    admin.call("policy.Remove", "Upper", b"any")
    assert load_policy([pdir]).error is None


def test_preexisting_error_blocks_changes(admin, pdir):
    (pdir / "20-bad.policy").write_text("broken\n")
    with pytest.raises(PolicyAdminSyntaxException) as e:
        admin.call("policy.Replace", "10-x", b"new\n")
    assert "20-bad.policy:1: wrong number of fields" in str(e.value)
    admin.call("policy.Replace", "20-bad", b"any\n")  # fixing it is allowed


def test_get_files(admin, pdir, tmp_path):
    (pdir / "include" / "x").write_text("a b allow\n")
    (pdir / "10-a.policy").write_text("svc * a b allow\n* * a b deny\nother * a b deny\n")
    (pdir / "20-b.policy").write_text("other * a b deny\n!include-service svc * include/x\n")
    (pdir / "30-c.policy").write_text("svc * a b deny\n")
    assert admin.call("policy.GetFiles", "svc", b"").decode().splitlines() == [
        "10-a", str(pdir / "include" / "x"), "30-c"]
    assert admin.get_files("other") == ["10-a", "20-b"]


def test_validate_without_writing(admin, pdir):
    (pdir / "10-a.policy").write_text("svc * work other deny\n")
    snap = validate_policy_files(pdir, main={"10-a": b"svc * work other allow\n"})
    si = SystemInfo.from_json({"domains": {"work": {}, "other": {}}})
    assert snap.error is None
    assert snap.evaluate("svc", "", "work", "other", si).result == "allow"
    assert (pdir / "10-a.policy").read_text() == "svc * work other deny\n"
    bad = validate_policy_files(pdir, main={"10-a": b"nope\n"})
    assert bad.error == f"{pdir}/10-a.policy:1: wrong number of fields"
    with pytest.raises(PolicyAdminSyntaxException):
        validate_change(pdir, main={"10-a": b"nope\n"})
    with pytest.raises(PolicyAdminInvalidFileNameException):
        validate_change(pdir, main={"Bad": b""})
    gone = validate_policy_files(pdir, main={"10-a": None})
    assert gone.error is None and len(gone.rules) == 0
    # with a runtime dir shadowing, as a live snapshot
    run = pdir.parent / "run"
    run.mkdir()
    (run / "10-a.policy").write_text("svc * work other ask\n")
    live = validate_policy_files(pdir, main={"10-a": b"svc * work other allow\n"},
                                 extra_dirs=(run,))
    assert live.evaluate("svc", "", "work", "other", si).result == "ask"


def test_concurrent_replace_same_token_one_wins(admin, pdir):
    (pdir / "10-a.policy").write_text("svc * a b deny\n")
    token = tok(b"svc * a b deny\n").encode()
    n = 8
    barrier = threading.Barrier(n)
    results: list[str] = []

    def worker(i: int) -> None:
        other = PolicyAdmin(pdir) if i % 2 else admin  # separate objects share the lock
        barrier.wait()
        try:
            other.call("policy.Replace", "10-a", token + f"\nsvc * a b allow user=u{i}\n".encode())
            results.append(f"ok{i}")
        except PolicyAdminTokenException:
            results.append("mismatch")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("ok")]
    assert len(winners) == 1 and results.count("mismatch") == n - 1
    assert (pdir / "10-a.policy").read_text() == f"svc * a b allow user=u{winners[0][2:]}\n"


def test_on_change_callback(pdir):
    calls = []
    admin = PolicyAdmin(pdir, on_change=lambda: calls.append(1))
    admin.call("policy.Replace", "10-a", b"new\n")
    admin.call("policy.Remove", "10-a", b"any")
    assert len(calls) == 2


# --- default policy ------------------------------------------------------------------------

def test_shipped_default_policy_matches_rendered():
    shipped = Path(__file__).resolve().parent.parent / "policies" / "policy.d"
    for rel, text in render_default_policy().items():
        assert (shipped / rel).read_text() == text, rel


def test_install_default_policy(tmp_path):
    assert install_default_policy(tmp_path / "conf") is True
    pd = tmp_path / "conf" / "policy.d"
    assert install_default_policy(tmp_path / "conf") is False
    snap = load_policy([pd])
    assert snap.error is None, snap.error
    si = SystemInfo.from_json({"domains": {"dom0": {"type": "AdminVM"},
                                           "mgmt": {"type": "AppVM"},
                                           "work": {"type": "AppVM", "tags": ["managed"]}}})
    # everything denied by default
    for m in ("admin.vm.List", "admin.vm.Start", "policy.Replace", "qubes.Filecopy"):
        assert snap.evaluate(m, "", "mgmt", "work", si).result == "deny"
    gall = snap.evaluate("admin.vm.property.GetAll", "", "mgmt", "work", si)
    assert gall.result == "deny" and gall.notify is False
    # rwx grants imply ro, scoped per method
    admin = PolicyAdmin(pd)
    admin.call("policy.include.Replace", "admin-local-rwx",
               b"any\nmgmt @tag:managed allow target=dom0\n")
    admin.call("policy.include.Replace", "admin-global-ro",
               b"any\n!include include/admin-global-rwx\nmgmt @adminvm allow target=dom0\n"
               b"mgmt @tag:managed allow target=dom0\n")
    snap = load_policy([pd])
    assert snap.error is None
    ok = [m for m in ("admin.vm.Start", "admin.vm.property.Get", "admin.vm.tag.Set",
                      "admin.vm.List", "admin.vm.Remove", "admin.vm.Create.AppVM")
          if snap.evaluate(m, "", "mgmt", "work", si).result == "allow"]
    assert ok == ["admin.vm.Start", "admin.vm.property.Get", "admin.vm.tag.Set",
                  "admin.vm.List"]
    assert snap.evaluate("admin.vm.List", "", "mgmt", "dom0", si).result == "allow"
    assert snap.evaluate("policy.List", "", "mgmt", "dom0", si).result == "deny"


def test_admin_method_scopes():
    assert ADMIN_METHODS["admin.vm.List"] == ("global", "ro")
    assert ADMIN_METHODS["admin.vm.Start"] == ("local", "rwx")
    assert ADMIN_METHODS["admin.vm.Console"] == ("local", "rwx")
    assert ADMIN_METHODS["admin.vm.property.Get"] == ("local", "ro")
    assert ADMIN_METHODS["admin.property.Set"] == ("global", "rwx")
    assert ADMIN_METHODS["admin.backup.Info"] == ("local", "ro")
    assert ADMIN_METHODS["admin.vm.device.pci.Attach"] == ("local", "rwx")
