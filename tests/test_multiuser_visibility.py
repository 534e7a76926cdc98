"""Issue items 4 and 6: what each caller can see, and who owns what.

Visibility: admin.vm.List, admin.Events (decided per event, when it fires), admin.vm.Stats,
and values naming a domain the caller cannot see; no read path may reveal another user's
domain (no existence oracle, no name behind a ``uuid:``, no value in an event).
Ownership: a domain created by alice-admin is tagged ``created-by-alice-admin`` and joins
alice's ``create_into`` set; only dom0 changes such tags; a GUI domain sees what it
displays under the ``gui`` role.

Callers act through ``qrexec-client-vm`` on their per-domain sockets; dom0 sets up and
changes things on qubesd.sock. This module changes state on purpose (its own world).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multiuser_harness import parse_events, start_world, stop_world

ALICE_BASE = {"work", "personal", "dev", "build", "sys-net", "sys-firewall",
              "debian-12-xfce", "fedora-41-xfce", "default-dvm"}
BOB_PRIVATE = {"bob-work", "bob-personal", "bob-tpl", "bob-dvm", "bob-net", "bob-gui-app"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(Path(tmp_path_factory.mktemp("mu-visibility")))
    try:
        yield w
    finally:
        stop_world(w)


def listing(world, src: str, target: str = "dom0") -> set[str]:
    result = world.vm(src, target, "admin.vm.List")
    assert result.returncode == 0 and result.stdout.startswith(b"0\0"), result
    return {line.split(" ")[0] for line in result.stdout[2:].decode().splitlines()}


def reply(world, src: str, target: str, service: str, payload: bytes = b"") -> bytes:
    result = world.vm(src, target, service, payload)
    assert result.returncode == 0, result
    return result.stdout


def uuid_of(world, name: str) -> str:
    for line in world.ok("admin.vm.List").splitlines():
        if line.split(" ")[0] == name:
            return line.rsplit("uuid=", 1)[1]
    raise KeyError(name)


# -- admin.vm.List ---------------------------------------------------------------------

def test_each_user_lists_only_their_own_and_shared_domains(world):
    alice, bob = listing(world, "alice-admin"), listing(world, "bob-admin")
    assert ALICE_BASE <= alice
    assert not alice & BOB_PRIVATE
    assert BOB_PRIVATE <= bob
    assert not bob & {"work", "personal"}
    assert {"dev", "build"} <= alice & bob
    # neither sees the other's management or GUI domains, nor dom0 in the listing
    assert not alice & {"bob-admin", "sys-gui-bob", "dom0", "sys-secadmin"}


def test_gui_domain_lists_what_it_displays(world):
    assert listing(world, "sys-gui-alice") == {"work", "personal"}
    assert listing(world, "sys-gui-bob") == {"bob-work", "bob-personal", "bob-gui-app"}


def test_officer_and_no_user_vms_list_nothing(world):
    for src in ("sys-secadmin", "sys-net", "work"):
        result = world.vm(src, "dom0", "admin.vm.List")
        assert result.returncode == 126 or result.stdout.startswith(b"2\0PermissionDenied"), \
            (src, result)


# -- admin.Events: per event, at the time of the event ----------------------------------

def test_events_show_only_visible_domains(world):
    with world.events("alice-admin", via_qrexec=True) as stream:
        world.ok("admin.vm.property.Set", "bob-personal", "label", b"red")
        world.ok("admin.vm.property.Set", "personal", "label", b"green")
        stream.wait_for(lambda evs: any(s == "personal" and e == "property-set:label"
                                        for s, e, _ in evs), what="personal label event")
        evs = stream.settle(0.2)
    assert not {s for s, _, _ in evs} & BOB_PRIVATE, evs
    assert b"bob-personal" not in stream.raw()


def test_domain_leaving_alices_set_vanishes_from_her_open_stream(world):
    world.ok("admin.vm.Create.AppVM", "dom0", "debian-12-xfce", b"name=mover label=red")
    world.ok("admin.vm.tag.Set", "mover", "owner-alice")
    with world.events("alice-admin", via_qrexec=True) as stream:
        world.ok("admin.vm.property.Set", "mover", "label", b"green")
        stream.wait_for(lambda evs: any(s == "mover" for s, _, _ in evs), what="mover event")
        world.ok("admin.vm.tag.Remove", "mover", "owner-alice")
        seen = len(stream.events())
        # after it left alice's set, nothing about it reaches her open stream
        world.ok("admin.vm.property.Set", "mover", "label", b"blue")
        world.ok("admin.vm.feature.Set", "mover", "secret", b"1")
        world.ok("admin.vm.tag.Set", "mover", "owner-bob")
        world.ok("admin.vm.property.Set", "personal", "label", b"yellow")  # a marker
        stream.wait_for(lambda evs: any(s == "personal" for s, _, _ in evs[seen:]),
                        what="marker event")
        later = stream.settle(0.2)[seen:]
        assert not [ev for ev in later if ev[0] == "mover"], later
        assert "mover" not in listing(world, "alice-admin")
        # and it comes back when dom0 puts it back into her set
        world.ok("admin.vm.tag.Remove", "mover", "owner-bob")
        world.ok("admin.vm.tag.Set", "mover", "owner-alice")
        world.ok("admin.vm.property.Set", "mover", "label", b"purple")
        stream.wait_for(lambda evs: any(s == "mover" and kw.get("newvalue") == "purple"
                                        for s, _, kw in evs), what="mover back")


def test_events_do_not_carry_values_naming_invisible_domains(world):
    """bob points the shared domain ``dev`` at his private disposable template (allowed:
    he may use both). alice, who co-owns dev, reads that property as empty; her event
    stream must not tell her the name either."""
    with world.events("alice-admin", via_qrexec=True) as stream:
        result = world.vm("bob-admin", "dev", "admin.vm.property.Set+default_dispvm",
                          b"bob-dvm")
        assert (result.returncode, result.stdout) == (0, b"0\0"), result
        world.ok("admin.vm.property.Set", "personal", "label", b"orange")  # a marker
        stream.wait_for(lambda evs: any(s == "personal" for s, _, _ in evs), what="marker")
        evs = stream.settle(0.2)
    try:
        got = reply(world, "alice-admin", "dev", "admin.vm.property.Get+default_dispvm")
        assert got == b"0\0default=False type=vm ", got  # the read path hides it
        leaked = [ev for ev in evs if "bob-dvm" in str(ev)]
        assert not leaked, f"alice's event stream names bob's private domain: {leaked}"
    finally:
        world.ok("admin.vm.property.Reset", "dev", "default_dispvm")


def test_global_events_do_not_carry_values_naming_invisible_domains(world):
    """dom0 sets a global property to bob's private template; alice reads it as empty
    through admin.property.Get, and her event stream must not name it either."""
    with world.events("alice-admin", via_qrexec=True) as stream:
        world.ok("admin.property.Set", "dom0", "default_template", b"bob-tpl")
        world.ok("admin.vm.property.Set", "personal", "label", b"red")  # a marker
        stream.wait_for(lambda evs: any(s == "personal" for s, _, _ in evs), what="marker")
        evs = stream.settle(0.2)
    try:
        got = reply(world, "alice-admin", "dom0", "admin.property.Get+default_template")
        assert got == b"0\0default=False type=vm ", got
        leaked = [ev for ev in evs if "bob-tpl" in str(ev)]
        assert not leaked, f"alice's event stream names bob's private template: {leaked}"
    finally:
        world.ok("admin.property.Set", "dom0", "default_template", b"debian-12-xfce")


# -- admin.vm.Stats ----------------------------------------------------------------------

def test_stats_show_only_visible_running_domains(world):
    world.ok("admin.property.Set", "dom0", "stats_interval", b"1")
    try:
        with world.events("alice-admin", via_qrexec=True, service="admin.vm.Stats") as st:
            st.wait_for(lambda evs: any(e == "vm-stats" for _, e, _ in evs), timeout=6,
                        what="vm-stats")
            evs = st.settle(1.2)
    finally:
        world.ok("admin.property.Set", "dom0", "stats_interval", b"3")
    subjects = {s for s, e, _ in evs if e == "vm-stats"}
    assert "work" in subjects
    assert subjects <= ALICE_BASE | {"mover"}, subjects
    assert "bob-work" not in subjects and "alice-admin" not in subjects


# -- values naming invisible domains --------------------------------------------------------

def test_property_values_naming_invisible_domains_read_empty(world):
    world.ok("admin.vm.property.Set", "dev", "netvm", b"bob-net")
    try:
        got = reply(world, "alice-admin", "dev", "admin.vm.property.Get+netvm")
        assert got == b"0\0default=False type=vm ", got
        allprops = reply(world, "alice-admin", "dev", "admin.vm.property.GetAll")
        assert b"bob-net" not in allprops
        assert b"\nnetvm default=False type=vm \n" in allprops
        assert reply(world, "bob-admin", "dev", "admin.vm.property.Get+netvm") == \
            b"0\0default=False type=vm bob-net"
        # a value she may see is shown
        world.ok("admin.vm.property.Set", "dev", "netvm", b"sys-net")
        assert reply(world, "alice-admin", "dev", "admin.vm.property.Get+netvm") == \
            b"0\0default=False type=vm sys-net"
    finally:
        world.ok("admin.vm.property.Reset", "dev", "netvm")


# -- no existence oracle ---------------------------------------------------------------------

def _shape(data: bytes, name: str) -> tuple[bytes, bytes]:
    """(exception class, message with the requested name blanked out)."""
    assert data.startswith(b"2\0"), data
    parts = data.split(b"\0")
    return parts[1], parts[3].replace(name.encode(), b"<name>")


def test_invisible_domain_answers_like_a_nonexistent_one(world):
    """alice asks about bob's existing domain and about a domain that does not exist:
    if the answers differ, she can enumerate the names of bob's domains."""
    for service in ("admin.vm.property.Get+label", "admin.vm.Start", "admin.vm.List"):
        existing = reply(world, "alice-admin", "bob-personal", service)
        missing = reply(world, "alice-admin", "bob-nonexistent", service)
        assert _shape(existing, "bob-personal") == _shape(missing, "bob-nonexistent"), \
            (service, existing, missing)


