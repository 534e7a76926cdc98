"""Issue items 5, 6 and 11: attacks through the real sockets, each proving it changed
nothing (qubes.xml bytes, power and libvirt state, policy file bytes, and a dom0
``admin.Events`` stream opened before the attack that sees only
``connection-established``).

Identity-sensitive attacks go through ``qrexec-client-vm`` on the attacker's
per-domain socket (``run/qrexec/<vm>.sock``); a refusal is either the qrexec layer's
(exit 126) or qubesd's ``PermissionDenied`` relayed by qrexec (exit 0,
``2\\0PermissionDenied\\0...``). The world is the demo (alice, bob, officer sec) plus
bob's private template ``bob-tpl``, disposable template ``bob-dvm``, net VM ``bob-net``
and ``bob-gui-app`` (shown by sys-gui-bob); bob-work is running.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest
from multiuser_harness import (
    CLIENT,
    assert_unchanged,
    only_connection_established,
    start_world,
    stop_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(Path(tmp_path_factory.mktemp("mu-attacks")))
    try:
        yield w
    finally:
        stop_world(w)


@contextlib.contextmanager
def nothing_changes(world):
    before = world.snapshot()
    with world.events() as stream:
        yield
        evs = stream.settle(0.15)
    assert only_connection_established(evs), f"events fired: {evs}"
    assert_unchanged(before, world.snapshot())


def refused(result: subprocess.CompletedProcess) -> bool:
    """Refused by the qrexec layer (126) or by qubesd's gate (PermissionDenied)."""
    if result.returncode == 126:
        return True
    return result.returncode == 0 and result.stdout.startswith(b"2\0PermissionDenied\0")


def attack(world, src: str, target: str, service: str, payload: bytes = b"") -> None:
    with nothing_changes(world):
        result = world.vm(src, target, service, payload)
    assert refused(result), (src, target, service, result)


def uuid_of(world, name: str) -> str:
    for line in world.ok("admin.vm.List").splitlines():
        if line.split(" ")[0] == name:
            return line.rsplit("uuid=", 1)[1]
    raise KeyError(name)


# -- alice's management VM on bob's domains (lifecycle, removal, tags, reads, events) ------

def test_alice_cannot_start_bobs_domain(world):
    attack(world, "alice-admin", "bob-personal", "admin.vm.Start")


