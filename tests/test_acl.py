"""Casbin layer semantics: grants, deny override, global object, officers, GUI VMs,
listings and reports."""

from __future__ import annotations

import pytest

import acl
import userdomains
from acl import Authorizer

CONFIG = """\
roles:
  owner: [admin.vm.*, admin.label.List]
  operator: [admin.vm.Start, admin.vm.Shutdown, admin.vm.List]
  viewer: [admin.vm.List, admin.vm.property.Get]
  destroy: [admin.vm.Remove, admin.vm.Kill]
  gui: [admin.vm.List, admin.vm.Start, admin.Events]
  everything: ['*']
users:
  alice:
    management: [alice-admin]
    gui: [sys-gui-alice]
    grants:
      - {role: owner, sets: [alice, shared]}
      - {role: viewer, sets: [infra]}
    create_into: alice
  bob:
    management: [bob-admin]
    gui: [sys-gui-bob]
    grants:
      - {role: owner, sets: [bob, shared]}
      - {role: destroy, sets: [shared], effect: deny}
    create_into: bob
  carol:
    management: [carol-admin]
    grants:
      - {role: everything, sets: [infra]}
      - {role: viewer, sets: [infra], effect: deny}
  sec:
    management: [sys-secadmin]
    gui: [sys-gui-sec]
    officer: true
  sec2:
    management: [sec2-admin]
    officer: true
    grants:
      - {role: operator, sets: [infra]}
sets:
  alice: {domains: [work, personal], tags: [owner-alice]}
  bob: {domains: [bob-work]}
  shared: {domains: [dev, build]}
  infra: {domains: [sys-net, sys-firewall]}
"""


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return Authorizer(userdomains.parse(CONFIG, source="ud.yaml"))


def allowed(a: Authorizer, src: str, method: str, dest: str | None, tags: tuple = ()) -> bool:
    return a.decide(src, method, dest, tags).allowed


def test_grants_on_own_and_shared_sets(authz: Authorizer) -> None:
    assert allowed(authz, "alice-admin", "admin.vm.Start", "work")
    assert allowed(authz, "alice-admin", "admin.vm.property.Set", "dev")
    assert allowed(authz, "bob-admin", "admin.vm.Start", "dev")
    assert not allowed(authz, "alice-admin", "admin.vm.Start", "bob-work")
    assert not allowed(authz, "bob-admin", "admin.vm.Start", "work")
    assert not allowed(authz, "alice-admin", "admin.vm.Start", "unlisted")
    # viewer on infra: read yes, write no
    assert allowed(authz, "alice-admin", "admin.vm.property.Get", "sys-net")
    assert not allowed(authz, "alice-admin", "admin.vm.property.Set", "sys-net")


def test_membership_by_tag_and_creator(authz: Authorizer) -> None:
    assert allowed(authz, "alice-admin", "admin.vm.Start", "x", ("owner-alice",))
    assert allowed(authz, "alice-admin", "admin.vm.Kill", "new", ("created-by-alice-admin",))
    assert not allowed(authz, "bob-admin", "admin.vm.Kill", "new", ("created-by-alice-admin",))
    assert allowed(authz, "bob-admin", "admin.vm.Kill", "new", ("created-by-bob-admin",))


def test_deny_overrides_allow(authz: Authorizer) -> None:
    d = authz.decide("bob-admin", "admin.vm.Remove", "dev", ())
    assert not d.allowed
    assert "deny" in d.reason and "ud.yaml:" in d.reason
    assert d.rows and "p, deny:bob, set:shared, admin.vm.Remove, deny" in d.rows[0]
    # the deny role does not cover Start, so the owner grant still applies there
    assert allowed(authz, "bob-admin", "admin.vm.Start", "dev")
    # deny on shared wins even when the domain is also in bob's own set
    assert allowed(authz, "bob-admin", "admin.vm.Kill", "bob-work")
    assert not allowed(authz, "bob-admin", "admin.vm.Kill", "dev", ("created-by-bob-admin",))
    # alice is not affected by bob's deny
    assert allowed(authz, "alice-admin", "admin.vm.Remove", "dev")
    # carol: '*' allowed on infra, but viewer methods denied there
    assert allowed(authz, "carol-admin", "admin.vm.Start", "sys-net")
    assert not allowed(authz, "carol-admin", "admin.vm.property.Get", "sys-net")


def test_global_object(authz: Authorizer) -> None:
    assert allowed(authz, "alice-admin", "admin.vm.Create.AppVM", None)
    assert allowed(authz, "alice-admin", "admin.label.List", None)
    assert not allowed(authz, "alice-admin", "admin.label.Create", None)
    # a deny grant whose role covers the method closes the global object too
    assert not allowed(authz, "carol-admin", "admin.vm.List", None)
    assert allowed(authz, "carol-admin", "admin.label.Create", None)  # '*' and no deny
    d = authz.decide("alice-admin", "admin.property.Set", None)
    assert not d.allowed and "no allow grant" in d.reason