def test_refusal_by_uuid_does_not_reveal_the_domains_name_or_sets(world):
    ref = f"uuid:{uuid_of(world, 'bob-personal')}"
    answer = reply(world, "alice-admin", ref, "admin.vm.property.Get+label")
    assert answer.startswith(b"2\0"), answer
    assert b"bob-personal" not in answer, answer
    assert b"sets:" not in answer, answer


def test_uuid_of_invisible_domain_answers_like_an_unknown_uuid(world):
    ref = f"uuid:{uuid_of(world, 'bob-personal')}"
    unknown = "uuid:00000000-1111-2222-3333-444444444444"
    a = reply(world, "alice-admin", ref, "admin.vm.property.Get+label")
    b = reply(world, "alice-admin", unknown, "admin.vm.property.Get+label")
    assert _shape(a, ref) == _shape(b, unknown), (a, b)


def test_value_constraint_answers_alike_for_invisible_and_nonexistent(world):
    a = reply(world, "alice-admin", "work", "admin.vm.property.Set+netvm", b"bob-net")
    b = reply(world, "alice-admin", "work", "admin.vm.property.Set+netvm", b"no-such-net")
    assert _shape(a, "bob-net") == _shape(b, "no-such-net"), (a, b)
    assert a.startswith(b"2\0PermissionDenied\0")


