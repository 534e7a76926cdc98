"""The gate in process, on real files: what the socket tests cannot reach cheaply."""

import pytest

from qubesd.daemon import Daemon
from qubesd.dispatch import Call
from qubesd.exc import PermissionDenied
from qubesd.gate import Gate
from qubesd.model.vm import AppVM, TemplateVM
from qubesd.registry import REGISTRY
from qubesd.store import open_store


@pytest.fixture
def daemon(tmp_path):
    policy = tmp_path / "etc" / "policy.d"
    policy.mkdir(parents=True)
    (policy / "30-mgmt.policy").write_text(
        "admin.vm.property.Get * mgmt @anyvm allow target=dom0\n")
    d = Daemon(tmp_path / "lib", tmp_path / "run", tmp_path / "etc")
    d.committer = open_store(d.app, d.state_dir / "qubes.xml")
    d.app.change_listeners.append(d._invalidate)
    d.app.add_new_vm(TemplateVM, "tpl", "black")
    for name in ("mgmt", "work"):
        d.app.add_new_vm(AppVM, name, "red", template="tpl")
    d.gate = Gate(d)
    return d


def call(d: Daemon, src: str, method: str, dest: str, arg: str = "") -> Call:
    return Call(d, REGISTRY.get(method), d.app.domains[src], d.app.domains[dest], arg, b"",
                None)


def test_allowed_call_is_audited(daemon):
    daemon.gate.authorize(call(daemon, "mgmt", "admin.vm.property.Get", "work", "label"))
    assert '"result":"allow"' in (daemon.state_dir / "audit.log").read_text()


def test_unwritable_audit_log_fails_closed(daemon):
    daemon.gate.audit.close()
    with pytest.raises(PermissionDenied, match="audit log cannot be written"):
        daemon.gate.authorize(call(daemon, "mgmt", "admin.vm.property.Get", "work", "label"))


def test_memoised_verdict_follows_domain_changes(daemon):
    """A cached allow must not outlive the state it was computed on."""
    (daemon.config_dir / "policy.d" / "20-tagged.policy").write_text(
        "admin.vm.property.Get * mgmt @tag:locked deny\n")
    daemon.gate.rebuild("test")
    get = lambda: daemon.gate.decide(
        daemon.app.domains["mgmt"], REGISTRY.get("admin.vm.property.Get"),
        daemon.app.domains["work"], "label", b"")
    assert get().allowed
    daemon.app.domains["work"].add_tag("locked")
    assert not get().allowed
    daemon.app.domains["work"].remove_tag("locked")
    assert get().allowed
