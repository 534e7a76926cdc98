"""Issue item 7: the security officer (sys-secadmin, user ``sec``).

The officer may call ``policy.*``; alice's management VM may not; the officer holds no
Admin API rights without a grant (even when the qrexec policy lets it reach qubesd);
an invalid ``policy.acl.Replace`` or ``policy.Replace`` is refused with its reason and
changes nothing, neither the files nor what anyone may do. All calls go through
``qrexec-client-vm`` on the per-domain sockets.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from multiuser_harness import (
    assert_unchanged,
    only_connection_established,
    start_world,
    stop_world,
)

OFFICER = "sys-secadmin"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(Path(tmp_path_factory.mktemp("mu-officer")))
    try:
        yield w
    finally:
        stop_world(w)


def call(world, src, target, service, payload=b""):
    return world.vm(src, target, service, payload)


def ok(world, src, target, service, payload=b"") -> bytes:
    result = call(world, src, target, service, payload)
    assert result.returncode == 0 and result.stdout.startswith(b"0\0"), result
    return result.stdout[2:]


def denied(result) -> bool:
    return result.returncode == 126 or (
        result.returncode == 0 and result.stdout.startswith(b"2\0PermissionDenied\0"))


def behaviour(world) -> dict:
    """What a few callers may do right now (answers, not files)."""
    def answer(src, target, service):
        r = call(world, src, target, service)
        return (r.returncode, r.stdout)
    return {
        "alice-list": answer("alice-admin", "dom0", "admin.vm.List"),
        "bob-list": answer("bob-admin", "dom0", "admin.vm.List"),
        "alice-on-bob": answer("alice-admin", "bob-work", "admin.vm.property.Get+label"),
        "no-user": answer("sys-net", "dom0", "admin.vm.List"),
        "officer-policy": answer(OFFICER, "dom0", "policy.List"),
    }


@contextlib.contextmanager
def nothing_changes(world):
    before, acted = world.snapshot(), behaviour(world)
    with world.events() as stream:
        yield
        evs = stream.settle(0.15)
    assert only_connection_established(evs), evs
    assert_unchanged(before, world.snapshot())
    assert behaviour(world) == acted


# -- who may call policy.* ------------------------------------------------------------------

def test_officer_may_call_policy_services(world):
    files = ok(world, OFFICER, "dom0", "policy.List").decode().split()
    assert "30-demo-multiuser" in files
    acl = ok(world, OFFICER, "dom0", "policy.acl.Get")
    token, _, content = acl.partition(b"\n")
    assert token.startswith(b"sha256:")
    assert content == (world.config_dir / "userdomains.yaml").read_bytes()
    explain = ok(world, OFFICER, "dom0", "policy.Explain",
                 b"alice-admin bob-work admin.vm.Start")
    assert b'"result": "deny"' in explain


@pytest.mark.parametrize("service, payload", [
    ("policy.List", b""), ("policy.acl.Get", b""), ("policy.Audit", b""),
    ("policy.Explain", b"alice-admin bob-work admin.vm.Start"),
    ("policy.acl.Report", b""),
])
def test_management_vm_may_not_call_policy_services(world, service, payload):
    with nothing_changes(world):
        assert denied(call(world, "alice-admin", "dom0", service, payload))
    # and past qrexec, the gate refuses it as well
    reply = world.q(service, "dom0", "", payload, src="alice-admin")
    assert reply.startswith(b"2\0PermissionDenied\0"), reply


def test_officer_cannot_start_a_domain_without_a_grant(world):
    """dom0 lets sys-secadmin through the qrexec layer (tag demo-user); the Casbin layer
    must still refuse: the officer has no Admin API grant."""
    world.ok("admin.vm.tag.Set", OFFICER, "demo-user")
    try:
        for target, service, payload in (
                ("bob-personal", "admin.vm.Start", b""),
                ("personal", "admin.vm.Start", b""),
                ("work", "admin.vm.Shutdown+force", b""),
                ("dom0", "admin.vm.Create.AppVM+debian-12-xfce", b"name=sec-made label=red"),
                ("work", "admin.vm.property.Set+label", b"red")):
            with nothing_changes(world):
                result = call(world, OFFICER, target, service, payload)
            assert result.returncode == 0, result  # reached qubesd: the gate decided
            assert result.stdout.startswith(b"2\0PermissionDenied\0"), (service, result)
            # the caller is told nothing more; the audit log says which layer refused
            method = service.split("+", 1)[0]
            records = [json.loads(line) for line in
                       (world.state_dir / "audit.log").read_text().splitlines()]
            last = next(r for r in reversed(records)
                        if r["source"] == OFFICER and r["method"] == method)
            assert last["result"] == "deny", last
            assert "allow" in last["reasons"]["qrexec"] and "casbin" in last["reasons"], last
    finally:
        world.ok("admin.vm.tag.Remove", OFFICER, "demo-user")


# -- invalid changes are refused with the reason and change nothing -----------------------

def _acl_token(world) -> bytes:
    return ok(world, OFFICER, "dom0", "policy.acl.Get").partition(b"\n")[0]


@pytest.mark.parametrize("content, reason", [
    ((b"version: 1\nusers:\n  alice:\n    management: [alice-admin]\n    grants:\n"
      b"      - {role: no-such-role, sets: [alice]}\nsets:\n  alice: {domains: [work]}\n"),
     b"no-such-role"),
    (b"version: 1\nusers: [this, is: not valid yaml\n", b"userdomains.yaml:3:1: YAML syntax"),
    ((b"version: 1\nroles:\n  owner: [admin.vm.*]\nusers:\n  alice:\n"
      b"    management: [alice-admin]\n    grants:\n      - {role: owner, sets: [nowhere]}\n"),
     b"nowhere"),
])
def test_invalid_acl_replace_is_refused_with_reason_and_changes_nothing(world, content,
                                                                        reason):
    token = _acl_token(world)
    with nothing_changes(world):
        result = call(world, OFFICER, "dom0", "policy.acl.Replace", token + b"\n" + content)
    assert result.returncode == 0 and result.stdout.startswith(b"2\0"), result
    assert not result.stdout.startswith(b"2\0PermissionDenied\0"), result
    message = result.stdout.split(b"\0")[3]
    assert reason in message, message


def test_acl_replace_with_a_stale_token_is_refused(world):
    content = (world.config_dir / "userdomains.yaml").read_bytes()
    with nothing_changes(world):
        result = call(world, OFFICER, "dom0", "policy.acl.Replace",
                      b"sha256:" + b"0" * 64 + b"\n" + content + b"\n# edited\n")
    assert result.stdout.startswith(b"2\0") and b"Token mismatch" in result.stdout, result


@pytest.mark.parametrize("name, content, reason", [
    (b"30-demo-multiuser", b"admin.vm.List * @anyvm @adminvm allow target\n",
     b"30-demo-multiuser.policy:1: invalid action parameter"),
    (b"29-broken", b"admin.vm.Start * @tag:x @anyvm frobnicate\n",
     b"29-broken.policy:1: invalid action: frobnicate"),
    (b"28-broken", b"!include no-such-file\n", b"no-such-file"),
])
def test_invalid_policy_replace_is_refused_with_reason_and_changes_nothing(world, name,
                                                                           content, reason):
    with nothing_changes(world):
        result = call(world, OFFICER, "dom0", f"policy.Replace+{name.decode()}",
                      b"any\n" + content)
    assert result.returncode == 0 and result.stdout.startswith(b"2\0"), result
    assert not result.stdout.startswith(b"2\0PermissionDenied\0"), result
    message = result.stdout.split(b"\0")[3]
    assert reason in message, message


def test_valid_acl_replace_takes_effect_and_can_be_undone(world):
    """Positive control: the same service with a valid file changes behaviour at once
    (alice loses her viewer grant on infra), and putting the old file back restores it."""
    path = world.config_dir / "userdomains.yaml"
    original = path.read_bytes()
    narrowed = original.replace(b"- {role: viewer, sets: [infra, templates]}\n"
                                b"    create_into: alice",
                                b"- {role: viewer, sets: [templates]}\n"
                                b"    create_into: alice")
    assert narrowed != original
    token = _acl_token(world)
    assert ok(world, OFFICER, "dom0", "policy.acl.Replace", token + b"\n" + narrowed) == b""
    try:
        assert path.read_bytes() == narrowed
        alice = ok(world, "alice-admin", "dom0", "admin.vm.List").decode()
        assert "sys-net " not in alice and "work " in alice
        bob = ok(world, "bob-admin", "dom0", "admin.vm.List").decode()
        assert "sys-net " in bob
    finally:
        token = _acl_token(world)
        ok(world, OFFICER, "dom0", "policy.acl.Replace", token + b"\n" + original)
    assert path.read_bytes() == original
    assert "sys-net " in ok(world, "alice-admin", "dom0", "admin.vm.List").decode()


def test_officer_policy_replace_cannot_be_used_by_alice_to_grant_herself(world):
    """alice writes an allow-everything qrexec policy file: refused (she is no officer),
    the file does not appear, and she still cannot touch bob's domains."""
    with nothing_changes(world):
        result = call(world, "alice-admin", "dom0", "policy.Replace+00-alice",
                      b"any\nadmin.vm.Start * alice-admin @anyvm allow target=dom0\n")
    assert denied(result), result
    assert not (world.config_dir / "policy.d" / "00-alice.policy").exists()