# -- ownership (item 6) ------------------------------------------------------------------------

def test_created_domain_belongs_to_its_creator(world):
    result = world.vm("alice-admin", "dom0", "admin.vm.Create.AppVM+debian-12-xfce",
                      b"name=alice-new label=red")
    assert (result.returncode, result.stdout) == (0, b"0\0"), result
    assert "created-by-alice-admin" in world.ok("admin.vm.tag.List", "alice-new").split()
    assert "alice-new" in listing(world, "alice-admin")
    assert "alice-new" not in listing(world, "bob-admin")
    bob = reply(world, "bob-admin", "alice-new", "admin.vm.property.Get+label")
    assert bob.startswith(b"2\0PermissionDenied\0"), bob
    # it is in alice's create_into set, as the officer's report says
    report = reply(world, "sys-secadmin", "dom0", "policy.acl.Report")
    assert report.startswith(b"0\0"), report
    sets = json.loads(report[2:])["sets"]
    assert "alice-new" in sets["alice"] and "alice-new" not in sets["bob"]
    # and alice, its owner, may change it and remove it
    assert reply(world, "alice-admin", "alice-new", "admin.vm.property.Set+label",
                 b"green") == b"0\0"
    assert reply(world, "alice-admin", "alice-new", "admin.vm.Remove") == b"0\0"
    assert "alice-new" not in world.domain_names()