def test_officers(authz: Authorizer) -> None:
    for m in ("policy.List", "policy.Replace", "policy.acl.Replace", "policy.Explain"):
        assert allowed(authz, "sys-secadmin", m, None)
        assert allowed(authz, "sec2-admin", m, None)
        for other in ("alice-admin", "carol-admin", "sys-gui-alice", "sys-gui-sec", "nobody"):
            d = authz.decide(other, m, None)
            assert not d.allowed, (other, m)
    # carol's '*' role does not reach policy.*
    assert "reserved to officers" in authz.decide("carol-admin", "policy.List", None).reason
    # officers have no Admin API rights unless granted
    assert not allowed(authz, "sys-secadmin", "admin.vm.List", None)
    assert not allowed(authz, "sys-secadmin", "admin.vm.Start", "work")
    assert allowed(authz, "sec2-admin", "admin.vm.Start", "sys-net")
    assert not allowed(authz, "sec2-admin", "admin.vm.Start", "work")


def test_gui_vm_only_gui_role_on_displayed(authz: Authorizer) -> None:
    shown = ("guivm-sys-gui-alice",)
    assert allowed(authz, "sys-gui-alice", "admin.vm.Start", "anything", shown)
    assert allowed(authz, "sys-gui-alice", "admin.vm.List", None)
    assert allowed(authz, "sys-gui-alice", "admin.Events", None)
    # never with the user's grants: alice owns `work`, her GUI VM does not
    assert not allowed(authz, "sys-gui-alice", "admin.vm.Start", "work")
    assert not allowed(authz, "sys-gui-alice", "admin.vm.Kill", "work", shown)
    assert not allowed(authz, "sys-gui-alice", "admin.vm.Create.AppVM", None)
    # not what another GUI VM displays
    assert not allowed(authz, "sys-gui-alice", "admin.vm.Start", "x", ("guivm-sys-gui-bob",))
    # the user's deny grants do bind the GUI VM
    d = authz.decide("sys-gui-bob", "admin.vm.Start", "dev", ("guivm-sys-gui-bob",))
    assert d.allowed  # destroy role does not cover Start
    gui_deny = Authorizer(
        userdomains.parse(
            CONFIG.replace(
                "{role: destroy, sets: [shared], effect: deny}",
                "{role: operator, sets: [shared], effect: deny}",
            )
        )
    )
    assert not allowed(gui_deny, "sys-gui-bob", "admin.vm.Start", "dev", ("guivm-sys-gui-bob",))
    assert allowed(gui_deny, "sys-gui-bob", "admin.vm.Start", "bob-work", ("guivm-sys-gui-bob",))


def test_unknown_vm_and_bad_method(authz: Authorizer) -> None:
    d = authz.decide("nobody", "admin.vm.List", None)
    assert not d.allowed and "acts for no user" in d.reason
    assert not allowed(authz, "dom0", "admin.vm.List", None)  # dom0 is the gate's business
    assert not allowed(authz, "alice-admin", "admin.vm.Start/../x", "work")


def test_dot_is_literal_in_patterns() -> None:
    # The keyMatch/regexMatch pitfalls (platform-notes 4.3) must not exist here.
    a = Authorizer(
        userdomains.parse(
            "roles: {r: [admin.vm.Start, 'admin.*.Start', admin.vm.property.*]}\n"
            "users: {u: {management: [v], grants: [{role: r, sets: [s]}]}}\n"
            "sets: {s: {domains: [d]}}\n"
        )
    )
    assert allowed(a, "v", "admin.vm.Start", "d")
    assert not allowed(a, "v", "adminXvmXStart", "d")
    assert not allowed(a, "v", "admin.vm.StartX", "d")
    assert not allowed(a, "v", "admin.vm.Kill", "d")  # keyMatch would say yes
    assert allowed(a, "v", "admin.vm.property.Set", "d")
    assert not allowed(a, "v", "admin.vm.propertyX", "d")


def test_visible_is_a_filter(authz: Authorizer) -> None:
    domains = [
        ("work", ()), ("dev", ()), ("bob-work", ()), ("sys-net", ()), ("x", ("owner-alice",)),
        ("y", ("guivm-sys-gui-alice",)), ("z", ("created-by-alice-admin",)),
    ]
    assert authz.visible("alice-admin", "admin.vm.List", domains) == [
        "work", "dev", "sys-net", "x", "z",
    ]
    assert authz.visible("bob-admin", "admin.vm.Remove", domains) == ["bob-work"]
    assert authz.visible("sys-gui-alice", "admin.vm.List", domains) == ["y"]
    assert authz.visible("nobody", "admin.vm.List", domains) == []
    assert authz.visible("carol-admin", "admin.vm.List", domains) == []  # denied viewer


