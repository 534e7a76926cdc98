"""qubes-policy end to end: the real CLI in a subprocess against a real qubesd.

The module's daemon has the default policy, a test policy file and a userdomains.yaml
with two users sharing a set and an officer; tests that change userdomains.yaml or
need a daemon without it start their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qubesd_harness import QubesdProcess

from qrexec.policy.defaults import install_default_policy

REPO = Path(__file__).resolve().parent.parent

USERDOMAINS = """\
version: 1
roles:
  owner: ["admin.vm.*", "admin.vm.property.*"]
  viewer: ["admin.vm.List", "admin.vm.property.Get"]
users:
  alice:
    management: [alice-admin]
    grants:
      - {role: owner, sets: [alice, shared]}
    create_into: alice
  bob:
    management: [bob-admin]
    grants:
      - {role: owner, sets: [bob, shared]}
      - {role: viewer, sets: [alice]}
  sec:
    management: [sys-secadmin]
    officer: true
sets:
  alice: {domains: [work]}
  bob: {domains: [bob-work]}
  shared: {domains: [dev]}
"""

TEST_POLICY = """\
admin.vm.List * alice-admin @adminvm allow target=dom0
admin.vm.List * alice-admin @anyvm allow target=dom0
admin.vm.Start * alice-admin @anyvm allow target=dom0
admin.vm.property.Get * alice-admin @anyvm allow target=dom0
admin.vm.List * bob-admin @adminvm allow target=dom0
admin.vm.Create.AppVM * alice-admin @adminvm allow target=dom0
admin.vm.property.Set * alice-admin @anyvm allow target=dom0
"""

DOMAINS = ("alice-admin", "bob-admin", "sys-secadmin", "work", "bob-work", "dev")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seed_config(root: Path, userdomains: str | None = USERDOMAINS) -> None:
    install_default_policy(root / "etc")
    (root / "etc" / "policy.d" / "30-test.policy").write_text(TEST_POLICY)
    if userdomains is not None:
        (root / "etc" / "userdomains.yaml").write_text(userdomains)


def seed_domains(q: QubesdProcess) -> None:
    q.ok("admin.property.Set", "dom0", "default_kernel", b"1.0")
    q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
    q.ok("admin.property.Set", "dom0", "default_template", b"tpl")
    for name in DOMAINS:
        q.ok("admin.vm.Create.AppVM", "dom0", "tpl", f"name={name} label=red".encode())


class Cli:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def run(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        env = dict(os.environ, QUBESD_SOCKET=str(self.socket))
        env.pop("QREXEC_VM_SOCKET", None)
        proc = subprocess.run([sys.executable, "-m", "qrexec.tools.qubes_policy", *args],
                              input=stdin, capture_output=True, cwd=REPO, env=env,
                              timeout=60, check=False)
        proc.out = proc.stdout.decode()  # type: ignore[attr-defined]
        proc.err = proc.stderr.decode()  # type: ignore[attr-defined]
        assert "Traceback" not in proc.err, proc.err
        return proc

    def ok(self, *args: str, stdin: bytes = b"") -> str:
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 0, (args, proc.err)
        assert proc.err == "", proc.err
        return proc.out

    def fail(self, *args: str, stdin: bytes = b"") -> str:
        """Require the one-line error format and exit 1; return the line."""
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 1, (args, proc.out, proc.err)
        lines = proc.err.splitlines()
        assert len(lines) == 1, proc.err
        assert lines[0].startswith("qubes-policy: error: "), proc.err
        return lines[0]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("qp") / "q"
    seed_config(root)
    q = QubesdProcess(root).start()
    seed_domains(q)
    yield q
    q.stop()


@pytest.fixture(scope="module")
def cli(daemon) -> Cli:
    return Cli(daemon.socket)


@pytest.fixture
def fresh(tmp_path):
    """A daemon of its own, for tests that change userdomains.yaml."""
    root = tmp_path / "q"
    seed_config(root)
    q = QubesdProcess(root).start()
    seed_domains(q)
    yield q
    q.stop()


# -- files: list, get, replace, remove ----------------------------------------------------

def test_list_main_and_include(cli, daemon):
    names = cli.ok("-l").splitlines()
    assert "30-test" in names and "90-admin-default" in names
    assert names == sorted(names)
    assert cli.ok() == cli.ok("--list")
    includes = cli.ok("-l", "include/").splitlines()
    assert "admin-policy-ro" in includes and "admin-policy-rwx" in includes
    assert cli.ok("--list", "--include") == cli.ok("include/") == "\n".join(includes) + "\n"


def test_get_prints_the_exact_file(cli, daemon):
    path = daemon.config_dir / "policy.d" / "30-test.policy"
    assert cli.ok("-g", "30-test") == path.read_text()
    assert cli.ok("--get", "include/admin-policy-ro") == \
        (daemon.config_dir / "policy.d/include/admin-policy-ro").read_text()
    line = cli.fail("-g", "no-such-file")
    assert line.startswith("qubes-policy: error: PolicyAdminFileNotFoundException: Not found")


def test_replace_round_trip(cli, daemon, tmp_path):
    path = daemon.config_dir / "policy.d" / "40-cli.policy"
    first = b"admin.vm.List * bob-admin @anyvm deny\n"
    assert cli.ok("-r", "40-cli", stdin=first) == ""  # new file: token `new`
    assert path.read_bytes() == first
    assert "40-cli" in cli.ok("-l").splitlines()
    assert cli.ok("-g", "40-cli") == first.decode()
    second = b"admin.vm.List * bob-admin @anyvm deny\nadmin.vm.Start * bob-admin @anyvm deny\n"
    new_file = tmp_path / "40-cli.policy"
    new_file.write_bytes(second)
    cli.ok("--replace", "40-cli", str(new_file))  # existing file: its current token
    assert path.read_bytes() == second
    cli.ok("-d", "40-cli")
    assert not path.exists()
    assert "40-cli" not in cli.ok("-l").splitlines()
    assert "PolicyAdminFileNotFoundException" in cli.fail("-d", "40-cli")


def test_replace_from_missing_file(cli, daemon, tmp_path):
    line = cli.fail("-r", "44-missing", str(tmp_path / "nope.policy"))
    assert line.startswith("qubes-policy: error: FileNotFoundError: cannot read ")
    assert not (daemon.config_dir / "policy.d" / "44-missing.policy").exists()


def test_stale_token_refused_and_nothing_changes(cli, daemon):
    path = daemon.config_dir / "policy.d" / "41-token.policy"
    old = b"admin.vm.List * bob-admin @anyvm deny\n"
    cli.ok("-r", "41-token", stdin=old)
    stale = sha(old)
    current = b"admin.vm.Start * bob-admin @anyvm deny\n"
    cli.ok("-r", "41-token", "--token", stale, stdin=current)  # the right token works
    assert path.read_bytes() == current
    line = cli.fail("-r", "41-token", "--token", stale, stdin=b"admin.vm.Kill * a b deny\n")
    assert line == "qubes-policy: error: PolicyAdminTokenException: Token mismatch"
    assert path.read_bytes() == current
    line = cli.fail("-r", "41-token", "--token", "new", stdin=b"")
    assert "PolicyAdminTokenException: File exists but token is 'new'" in line
    line = cli.fail("-d", "41-token", "--token", stale)
    assert "PolicyAdminTokenException: Token mismatch" in line
    assert path.read_bytes() == current
    assert "Unrecognized token" in cli.fail("-d", "41-token", "--token", "bogus")
    cli.ok("-d", "41-token", "--token", "any")
    assert not path.exists()


def test_include_files(cli, daemon):
    pdir = daemon.config_dir / "policy.d"
    include = b"admin.vm.List * bob-admin @anyvm deny\n"
    cli.ok("-r", "include/cli-inc", stdin=include)
    assert (pdir / "include" / "cli-inc").read_bytes() == include
    assert not (pdir / "cli-inc.policy").exists()
    assert "cli-inc" in cli.ok("-l", "include/").splitlines()
    assert "cli-inc" not in cli.ok("-l").splitlines()
    assert cli.ok("-g", "include/cli-inc") == include.decode()
    cli.ok("-r", "42-uses-inc", stdin=b"!include include/cli-inc\n")
    # still referenced: the removal does not validate, the file stays
    line = cli.fail("-d", "include/cli-inc")
    assert "PolicyAdminSyntaxException" in line
    assert (pdir / "include" / "cli-inc").exists()
    cli.ok("-d", "42-uses-inc")
    cli.ok("-d", "--include", "cli-inc")
    assert not (pdir / "include" / "cli-inc").exists()


def test_invalid_policy_refused_with_file_and_line(cli, daemon):
    pdir = daemon.config_dir / "policy.d"
    line = cli.fail("-r", "50-bad", stdin=b"admin.vm.List * alice-admin @anyvm allow\nfoo bar\n")
    assert line.startswith("qubes-policy: error: PolicyAdminSyntaxException: "
                           "Policy change validation failed:")
    assert "50-bad.policy:2" in line
    assert not (pdir / "50-bad.policy").exists()
    before = (pdir / "30-test.policy").read_bytes()
    line = cli.fail("-r", "30-test", stdin=b"admin.vm.List * alice-admin @anyvm frobnicate\n")
    assert "PolicyAdminSyntaxException" in line and "30-test.policy:1" in line
    assert (pdir / "30-test.policy").read_bytes() == before
    assert not [p.name for p in pdir.iterdir() if p.name.startswith(("!", "."))]


def test_upper_case_name_refused(cli, daemon):
    pdir = daemon.config_dir / "policy.d"
    line = cli.fail("-r", "Upper", stdin=b"")
    assert "PolicyAdminInvalidFileNameException: Invalid policy file name: Upper" in line
    assert not (pdir / "Upper.policy").exists()
    assert "30-test" in cli.ok("-l").splitlines()  # the policy still loads and lists
    cli.ok("-r", "43-after-upper", stdin=b"")  # and further changes still work
    cli.ok("-d", "43-after-upper")


def test_usage_errors(cli):
    for args, message in ((("-g",), "you need to provide a file name"),
                          (("-l", "30-test"), "--list doesn't work with a file name"),
                          (("-g", "a/b"), "invalid character"),
                          (("-g", "30-test", "extra"), "FILE is only used with -r"),
                          (("-g", "30-test", "--token", "any"), "--token is only used")):
        proc = cli.run(*args)
        assert proc.returncode == 2, (args, proc.err)
        assert message in proc.err, (args, proc.err)
    proc = cli.run("-g", "-d", "x")
    assert proc.returncode == 2 and "not allowed with" in proc.err


def test_help_has_examples(cli):
    out = cli.ok("--help")
    for word in ("-l", "-g", "-r", "-d", "explain", "audit", "who-can", "can-i",
                 "acl-replace", "examples:", "QUBESD_SOCKET", "QREXEC_VM_SOCKET"):
        assert word in out, word
    out = cli.ok("explain", "--help")
    assert "SOURCE" in out and "example:" in out and "qubes-policy explain" in out
    out = cli.ok("audit", "--help")
    assert "--result" in out and "--limit" in out


def test_daemon_not_running(tmp_path):
    line = Cli(tmp_path / "missing.sock").fail("-l")
    assert "QubesDaemonCommunicationError" in line
    assert "is the daemon running?" in line and "missing.sock" in line


# -- userdomains.yaml ----------------------------------------------------------------------

def test_acl_get_and_replace(fresh, tmp_path):
    cli = Cli(fresh.socket)
    path = fresh.config_dir / "userdomains.yaml"
    assert cli.ok("acl-get") == USERDOMAINS
    assert json.loads(cli.ok("acl-get", "--json"))["token"] == sha(USERDOMAINS.encode())
    updated = USERDOMAINS.replace("shared: {domains: [dev]}", "shared: {domains: [dev, work]}")
    new_file = tmp_path / "ud.yaml"
    new_file.write_text(updated)
    cli.ok("acl-replace", str(new_file))
    assert path.read_text() == updated
    assert fresh.ok("policy.acl.Get").partition("\n")[2] == updated
    assert "dev, work" in cli.ok("sets")  # the running snapshot changed too

    # YAML syntax error: refused with its line, nothing changes
    got_before = fresh.ok("policy.acl.Get")
    broken = updated.replace("  bob: {domains: [bob-work]}", "  bob: {domains: [bob-work\n")
    line = cli.fail("acl-replace", stdin=broken.encode())
    assert "PolicyAdminSyntaxException: Policy change validation failed:" in line
    assert "userdomains.yaml:" in line
    lineno = int(line.split("userdomains.yaml:")[1].split(":")[0])
    assert lineno >= updated.splitlines().index("  bob: {domains: [bob-work]}") + 1
    # a well-formed file naming an unknown role: refused with the grant's line
    unknown = updated.replace("{role: viewer, sets: [alice]}", "{role: nosuch, sets: [alice]}")
    line = cli.fail("acl-replace", stdin=unknown.encode())
    grant_line = updated.splitlines().index("      - {role: viewer, sets: [alice]}") + 1
    assert f"userdomains.yaml:{grant_line}" in line and "nosuch" in line
    assert fresh.ok("policy.acl.Get") == got_before
    assert path.read_text() == updated

    # stale token refused
    line = cli.fail("acl-replace", "--token", sha(USERDOMAINS.encode()), stdin=b"version: 1\n")
    assert "PolicyAdminTokenException: Token mismatch" in line
    assert path.read_text() == updated


def test_policy_change_keeps_running_users_when_file_on_disk_is_broken(fresh):
    cli = Cli(fresh.socket)
    assert fresh.call("admin.vm.List", src="alice-admin").startswith(b"0\0")
    (fresh.config_dir / "userdomains.yaml").write_text("version: 1\nusers: [\n")
    time.sleep(1.5)  # the watcher refuses the file and keeps the running users
    assert fresh.call("admin.vm.List", src="alice-admin").startswith(b"0\0")
    cli.ok("-r", "47-unrelated", stdin=b"")  # a valid, unrelated qrexec policy change
    assert fresh.call("admin.vm.List", src="alice-admin").startswith(b"0\0")


def test_acl_without_userdomains(tmp_path):
    root = tmp_path / "q"
    seed_config(root, userdomains=None)
    with QubesdProcess(root) as q:
        seed_domains(q)
        cli = Cli(q.socket)
        assert "no userdomains.yaml" in cli.fail("users")
        assert "PolicyAdminFileNotFoundException" in cli.fail("acl-get")
        cli.ok("acl-replace", stdin=USERDOMAINS.encode())  # token `new`
        assert (root / "etc" / "userdomains.yaml").read_text() == USERDOMAINS
        assert "alice-admin" in cli.ok("users")


# -- explain ---------------------------------------------------------------------------------

def test_explain_allowed(cli):
    out = cli.ok("explain", "alice-admin", "work", "admin.vm.property.Get+label")
    lines = out.splitlines()
    assert lines[0] == "alice-admin -> work: admin.vm.property.Get+label  (acting for user alice)"
    qrexec = next(line for line in lines if line.strip().startswith("qrexec policy:"))
    assert "ALLOW at " in qrexec and qrexec.endswith("30-test.policy:4")
    casbin = lines.index(next(line for line in lines if "casbin (users):" in line))
    assert "ALLOW" in lines[casbin]
    assert "userdomains.yaml:" in lines[casbin + 1] and "role owner on set alice" in lines[casbin + 1]
    assert "[p, user:alice, set:alice, admin.vm.*, allow]" in lines[casbin + 1]
    assert "  value constraint: not applicable (the call names no other domain)" in lines
    assert any(line.strip().startswith("result:") and "ALLOW - allowed by both layers" in line
               for line in lines)
    data = json.loads(cli.ok("explain", "--json", "alice-admin", "work",
                             "admin.vm.property.Get+label"))
    assert data["result"] == "allow" and data["layers"]["qrexec"]["rule"].endswith(
        "30-test.policy:4")


def test_explain_denied(cli):
    out = cli.ok("explain", "alice-admin", "bob-work", "admin.vm.Start")
    assert "ALLOW at " in out and "30-test.policy:3" in out  # qrexec lets it through
    casbin = next(line for line in out.splitlines() if "casbin (users):" in line)
    assert "DENY" in casbin
    assert "bob-work (sets: bob) is in no set where user alice may call admin.vm.Start" in out
    assert "  value constraint: not evaluated (an earlier layer denied)" in out
    assert "result:           DENY - casbin:" in out

    out = cli.ok("explain", "bob-admin", "work", "admin.vm.Start")
    assert "qrexec policy:    DENY at no matching rule" in out
    assert "casbin (users):   not evaluated (an earlier layer denied)" in out
    assert "result:           DENY - qrexec policy: deny" in out
    assert json.loads(cli.ok("explain", "--json", "bob-admin", "work",
                             "admin.vm.Start"))["result"] == "deny"

    # both layers allow, the value constraint denies: alice may not see the template
    out = cli.ok("explain", "alice-admin", "dom0", "admin.vm.Create.AppVM+tpl")
    assert "30-test.policy:6" in out
    assert "casbin (users):   ALLOW" in out
    assert "value constraint: DENY" in out and "tpl is not usable by alice-admin" in out
    assert "result:           DENY - value constraint: tpl is not usable by alice-admin" in out

    out = cli.ok("explain", "dom0", "work", "admin.vm.Start")
    assert "dom0 is trusted" in out and "ALLOW" in out


def test_explain_value_note(cli):
    out = cli.ok("explain", "alice-admin", "work", "admin.vm.property.Set+netvm")
    assert "30-test.policy:7" in out and "note: no VALUE given" in out
    assert "note:" not in cli.ok("explain", "alice-admin", "work", "admin.vm.property.Set+label")


def test_explain_judges_the_value_like_a_real_call(cli):
    out = cli.ok("explain", "alice-admin", "work", "admin.vm.property.Set+netvm", "tpl")
    assert "value constraint: DENY" in out and "tpl is not usable by alice-admin" in out
    assert "note:" not in out


def test_explain_errors(cli):
    assert "QubesVMNotFoundError" in cli.fail("explain", "nosuch", "work", "admin.vm.Start")
    assert "no such method" in cli.fail("explain", "alice-admin", "work", "admin.vm.Frob")
    assert cli.run("explain", "alice-admin", "work").returncode == 2


# -- audit --------------------------------------------------------------------------------------

def test_audit(cli, daemon):
    assert daemon.call("admin.vm.List", "dom0", src="alice-admin").startswith(b"0\0")
    assert daemon.call("admin.vm.Start", "bob-work", src="alice-admin").startswith(b"2\0")
    assert daemon.call("admin.vm.property.Get", "work", "label",
                       src="alice-admin").startswith(b"0\0")
    assert daemon.call("admin.vm.Start", "work", src="bob-admin").startswith(b"2\0")

    records = [json.loads(line) for line in
               cli.ok("audit", "--source", "alice-admin", "--json").splitlines()]
    assert [(r["method"], r["destination"], r["result"]) for r in records[-3:]] == [
        ("admin.vm.List", "dom0", "allow"), ("admin.vm.Start", "bob-work", "deny"),
        ("admin.vm.property.Get", "work", "allow")]

    out = cli.ok("audit", "--source", "alice-admin")
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "SOURCE", "USER", "METHOD", "TARGET", "RESULT", "REASON"]
    deny = next(line for line in lines if "bob-work" in line)
    assert deny.split()[2:7] == ["alice-admin", "alice", "admin.vm.Start", "bob-work", "deny"]
    assert "casbin: bob-work (sets: bob) is in no set" in deny
    assert any("admin.vm.property.Get+label" in line and "allow" in line for line in lines)

    out = cli.ok("audit", "--result", "deny", "--user", "alice")
    assert all(" deny " in line for line in out.splitlines()[1:])
    assert "bob-work" in out and "admin.vm.List " not in out

    out = cli.ok("audit", "--source", "bob-admin", "--method", "admin.vm.Start")
    assert "qrexec: no matching rule found" in out and "alice-admin" not in out

    assert len(cli.ok("audit", "--limit", "1", "--json").splitlines()) == 1
    assert cli.ok("audit", "--domain", "no-such-domain") == "no matching audit records\n"
    assert cli.run("audit", "--result", "maybe").returncode == 2


# -- reports ---------------------------------------------------------------------------------

def test_users(cli):
    lines = cli.ok("users").splitlines()
    assert lines[0].split() == ["USER", "MANAGEMENT", "GUI", "CREATE_INTO", "GRANTS"]
    alice = next(line for line in lines if line.startswith("alice "))
    assert alice.split()[:4] == ["alice", "alice-admin", "-", "alice"]
    assert alice.endswith("owner on alice, shared")
    bob = next(line for line in lines if line.startswith("bob "))
    assert bob.endswith("owner on bob, shared; viewer on alice")
    assert any(line.startswith("sec (officer)") and "sys-secadmin" in line for line in lines)
    data = json.loads(cli.ok("users", "--json"))
    assert data["sec"]["officer"] is True and data["alice"]["create_into"] == "alice"


def test_sets_and_overlap(cli):
    lines = cli.ok("sets").splitlines()
    assert lines[0].split() == ["SET", "MEMBERS", "GRANTED", "TO"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["alice"].split()[1] == "work"
    assert rows["alice"].endswith("alice(owner), bob(viewer)")
    assert rows["shared"].split(None, 2)[1:] == ["dev", "alice(owner), bob(owner)"]
    assert json.loads(cli.ok("sets", "--json")) == {"alice": ["work"], "bob": ["bob-work"],
                                                    "shared": ["dev"]}
    lines = cli.ok("overlap").splitlines()
    assert lines[0].split() == ["DOMAIN", "USERS", "SETS"]
    assert sorted(line.split(None, 1)[0] for line in lines[1:]) == ["dev", "work"]
    dev = next(line for line in lines if line.startswith("dev "))
    assert dev.split(None, 1)[1].split("  ")[0].strip() == "alice, bob"


def test_who_can(cli):
    lines = cli.ok("who-can", "dev").splitlines()
    assert lines[0].split() == ["USER", "VM", "ROLE", "EFFECT", "VIA", "METHODS"]
    assert [line.split()[:5] for line in lines[1:]] == [
        ["alice", "alice-admin", "owner", "allow", "shared"],
        ["bob", "bob-admin", "owner", "allow", "shared"]]
    lines = cli.ok("who-can", "work").splitlines()
    assert [line.split()[:5] for line in lines[1:]] == [
        ["alice", "alice-admin", "owner", "allow", "alice"],
        ["bob", "bob-admin", "viewer", "allow", "alice"]]
    assert "admin.vm.List, admin.vm.property.Get" in lines[2]
    assert cli.ok("who-can", "sys-secadmin") == "no user's grants reach sys-secadmin\n"
    assert "QubesVMNotFoundError" in cli.fail("who-can", "nosuch")


def test_can_i(cli):
    out = cli.ok("can-i", "--as", "alice-admin")
    lines = out.splitlines()
    assert lines[0] == "alice-admin: management VM of alice"
    assert "  creates into:  alice" in lines
    assert any(line.strip().startswith("allow owner on alice, shared (line ") for line in lines)
    assert lines[-1] == "  can see:       dev, work"
    out = cli.ok("can-i", "--as", "bob-admin")
    assert out.splitlines()[-1] == "  can see:       (none)"  # qrexec allows no per-VM List
    out = cli.ok("can-i", "--as", "sys-secadmin")
    assert "officer sec" in out and "yes (policy.*)" in out
    out = cli.ok("can-i", "--as", "work")
    assert out.startswith("work: work acts for no user")
    assert json.loads(cli.ok("can-i", "--json", "--as", "alice-admin"))["visible_domains"] == \
        ["dev", "work"]
    assert cli.run("can-i").returncode == 2


# -- VM mode: from the officer's VM, through qrexec-client-vm and the real qrexec-daemon ----

OFFICER_SERVICES = (
    "policy.List", "policy.Get", "policy.Replace", "policy.Remove", "policy.include.List",
    "policy.include.Get", "policy.Explain", "policy.Audit", "policy.acl.Get",
    "policy.acl.Report", "policy.acl.WhoCan", "policy.acl.CanI")


def test_vm_mode_officer_and_refused_user(tmp_path):
    root = tmp_path / "q"
    seed_config(root)
    (root / "etc/policy.d/20-officer.policy").write_text("".join(
        f"{svc} * {vm} @adminvm allow target=dom0\n"
        for svc in OFFICER_SERVICES for vm in ("sys-secadmin", "alice-admin")))
    dirs = ["--run-dir", str(root / "run"), "--config-dir", str(root / "etc")]
    with QubesdProcess(root) as q:
        seed_domains(q)
        log = open(root / "qrexec.log", "wb")  # noqa: SIM115
        qrexec = subprocess.Popen([sys.executable, "-m", "qrexec.daemon", *dirs], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            for vm in ("sys-secadmin", "alice-admin"):
                q.ok("admin.vm.Start", vm)
            deadline = time.monotonic() + 40
            sockets = [root / "run/qrexec" / f"{vm}.sock"
                       for vm in ("sys-secadmin", "alice-admin")]
            while not all(s.exists() for s in sockets):
                assert qrexec.poll() is None, (root / "qrexec.log").read_text()
                assert time.monotonic() < deadline, (root / "qrexec.log").read_text()
                time.sleep(0.05)
            officer = VmCli(sockets[0], root / "nowhere.sock")
            assert "30-test" in officer.ok("-l").splitlines()
            officer.ok("-r", "45-from-vm", stdin=b"admin.vm.List * bob-admin @anyvm deny\n")
            assert (root / "etc/policy.d/45-from-vm.policy").exists()
            assert officer.ok("-g", "45-from-vm") == "admin.vm.List * bob-admin @anyvm deny\n"
            officer.ok("-d", "45-from-vm")
            assert not (root / "etc/policy.d/45-from-vm.policy").exists()
            assert "DENY" in officer.ok("explain", "alice-admin", "bob-work", "admin.vm.Start")
            assert "alice-admin" in officer.ok("who-can", "work")
            assert officer.ok("acl-get") == USERDOMAINS
            # alice's VM passes qrexec but is no officer: the gate refuses, one clean line
            line = VmCli(sockets[1], root / "nowhere.sock").fail("-l")
            assert line.startswith("qubes-policy: error: ")
            assert line == ("qubes-policy: error: PermissionDenied: Request refused: "
                            "policy.List to dom0 (ask the security officer: qubes-policy "
                            "explain / audit)")
            # the reason is for the officer's eyes only
            audit = officer.ok("audit", "--source", "alice-admin", "--method", "policy.List")
            assert " deny " in audit.splitlines()[-1]
            assert "reserved to officers; alice-admin is not one" in audit.splitlines()[-1]
        finally:
            qrexec.terminate()
            qrexec.wait(10)
            log.close()


class VmCli(Cli):
    """The CLI with $QREXEC_VM_SOCKET set and a dom0 socket that does not exist."""

    def __init__(self, vm_socket: Path, nowhere: Path) -> None:
        super().__init__(nowhere)
        self.vm_socket = vm_socket

    def run(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        env = dict(os.environ, QUBESD_SOCKET=str(self.socket),
                   QREXEC_VM_SOCKET=str(self.vm_socket))
        proc = subprocess.run([sys.executable, "-m", "qrexec.tools.qubes_policy", *args],
                              input=stdin, capture_output=True, cwd=REPO, env=env,
                              timeout=60, check=False)
        proc.out = proc.stdout.decode()  # type: ignore[attr-defined]
        proc.err = proc.stderr.decode()  # type: ignore[attr-defined]
        assert "Traceback" not in proc.err, proc.err
        return proc