def test_only_dom0_changes_created_by_tags(world):
    result = world.vm("alice-admin", "dom0", "admin.vm.Create.AppVM+debian-12-xfce",
                      b"name=alice-owned label=red")
    assert result.stdout == b"0\0", result
    try:
        # alice cannot give it away, nor drop the mark
        for service in ("admin.vm.tag.Remove+created-by-alice-admin",
                        "admin.vm.tag.Set+created-by-bob-admin"):
            got = reply(world, "alice-admin", "alice-owned", service)
            assert got.startswith(b"2\0PermissionDenied\0"), (service, got)
        assert "alice-owned" not in listing(world, "bob-admin")
        # dom0 may: the domain leaves alice's set, and comes back
        world.ok("admin.vm.tag.Remove", "alice-owned", "created-by-alice-admin")
        assert "alice-owned" not in listing(world, "alice-admin")
        world.ok("admin.vm.tag.Set", "alice-owned", "created-by-alice-admin")
        assert "alice-owned" in listing(world, "alice-admin")
    finally:
        world.ok("admin.vm.Remove", "alice-owned")


def test_gui_domain_sees_and_operates_what_it_displays_but_cannot_change_it(world):
    world.ok("admin.vm.Create.AppVM", "dom0", "debian-12-xfce", b"name=gui-shown label=red")
    world.ok("admin.vm.property.Set", "gui-shown", "guivm", b"sys-gui-alice")
    try:
        assert "gui-shown" in listing(world, "sys-gui-alice")
        assert "gui-shown" not in listing(world, "alice-admin")  # in none of her sets
        assert "dev" not in listing(world, "sys-gui-alice")      # hers, not displayed
        assert reply(world, "sys-gui-alice", "gui-shown",
                     "admin.vm.property.Get+label") == b"0\0default=False type=label red"
        before = world.xml.read_bytes()
        for service, payload in (("admin.vm.property.Set+label", b"blue"),
                                 ("admin.vm.property.Set+guivm", b""),
                                 ("admin.vm.tag.Set+x", b""),
                                 ("admin.vm.feature.Set+x", b"1")):
            got = world.vm("sys-gui-alice", "gui-shown", service, payload)
            assert got.returncode == 126 or got.stdout.startswith(b"2\0PermissionDenied"), \
                (service, got)
        assert world.xml.read_bytes() == before
        # the gui role: start and shut down what it displays
        assert reply(world, "sys-gui-alice", "gui-shown", "admin.vm.Start") == b"0\0"
        assert "state=Running" in world.ok("admin.vm.List", "gui-shown")
        assert reply(world, "sys-gui-alice", "gui-shown", "admin.vm.Shutdown+force") == b"0\0"
        world.wait(lambda: "state=Halted" in world.ok("admin.vm.List", "gui-shown"),
                   what="gui-shown halted")
        # and it stops seeing it once its guivm is changed by dom0
        world.ok("admin.vm.property.Set", "gui-shown", "guivm", b"sys-gui-bob")
        assert "gui-shown" not in listing(world, "sys-gui-alice")
    finally:
        world.ok("admin.vm.Remove", "gui-shown")


def test_events_parser_sanity():
    frames = b"1\0\0connection-established\0\0" + b"1\0vm\0ev\0k\0v\0\0" + b"1\0x"
    assert parse_events(frames) == [("", "connection-established", {}),
                                    ("vm", "ev", {"k": "v"})]