def test_who_can_and_overlap(authz: Authorizer) -> None:
    who = authz.who_can("dev", ("guivm-sys-gui-alice",))
    entries = {(a.user, a.vm, a.role, a.effect) for a in who}
    assert ("alice", "alice-admin", "owner", "allow") in entries
    assert ("bob", "bob-admin", "owner", "allow") in entries
    assert ("bob", "bob-admin", "destroy", "deny") in entries
    assert ("alice", "sys-gui-alice", "gui", "allow") in entries
    assert not any(a.vm == "sys-gui-bob" and a.effect == "allow" for a in who)
    user, vm, role, methods = who[0][:4]
    assert (user, vm, role) == (who[0].user, who[0].vm, who[0].role)
    assert isinstance(methods, tuple)

    assert authz.shared_sets() == {
        "shared": ("alice", "bob"), "infra": ("alice", "carol", "sec2"),
    }
    report = authz.overlap_report([("dev", ()), ("work", ()), ("n", ("owner-alice",))])
    assert report == [acl.Overlap("dev", ("alice", "bob"), ("shared",))]
    # a domain can overlap through a tag as well
    report = authz.overlap_report([("bob-work", ("owner-alice",))])
    assert report[0].users == ("alice", "bob") and report[0].sets == ("alice", "bob")


def test_can_i(authz: Authorizer) -> None:
    me = authz.can_i("alice-admin")
    assert me["user"] == "alice" and me["kind"] == "management" and not me["officer"]
    assert [g["role"] for g in me["grants"]] == ["owner", "viewer"]
    assert me["create_into"] == "alice"
    gui = authz.can_i("sys-gui-bob")
    assert gui["kind"] == "gui"
    assert [(g["role"], g["effect"]) for g in gui["grants"]] == [
        ("gui", "allow"), ("destroy", "deny"),
    ]
    assert authz.can_i("sys-secadmin")["policy"] is True
    assert authz.can_i("nobody")["user"] is None


def test_fail_closed() -> None:
    f = acl.FailClosedAuthorizer("ud.yaml:3: bad")
    d = f.decide("alice-admin", "admin.vm.List", None)
    assert not d.allowed and "ud.yaml:3" in d.reason
    assert f.visible("alice-admin", "admin.vm.List", [("a", ())]) == []


def test_adapter_lines_and_readonly() -> None:
    snap = userdomains.parse(CONFIG)
    lines = acl.policy_lines(snap)
    assert ("p", "user:alice", "set:alice", "admin.vm.*", "allow") in lines
    assert ("p", "deny:bob", "set:shared", "admin.vm.Remove", "deny") in lines
    assert ("p", "guivm:sys-gui-alice", "displayed:sys-gui-alice", "admin.Events", "allow") in lines
    assert ("p", "@officer", "@global", "policy.*", "allow") in lines
    assert ("g", "sys-secadmin", "@officer") in lines
    assert ("g", "sys-gui-alice", "user:alice") not in lines
    assert len(lines) == len(set(lines))
    adapter = acl.SnapshotAdapter(snap, [("n", ("created-by-alice-admin",))])
    csv = adapter.to_csv()
    assert "g2, n, set:alice\n" in csv and "g2, @global, set:infra\n" in csv
    e = acl.new_enforcer(snap, [("n", ("created-by-alice-admin",))])
    assert e.enforce("alice-admin", "n", "admin.vm.Start")
    with pytest.raises(NotImplementedError):
        e.add_policy("user:mallory", "set:alice", "*", "allow")


def test_decision_is_reused_safely_across_methods(authz: Authorizer) -> None:
    # method-level caches must not leak one method's answer to another
    for _ in range(3):
        assert allowed(authz, "bob-admin", "admin.vm.Start", "dev")
        assert not allowed(authz, "bob-admin", "admin.vm.Remove", "dev")


def test_may_reference(authz: Authorizer) -> None:
    assert authz.may_reference("alice-admin", "sys-firewall").allowed  # viewer on infra
    assert authz.may_reference("alice-admin", "dev").allowed
    d = authz.may_reference("alice-admin", "bob-work")
    assert not d.allowed and "may not use bob-work" in d.reason
    assert authz.may_reference("sys-gui-alice", "x", ["guivm-sys-gui-alice"]).allowed
    assert not authz.may_reference("sys-gui-alice", "work").allowed