def test_alice_cannot_shut_down_bobs_domain(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.Shutdown+force")


def test_alice_cannot_kill_bobs_domain(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.Kill")


def test_alice_cannot_pause_bobs_domain(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.Pause")


def test_alice_cannot_remove_bobs_domain(world):
    attack(world, "alice-admin", "bob-personal", "admin.vm.Remove")


def test_alice_cannot_retag_bobs_domain_into_her_set(world):
    attack(world, "alice-admin", "bob-personal", "admin.vm.tag.Set+owner-alice")


def test_alice_cannot_remove_bobs_ownership_tag(world):
    attack(world, "alice-admin", "bob-dvm", "admin.vm.tag.Remove+owner-bob")


def test_alice_cannot_read_bobs_property(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.property.Get+netvm")


def test_alice_cannot_read_all_of_bobs_properties(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.property.GetAll")


def test_alice_cannot_read_bobs_state_or_features(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.CurrentState")
    attack(world, "alice-admin", "bob-work", "admin.vm.feature.List")


def test_alice_cannot_change_bobs_properties(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.property.Set+label", b"red")


def test_alice_cannot_follow_events_of_bobs_domain(world):
    attack(world, "alice-admin", "bob-work", "admin.Events")


def test_alice_cannot_follow_stats_of_bobs_domain(world):
    attack(world, "alice-admin", "bob-work", "admin.vm.Stats")


# -- value constraints: alice's own domains pointing at bob's (item 5) -----------------

@pytest.mark.parametrize("vm, prop, value", [
    ("work", "netvm", b"bob-net"),
    ("personal", "template", b"bob-tpl"),
    ("work", "default_dispvm", b"bob-dvm"),
    ("work", "guivm", b"sys-gui-bob"),
    ("work", "audiovm", b"sys-gui-bob"),
    ("work", "management_dispvm", b"bob-dvm"),
    ("dev", "netvm", b"bob-net"),  # a shared domain: alice owns it too
])
def test_alice_cannot_point_her_domain_at_bobs(world, vm, prop, value):
    attack(world, "alice-admin", vm, f"admin.vm.property.Set+{prop}", value)


def test_value_constraint_is_not_bypassed_by_uuid(world):
    value = f"uuid:{uuid_of(world, 'bob-net')}".encode()
    attack(world, "alice-admin", "work", "admin.vm.property.Set+netvm", value)


def test_value_constraint_positive_control(world):
    """The same call with a domain alice may use succeeds (so the refusals above are
    the constraint, not a broken call); it is set back afterwards."""
    result = world.vm("alice-admin", "work", "admin.vm.property.Set+netvm", b"sys-net")
    assert (result.returncode, result.stdout) == (0, b"0\0"), result
    assert world.ok("admin.vm.property.Get", "work", "netvm").endswith(" sys-net")
    world.ok("admin.vm.property.Reset", "work", "netvm")


@pytest.mark.parametrize("service", ["admin.vm.Create.AppVM+bob-tpl",
                                     "admin.vm.CreateInPool.AppVM+bob-tpl",
                                     "admin.vm.Create.DispVM+bob-dvm"])
def test_alice_cannot_create_from_bobs_template(world, service):
    attack(world, "alice-admin", "dom0", service, b"name=stolen label=red")
    assert "stolen" not in world.domain_names()


def test_alice_cannot_create_disposable_from_bobs_disposable_template(world):
    attack(world, "alice-admin", "bob-dvm", "admin.vm.CreateDisposable")


def test_alice_cannot_create_disposable_when_her_default_dispvm_is_bobs(world):
    """dom0 (not alice) sets alice-admin's default_dispvm to bob-dvm: a CreateDisposable
    on dom0 names it implicitly and must still be refused."""
    world.ok("admin.vm.property.Set", "alice-admin", "default_dispvm", b"bob-dvm")
    try:
        attack(world, "alice-admin", "dom0", "admin.vm.CreateDisposable")
    finally:
        world.ok("admin.vm.property.Reset", "alice-admin", "default_dispvm")


@pytest.mark.parametrize("service, prop, value, default", [
    ("admin.vm.Create.AppVM", "default_template", b"bob-tpl", b"debian-12-xfce"),
    ("admin.vm.Create.DispVM", "default_dispvm", b"bob-dvm", b"default-dvm"),
])
def test_alice_cannot_create_from_bobs_template_as_the_system_default(world, service, prop,
                                                                      value, default):
    """dom0 makes bob's private (disposable) template the system default; alice's Create
    without a template argument would be based on it, a domain she may not use. The
    value constraint has to cover the implicit template too."""
    world.ok("admin.property.Set", "dom0", prop, value)
    try:
        attack(world, "alice-admin", "dom0", service, b"name=implicit-stolen label=red")
    finally:
        world.ok("admin.property.Set", "dom0", prop, default)
        if "implicit-stolen" in world.domain_names():
            world.ok("admin.vm.Remove", "implicit-stolen")


# -- ownership tags (item 6) --------------------------------------------------------------

@pytest.mark.parametrize("vm, service", [
    ("work", "admin.vm.tag.Set+created-by-alice-admin"),
    ("work", "admin.vm.tag.Set+created-by-bob-admin"),
    ("work", "admin.vm.tag.Remove+created-by-dom0"),
    ("dev", "admin.vm.tag.Set+created-by-alice-admin"),
])
def test_alice_cannot_set_or_remove_created_by_tags(world, vm, service):
    attack(world, "alice-admin", vm, service)


# -- uuid: references to bob's domains ---------------------------------------------------

@pytest.mark.parametrize("service, payload", [
    ("admin.vm.Start", b""),
    ("admin.vm.property.Set+label", b"red"),
    ("admin.vm.property.Get+label", b""),
    ("admin.vm.tag.Set+owner-alice", b""),
])
def test_alice_cannot_reach_bobs_domain_by_uuid(world, service, payload):
    target = f"uuid:{uuid_of(world, 'bob-personal')}"
    attack(world, "alice-admin", target, service, payload)


# -- policy.* without being an officer; the officer without grants (item 7) --------------

@pytest.mark.parametrize("src", ["alice-admin", "sys-gui-alice", "work"])
@pytest.mark.parametrize("service, payload", [
    ("policy.List", b""),
    ("policy.Replace+00-pwned", b"any\nadmin.vm.Start * @anyvm @anyvm allow target=dom0\n"),
    ("policy.Remove+30-demo-multiuser", b"any"),
    ("policy.acl.Get", b""),
])
def test_non_officer_cannot_call_policy_services(world, src, service, payload):
    attack(world, src, "dom0", service, payload)


def test_non_officer_cannot_replace_userdomains(world):
    current = (world.config_dir / "userdomains.yaml").read_text()
    evil = current.replace("management: [sys-secadmin]",
                           "management: [sys-secadmin, alice-admin]")
    assert evil != current
    attack(world, "alice-admin", "dom0", "policy.acl.Replace", b"any\n" + evil.encode())


def test_non_officer_refused_by_the_gate_too(world):
    """Past the qrexec daemon (direct on qubesd.sock), the gate still refuses."""
    with nothing_changes(world):
        reply = world.q("policy.Replace", "dom0", "00-pwned",
                        b"any\nadmin.vm.Start * @anyvm @anyvm allow target=dom0\n",
                        src="alice-admin")
    assert reply.startswith(b"2\0PermissionDenied\0"), reply


@pytest.mark.parametrize("service, target", [
    ("admin.vm.Start", "bob-personal"),
    ("admin.vm.Start", "personal"),
    ("admin.vm.Create.AppVM+debian-12-xfce", "dom0"),
])
def test_officer_cannot_start_or_create_without_a_grant(world, service, target):
    payload = b"name=officer-made label=red" if "Create" in service else b""
    attack(world, "sys-secadmin", target, service, payload)


# -- a GUI domain only displays (item 6) ---------------------------------------------------

@pytest.mark.parametrize("service, payload", [
    ("admin.vm.property.Set+label", b"red"),
    ("admin.vm.property.Set+netvm", b""),
    ("admin.vm.property.Set+guivm", b""),
    ("admin.vm.property.Reset+guivm", b""),
    ("admin.vm.tag.Set+owner-bob", b""),
    ("admin.vm.tag.Remove+guivm-sys-gui-alice", b""),
    ("admin.vm.feature.Set+gui", b"0"),
    ("admin.vm.Remove", b""),
    ("admin.vm.Kill", b""),
])
def test_gui_domain_cannot_change_domains_it_displays(world, service, payload):
    target = "personal" if service in ("admin.vm.Remove",) else "work"
    if service == "admin.vm.Remove":
        target = "personal"
    attack(world, "sys-gui-alice", target, service, payload)


def test_gui_domain_cannot_use_its_users_management_grants(world):
    # dev is alice's (shared-dev) but not displayed by sys-gui-alice
    attack(world, "sys-gui-alice", "dev", "admin.vm.Start")
    attack(world, "sys-gui-alice", "dom0", "admin.vm.Create.AppVM+debian-12-xfce",
           b"name=gui-made label=red")


def test_other_users_gui_domain_cannot_start_alices_domains(world):
    attack(world, "sys-gui-bob", "personal", "admin.vm.Start")


# -- naming another source in the request: the socket decides who calls ------------------

def _alice_view(world) -> bytes:
    result = world.vm("alice-admin", "dom0", "admin.vm.List")
    assert result.returncode == 0 and result.stdout.startswith(b"0\0"), result
    return result.stdout


def test_spoofed_environment_still_acts_as_alice(world):
    env = dict(os.environ, QREXEC_VM_SOCKET=str(world.vm_socket("alice-admin")),
               QREXEC_REMOTE_DOMAIN="bob-admin", QREXEC_REQUESTED_TARGET="bob-admin")
    with nothing_changes(world):
        result = subprocess.run([*CLIENT, "dom0", "admin.vm.List"], check=False,
                                capture_output=True, env=env, timeout=30)
    assert result.stdout == _alice_view(world)
    assert b"bob-work" not in result.stdout


@pytest.mark.parametrize("target, service", [
    ("bob-admin", "admin.vm.List"),                               # bob's VM as target
    ("dom0", "admin.vm.List+ bob-admin name dom0"),               # forged descriptor
    ("dom0", "admin.vm.Start+ bob-admin name bob-personal"),
    ("bob-admin name bob-personal", "admin.vm.Start"),            # forged target
])
def test_forged_header_through_alices_socket(world, target, service):
    with nothing_changes(world):
        result = world.vm("alice-admin", target, service)
    # nothing of bob's comes back (an error may echo what alice sent, sanitized)
    assert b"bob-work" not in result.stdout, result
    assert result.returncode != 0 or result.stdout.startswith(b"2\0"), result


def test_forged_descriptor_in_payload_still_acts_as_alice(world):
    """A payload carrying a whole qubesd request as bob-admin: qubesd sees it as the
    payload of alice's call, which admin.vm.List does not take."""
    payload = b"\0admin.vm.Start+ bob-admin name bob-personal\0"
    with nothing_changes(world):
        result = world.vm("alice-admin", "dom0", "admin.vm.List", payload)
    assert result.returncode == 0 and result.stdout.startswith(b"2\0"), result
    assert b"bob-work" not in result.stdout


def test_raw_forged_call_line_on_alices_socket(world):
    """Bypassing qrexec-client-vm: extra words, NULs and a second CALL line."""
    lines = [b"CALL dom0 admin.vm.Start bob-admin\n",
             b"CALL bob-personal admin.vm.Start\x00bob-admin\n",
             b"CALL dom0 admin.vm.List\nCALL bob-personal admin.vm.Start\n"]
    for line in lines:
        with nothing_changes(world), \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(world.vm_socket("alice-admin")))
            sock.sendall(line)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert b"bob-work" not in data, (line, data)


def test_alice_created_domain_is_tagged_for_alice_not_the_named_source(world):
    """A Create through alice's socket whose payload and target name bob-admin: the
    domain is created by alice-admin (tag), lands in alice's set, bob cannot see it.
    (This one changes state on purpose; the domain is removed again.)"""
    result = world.vm("alice-admin", "dom0", "admin.vm.Create.AppVM+debian-12-xfce",
                      b"name=spoofed-owner label=red")
    assert (result.returncode, result.stdout) == (0, b"0\0"), result
    try:
        tags = world.ok("admin.vm.tag.List", "spoofed-owner").split()
        assert "created-by-alice-admin" in tags
        assert not any(t.startswith("created-by-bob") for t in tags)
        bob = world.vm("bob-admin", "dom0", "admin.vm.List").stdout
        assert b"spoofed-owner" not in bob
    finally:
        world.ok("admin.vm.Remove", "spoofed-owner")


# -- GUI tags and the user's own acting VMs ------------------------------------------------

@pytest.mark.parametrize("tag", ["guivm-sys-gui-bob", "audiovm-sys-gui-bob", "guivm-dom0"])
@pytest.mark.parametrize("method", ["admin.vm.tag.Set", "admin.vm.tag.Remove"])
def test_alice_cannot_write_gui_tags_to_expose_her_domain(world, tag, method):
    """guivm-* decides what a GUI domain may touch; only the property (set by dom0's
    extension) may write it, or alice could hand her domain to bob's GUI domain."""
    attack(world, "alice-admin", "work", f"{method}+{tag}")


def test_alice_may_point_her_domain_at_her_own_gui_domain(world):
    result = world.vm("alice-admin", "personal", "admin.vm.property.Set+guivm",
                      b"sys-gui-alice")
    try:
        assert (result.returncode, result.stdout) == (0, b"0\0"), result
        got = world.vm("alice-admin", "personal", "admin.vm.property.Get+guivm")
        assert got.stdout == b"0\0default=False type=vm sys-gui-alice", got
        assert "guivm-sys-gui-alice" in world.ok("admin.vm.tag.List", "personal").split()
    finally:
        world.ok("admin.vm.property.Set", "personal", "guivm", b"sys-gui-alice")


def test_alice_cannot_point_her_domain_at_bobs_gui_domain(world):
    attack(world, "alice-admin", "personal", "admin.vm.property.Set+guivm", b"sys-gui-bob")


# -- membership tags --------------------------------------------------------------------------

@pytest.mark.parametrize("method,target,tag", [
    # into bob's set (bob's rule is the tag owner-bob): a trojan in bob's view
    ("admin.vm.tag.Set", "work", "owner-bob"),
    # out of her own set's tag rule: membership is dom0's to change
    ("admin.vm.tag.Remove", "work", "owner-alice"),
    ("admin.vm.tag.Set", "personal", "owner-alice"),
])
def test_alice_cannot_change_tags_that_decide_set_membership(world, method, target, tag):
    attack(world, "alice-admin", target, f"{method}+{tag}")


def test_alice_may_still_set_ordinary_tags_on_her_domain(world):
    result = world.vm("alice-admin", "personal", "admin.vm.tag.Set+project-x")
    try:
        assert (result.returncode, result.stdout) == (0, b"0\0"), result
    finally:
        world.ok("admin.vm.tag.Remove", "personal", "project-x")
