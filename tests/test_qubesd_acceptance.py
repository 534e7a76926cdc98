"""The acceptance list of spec/admin-api.md 8.2 through the real socket.

Items 1-3, 5-20, 24-31, 33, 37-40, 46 and 50 (partially). Events (35) and lifecycle
(34, 37 running) are in test_qubesd_events_lifecycle.py.

Two daemons per module: ``ro`` only ever receives read calls (and checks at the end that
qubes.xml was never rewritten); ``rw`` takes the mutations, each test on its own objects
or restoring what it changed.
"""

import os
import re

import pytest
from qubesd_harness import QubesdProcess, seed_upstream_fixture

from qubesd import exc as qexc

ADMINVM_UUID = "00000000-0000-0000-0000-000000000000"

POLICY = """\
admin.vm.tag.Set * test-vm1 test-vm1 allow target=dom0
admin.vm.tag.Remove * test-vm1 test-vm1 allow target=dom0
admin.vm.tag.Set * test-vm1 test-template allow target=dom0
admin.vm.tag.Remove * test-vm1 test-template allow target=dom0
admin.vm.List * test-vm1 @adminvm allow target=dom0
admin.vm.List * test-vm1 test-vm1 allow target=dom0
admin.vm.List * test-vm1 test-template allow target=dom0
"""


def fixture_daemon(root) -> QubesdProcess:
    (root / "etc" / "policy.d").mkdir(parents=True)
    (root / "etc" / "policy.d" / "30-test.policy").write_text(POLICY)
    daemon = QubesdProcess(root).start()
    seed_upstream_fixture(daemon)
    return daemon


def stamp(q) -> tuple[int, int]:
    st = os.stat(q.xml)
    return st.st_ino, st.st_mtime_ns


def uuid_of(q, name: str) -> str:
    return q.ok("admin.vm.property.Get", name, "uuid").split(" ", 2)[2]


def err_class(q, *args, **kwargs) -> str:
    return q.error(*args, **kwargs)[0]


def is_a(name: str, base: type) -> bool:
    cls = getattr(qexc, name, None)
    return cls is not None and issubclass(cls, base)


@pytest.fixture(scope="module")
def ro(tmp_path_factory):
    daemon = fixture_daemon(tmp_path_factory.mktemp("ro") / "q")
    before = (stamp(daemon), daemon.xml.read_bytes())
    yield daemon
    try:
        assert (stamp(daemon), daemon.xml.read_bytes()) == before, \
            "read-only calls rewrote qubes.xml"
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def rw(tmp_path_factory):
    daemon = fixture_daemon(tmp_path_factory.mktemp("rw") / "q")
    yield daemon
    daemon.stop()


class Saves:
    """Counts qubes.xml rewrites around a block (a rewrite replaces the inode)."""

    def __init__(self, q) -> None:
        self.q = q

    def __enter__(self):
        self.before = stamp(self.q)
        return self

    def __exit__(self, *exc):
        self.changed = stamp(self.q) != self.before


# -- 1-3: listing and addressing ---------------------------------------------------------

def test_01_vm_list_dom0(ro):
    assert ro.ok("admin.vm.List") == (
        f"dom0 class=AdminVM state=Running uuid={ADMINVM_UUID}\n"
        f"test-template class=TemplateVM state=Halted uuid={uuid_of(ro, 'test-template')}\n"
        f"test-vm1 class=AppVM state=Halted uuid={uuid_of(ro, 'test-vm1')}\n")


def test_02_vm_list_one_vm_and_by_uuid(ro):
    line = f"test-vm1 class=AppVM state=Halted uuid={uuid_of(ro, 'test-vm1')}\n"
    assert ro.ok("admin.vm.List", "test-vm1") == line
    assert ro.ok("admin.vm.List", f"uuid:{uuid_of(ro, 'test-vm1')}") == line


def test_03_bad_dest(ro):
    assert ro.error("admin.vm.List", ".test-vm1") == (
        "QubesValueError", "VM name cannot start with hyphen, underscore, dot or numbers")
    assert ro.error("admin.vm.List", "uuid:") == (
        "QubesVMInvalidUUIDError", "VM UUID is not valid: ''")


def test_vmclass_list(ro):
    assert ro.ok("admin.vmclass.List") == \
        "AdminVM\nAppVM\nDispVM\nRemoteVM\nStandaloneVM\nTemplateVM\n"


# -- 5-11: property reads ------------------------------------------------------------------

STAGE4 = ["audiovm", "bootmode", "default_dispvm", "guivm", "kernelopts",
          "management_dispvm", "netvm", "template"]
UPSTREAM_APPVM_STAGE2 = [
    "autostart", "backup_timestamp", "debug", "default_user", "devices_denied", "dns",
    "gateway", "gateway6", "icon", "include_in_backups", "installed_by_rpm", "ip", "ip6",
    "kernel", "keyboard_layout", "klass", "label", "mac", "maxmem", "memory", "name",
    "provides_network", "qid", "qrexec_timeout", "shutdown_timeout", "start_time",
    "stubdom_mem", "stubdom_uuid", "stubdom_xid", "template_for_dispvms", "updateable",
    "uuid", "vcpus", "virt_mode", "visible_gateway", "visible_gateway6", "visible_ip",
    "visible_ip6", "visible_netmask", "xid"]


def test_05_property_list_order(ro):
    names = ro.ok("admin.vm.property.List", "test-vm1").split("\n")
    assert names[-1] == ""
    names = names[:-1]
    assert names == UPSTREAM_APPVM_STAGE2 + STAGE4


@pytest.mark.parametrize("prop, expected", [
    ("name", "default=False type=str test-vm1"),                 # 6
    ("vcpus", "default=True type=int 2"),                        # 7
    ("xid", "default=True type=int -1"),
    ("provides_network", "default=True type=bool False"),        # 8
    ("label", "default=False type=label red"),
    ("template", "default=False type=vm test-template"),
    ("netvm", "default=True type=vm "),                          # 9
    ("dns", "default=True type=str "),
    ("qid", "default=False type=int 2"),
    ("klass", "default=True type=str AppVM"),
    ("icon", "default=True type=str appvm-red"),
    ("kernel", "default=True type=str 1.0"),
    ("memory", "default=True type=int 400"),
    ("autostart", "default=True type=bool False"),
])
def test_06_09_property_get(ro, prop, expected):
    assert ro.ok("admin.vm.property.Get", "test-vm1", prop) == expected


def test_property_get_unknown(ro):
    assert err_class(ro, "admin.vm.property.Get", "test-vm1", "no-such-property") == \
        "QubesNoSuchPropertyError"
    assert err_class(ro, "admin.property.Get", "dom0", "no-such-property") == \
        "QubesNoSuchPropertyError"


def test_10_get_default_without_default(ro):
    assert ro.call("admin.vm.property.GetDefault", "test-vm1", "template") == b"0\0"
    assert ro.ok("admin.vm.property.GetDefault", "test-vm1", "vcpus") == "type=int 2"


def test_09_10_network_defaults(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=net10 label=red")
    rw.ok("admin.vm.property.Set", "net10", "provides_network", b"True")
    assert rw.ok("admin.vm.property.Get", "net10", "dns") == \
        "default=True type=str 10.139.1.1 10.139.1.2"
    assert rw.ok("admin.vm.property.GetDefault", "net10", "provides_network") == \
        "type=bool False"
    assert rw.ok("admin.vm.property.GetDefault", "net10", "dns") == \
        "type=str 10.139.1.1 10.139.1.2"


def test_11_getall_escaping(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm11 label=red")
    rw.ok("admin.vm.property.Set", "vm11", "kernelopts", b"opt1\nopt2\nopt3\\opt4")
    lines = rw.ok("admin.vm.property.GetAll", "vm11").split("\n")
    assert lines[-1] == ""
    assert "kernelopts default=False type=str opt1\\nopt2\\nopt3\\\\opt4" in lines
    names = [line.split(" ", 1)[0] for line in lines[:-1]]
    assert names == rw.ok("admin.vm.property.List", "vm11").split("\n")[:-1]
    for line in lines[:-1]:
        name = line.split(" ", 1)[0]
        if name != "kernelopts":
            assert line == f"{name} " + rw.ok("admin.vm.property.Get", "vm11", name)


# -- 12-19: property writes ----------------------------------------------------------------

def test_12_set_netvm(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=test-net label=red")
    rw.ok("admin.vm.property.Set", "test-net", "provides_network", b"True")
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm12 label=red")
    with Saves(rw) as s:
        assert rw.call("admin.vm.property.Set", "vm12", "netvm", b"test-net") == b"0\0"
    assert s.changed
    assert rw.ok("admin.vm.property.Get", "vm12", "netvm") == "default=False type=vm test-net"
    with Saves(rw) as s:
        assert rw.call("admin.vm.property.Set", "vm12", "netvm", b"") == b"0\0"
    assert s.changed
    assert rw.ok("admin.vm.property.Get", "vm12", "netvm") == "default=False type=vm "


@pytest.mark.parametrize("prop, payload", [
    ("netvm", b"forbidden-chars/../!"),       # 13
    ("netvm", b"\x80\x90\xa0"),
    ("autostart", b"some string"),            # 14
    ("autostart", b"\x80\x90\xa0"),
    ("kernel", b"\x80\x90\xa0"),              # 15
    ("maxmem", b"fourty two"),                # 16
])
def test_13_16_set_bad_values(rw, prop, payload):
    before = rw.ok("admin.vm.property.Get", "test-vm1", prop)
    with Saves(rw) as s:
        name = err_class(rw, "admin.vm.property.Set", "test-vm1", prop, payload)
    assert name == "QubesValueError"
    assert not s.changed
    assert rw.ok("admin.vm.property.Get", "test-vm1", prop) == before


@pytest.mark.parametrize("prop, payload, expected", [
    ("autostart", b"True", "default=False type=bool True"),     # 14
    ("autostart", b"False", "default=False type=bool False"),
    ("kernel", b"1.0", "default=False type=str 1.0"),            # 15
    ("maxmem", b"1024000", "default=False type=int 1024000"),    # 16
    ("label", b"green", "default=False type=label green"),       # 17
])
def test_14_17_set_values(rw, prop, payload, expected):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template",
          f"name=vm-{prop} label=red".encode()) if f"vm-{prop}" not in rw.ok(
              "admin.vm.List") else None
    with Saves(rw) as s:
        assert rw.call("admin.vm.property.Set", f"vm-{prop}", prop, payload) == b"0\0"
    assert s.changed
    assert rw.ok("admin.vm.property.Get", f"vm-{prop}", prop) == expected


def test_18_help(ro):
    assert ro.ok("admin.vm.property.Help", "test-vm1", "label") == (
        "Colourful label assigned to VM. This is where the colour of the padlock is set.")
    assert ro.ok("admin.property.Help", "dom0", "clockvm") == (
        "Which VM to use as NTP proxy for updating AdminVM")


def test_19_unknown_property_help_reset(rw):
    with Saves(rw) as s:
        assert err_class(rw, "admin.vm.property.Help", "test-vm1", "no-such-property") == \
            "QubesNoSuchPropertyError"
        assert err_class(rw, "admin.vm.property.Reset", "test-vm1", "no-such-property") == \
            "QubesNoSuchPropertyError"
        assert err_class(rw, "admin.property.Reset", "dom0", "no-such-property") == \
            "QubesNoSuchPropertyError"
    assert not s.changed


def test_19_reset(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm19 label=red")
    rw.ok("admin.vm.property.Set", "vm19", "default_user", b"alice")
    assert rw.ok("admin.vm.property.Get", "vm19", "default_user") == \
        "default=False type=str alice"
    with Saves(rw) as s:
        assert rw.call("admin.vm.property.Reset", "vm19", "default_user") == b"0\0"
    assert s.changed
    assert rw.ok("admin.vm.property.Get", "vm19", "default_user") == \
        "default=True type=str user"
    assert ">alice<" not in rw.xml.read_text()


def test_20_global_properties(ro):
    assert ro.ok("admin.property.Get", "dom0", "default_kernel") == \
        "default=False type=str 1.0"
    assert ro.call("admin.property.GetDefault", "dom0", "default_template") == b"0\0"
    assert ro.ok("admin.property.GetDefault", "dom0", "updatevm") == "type=vm "
    expected = ["check_updates_vm", "clockvm", "default_audiovm", "default_dispvm",
                "default_guivm", "default_kernel", "default_netvm", "default_pool",
                "default_pool_kernel", "default_pool_private", "default_pool_root",
                "default_pool_volatile", "default_qrexec_timeout",
                "default_shutdown_timeout", "default_template", "management_dispvm",
                "maxmem", "no_cpus", "stats_interval", "updatevm"]
    lines = ro.ok("admin.property.GetAll").split("\n")
    assert lines[-1] == ""
    assert [line.split(" ", 1)[0] for line in lines[:-1]] == expected
    assert ro.ok("admin.property.List") == "".join(f"{n}\n" for n in expected)
    fixed = {
        "check_updates_vm": "default=True type=bool True",
        "clockvm": "default=True type=vm ",
        "default_audiovm": "default=True type=vm dom0",
        "default_dispvm": "default=True type=vm ",
        "default_guivm": "default=True type=vm dom0",
        "default_kernel": "default=False type=str 1.0",
        "default_qrexec_timeout": "default=True type=int 60",
        "default_shutdown_timeout": "default=True type=int 60",
        "default_template": "default=False type=vm test-template",
        "stats_interval": "default=True type=int 3",
        "updatevm": "default=True type=vm ",
    }
    for line in lines[:-1]:
        name, rest = line.split(" ", 1)
        if name in fixed:
            assert rest == fixed[name], line
        assert re.fullmatch(r"default=(True|False) type=(vm|int|bool|str|label) .*", rest)


def test_global_property_set_and_errors(rw):
    with Saves(rw) as s:
        rw.ok("admin.property.Set", "dom0", "stats_interval", b"5")
    assert s.changed
    assert rw.ok("admin.property.Get", "dom0", "stats_interval") == \
        "default=False type=int 5"
    assert err_class(rw, "admin.property.Set", "dom0", "stats_interval", b"0") == \
        "QubesPropertyValueError"
    assert err_class(rw, "admin.property.Set", "dom0", "default_template", b"test-vm1") == \
        "QubesPropertyValueError"
    assert err_class(rw, "admin.property.Set", "dom0", "default_netvm", b"nonexistent") == \
        "QubesPropertyValueError"
    rw.ok("admin.property.Reset", "dom0", "stats_interval")
    assert rw.ok("admin.property.Get", "dom0", "stats_interval") == \
        "default=True type=int 3"


# -- 24-26: tags ---------------------------------------------------------------------------

def test_24_tag_list(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm24 label=red")
    # created through the API, so it also carries created-by-dom0 (item 29)
    assert rw.ok("admin.vm.tag.List", "vm24") == \
        "audiovm-dom0\ncreated-by-dom0\nguivm-dom0\n"
    for tag in ("zzz", "aaa", "m-1"):
        with Saves(rw) as s:
            assert rw.call("admin.vm.tag.Set", "vm24", tag) == b"0\0"
        assert s.changed
    assert rw.ok("admin.vm.tag.List", "vm24") == \
        "aaa\naudiovm-dom0\ncreated-by-dom0\nguivm-dom0\nm-1\nzzz\n"


def test_25_tags(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm25 label=red")
    rw.ok("admin.vm.tag.Set", "vm25", "some-tag")
    assert rw.ok("admin.vm.tag.Get", "vm25", "some-tag") == "1"
    assert rw.ok("admin.vm.tag.Get", "vm25", "other-tag") == "0"
    with Saves(rw) as s:
        assert err_class(rw, "admin.vm.tag.Remove", "vm25", "other-tag") == \
            "QubesTagNotFoundError"
        name = err_class(rw, "admin.vm.tag.Set", "vm25", ".some-tag")
        assert name == "QubesInvalidTagError" and is_a(name, qexc.ProtocolError)
        assert is_a(err_class(rw, "admin.vm.tag.Get", "vm25", "bad!tag"), qexc.ProtocolError)
        # an argument with a space cannot even be framed: the connection is dropped
        assert rw.call("admin.vm.tag.Set", "vm25", "bad tag") == b""
        assert rw.error("admin.vm.tag.Set", "vm25", "") == \
            ("ProtocolError", "expected an argument")
    assert not s.changed
    # idempotent Set of an existing tag is not an error
    rw.ok("admin.vm.tag.Set", "vm25", "some-tag")
    rw.ok("admin.vm.tag.Remove", "vm25", "some-tag")
    assert rw.ok("admin.vm.tag.Get", "vm25", "some-tag") == "0"


def test_26_created_by_tags_protected_from_vms(rw):
    for method in ("admin.vm.tag.Set", "admin.vm.tag.Remove"):
        assert rw.error(method, "test-vm1", "created-by-dom0", src="test-vm1") == (
            "PermissionDenied",
            "changing this tag is prohibited by qubes.ext.admin.AdminExtension")
    assert rw.ok("admin.vm.tag.Get", "test-vm1", "created-by-dom0") == "1"
    # an ordinary tag from the same source passes (the policy allows it)
    rw.ok("admin.vm.tag.Set", "test-vm1", "from-vm", src="test-vm1")
    rw.ok("admin.vm.tag.Remove", "test-vm1", "from-vm", src="test-vm1")
    # dom0 may
    rw.ok("admin.vm.tag.Set", "test-vm1", "created-by-someone")
    rw.ok("admin.vm.tag.Remove", "test-vm1", "created-by-someone")
    assert rw.ok("admin.vm.tag.Get", "test-vm1", "created-by-someone") == "0"


# -- 27-28: features -----------------------------------------------------------------------

def test_27_features(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm27 label=red")
    with Saves(rw) as s:
        assert rw.call("admin.vm.feature.Set", "vm27", "test-feature", b"some-value") == \
            b"0\0"
    assert s.changed
    assert rw.ok("admin.vm.feature.Get", "vm27", "test-feature") == "some-value"
    rw.ok("admin.vm.feature.Set", "vm27", "empty", b"")
    assert rw.call("admin.vm.feature.Get", "vm27", "empty") == b"0\0"
    assert rw.ok("admin.vm.feature.List", "vm27") == "test-feature\nempty\n"
    with Saves(rw) as s:
        assert err_class(rw, "admin.vm.feature.Get", "vm27", "missing") == \
            "QubesFeatureNotFoundError"
        assert err_class(rw, "admin.vm.feature.Remove", "vm27", "missing") == \
            "QubesFeatureNotFoundError"
        assert err_class(rw, "admin.vm.feature.Set", "vm27", "x", b"\x02\x03\xff") == \
            "ProtocolError"
        assert err_class(rw, "admin.vm.feature.Set", "vm27", "x", b"\x02\x03") == \
            "ProtocolError"
        assert rw.error("admin.vm.feature.Set", "vm27", "", b"v") == \
            ("ProtocolError", "expected an argument")
        assert rw.error("admin.vm.feature.Set", "vm27", "bad!name", b"v") == \
            ("ProtocolError", "feature name contains illegal characters")
        # upstream's name " " cannot be framed through the socket (4 header fields)
        assert rw.call("admin.vm.feature.Set", "vm27", " ", b"v") == b""
        assert err_class(rw, "admin.vm.feature.Set", "vm27", "service." + "a" * 49, b"1") \
            == "QubesValueError"
        for method, payload in (("admin.vm.feature.Set", b"1"),
                                ("admin.vm.feature.Remove", b"")):
            assert rw.error(method, "vm27", "preload-dispvm", payload) == (
                "PermissionDenied",
                "changing this feature is prohibited by qubes.ext.admin.AdminExtension")
    assert not s.changed
    rw.ok("admin.vm.feature.Set", "vm27", "service." + "a" * 48, b"1")
    rw.ok("admin.vm.feature.Set", "vm27", "service.app-dispvm." + "a" * 60, b"1")
    with Saves(rw) as s:
        rw.ok("admin.vm.feature.Remove", "vm27", "test-feature")
    assert s.changed
    assert err_class(rw, "admin.vm.feature.Get", "vm27", "test-feature") == \
        "QubesFeatureNotFoundError"


def test_28_feature_checks(rw):
    rw.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl28 label=black")
    rw.ok("admin.vm.Create.AppVM", "dom0", "tpl28", b"name=vm28 label=red")
    rw.ok("admin.vm.Create.AppVM", "dom0", "tpl28", b"name=net28 label=red")
    rw.ok("admin.vm.property.Set", "net28", "provides_network", b"True")
    rw.ok("admin.vm.property.Set", "vm28", "netvm", b"net28")
    for method in ("CheckWithTemplate", "CheckWithNetvm", "CheckWithAdminVM",
                   "CheckWithTemplateAndAdminVM"):
        assert err_class(rw, f"admin.vm.feature.{method}", "vm28", "f28") == \
            "QubesFeatureNotFoundError"
    rw.ok("admin.vm.feature.Set", "dom0", "f28", b"dom0-value")
    rw.ok("admin.vm.feature.Set", "net28", "f28", b"net-value")
    assert rw.ok("admin.vm.feature.CheckWithAdminVM", "vm28", "f28") == "dom0-value"
    assert rw.ok("admin.vm.feature.CheckWithNetvm", "vm28", "f28") == "net-value"
    assert rw.ok("admin.vm.feature.CheckWithTemplateAndAdminVM", "vm28", "f28") == \
        "dom0-value"
    assert err_class(rw, "admin.vm.feature.CheckWithTemplate", "vm28", "f28") == \
        "QubesFeatureNotFoundError"
    rw.ok("admin.vm.feature.Set", "tpl28", "f28", b"template-value")
    assert rw.ok("admin.vm.feature.CheckWithTemplate", "vm28", "f28") == "template-value"
    assert rw.ok("admin.vm.feature.CheckWithTemplateAndAdminVM", "vm28", "f28") == \
        "template-value"
    rw.ok("admin.vm.feature.Set", "vm28", "f28", b"own")
    for method in ("CheckWithTemplate", "CheckWithNetvm", "CheckWithAdminVM",
                   "CheckWithTemplateAndAdminVM"):
        assert rw.ok(f"admin.vm.feature.{method}", "vm28", "f28") == "own"
    rw.ok("admin.vm.feature.Remove", "dom0", "f28")


# -- 29-31: creation -----------------------------------------------------------------------

def test_29_create_appvm(rw):
    with Saves(rw) as s:
        assert rw.call("admin.vm.Create.AppVM", "dom0", "test-template",
                       b"name=test-vm2 label=red") == b"0\0"
    assert s.changed
    assert rw.ok("admin.vm.property.Get", "test-vm2", "template") == \
        "default=False type=vm test-template"
    assert rw.ok("admin.vm.property.Get", "test-vm2", "label") == \
        "default=False type=label red"
    assert rw.ok("admin.vm.tag.Get", "test-vm2", "created-by-dom0") == "1"
    assert re.fullmatch(r"test-vm2 class=AppVM state=Halted uuid=[0-9a-f-]{36}\n",
                        rw.ok("admin.vm.List", "test-vm2"))
    assert '<property name="name">test-vm2</property>' in rw.xml.read_text()


def test_29_create_other_classes(rw):
    rw.ok("admin.vm.Create.StandaloneVM", "dom0", "", b"name=sa29 label=blue")
    rw.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl29 label=black")
    rw.ok("admin.vm.CreateInPool.AppVM", "dom0", "tpl29",
          b"name=pool29 label=red pool=varlibqubes")
    listing = rw.ok("admin.vm.List")
    assert re.search(r"^sa29 class=StandaloneVM state=Halted ", listing, re.MULTILINE)
    assert re.search(r"^tpl29 class=TemplateVM state=Halted ", listing, re.MULTILINE)
    assert re.search(r"^pool29 class=AppVM state=Halted ", listing, re.MULTILINE)
    # qids are allocated from the smallest free one and never reused concurrently
    qids = [int(rw.ok("admin.vm.property.Get", n, "qid").split(" ")[2])
            for n in ("sa29", "tpl29", "pool29")]
    assert len(set(qids)) == 3 and all(1 <= q <= 9999 for q in qids)


def test_30_create_template_rules(rw):
    with Saves(rw) as s:
        assert rw.error("admin.vm.Create.StandaloneVM", "dom0", "test-template",
                        b"name=sa30 label=red") == \
            ("ProtocolError", "StandaloneVM cannot be based on template")
        assert err_class(rw, "admin.vm.Create.AppVM", "dom0", "test-template-inexistent",
                         b"name=vm30 label=red") == "QubesVMNotFoundError"
    assert not s.changed
    assert "vm30" not in rw.ok("admin.vm.List")
    rw.ok("admin.vm.Create.AppVM", "dom0", "", b"name=vm30b label=red")
    assert rw.ok("admin.vm.property.Get", "vm30b", "template") == \
        "default=False type=vm test-template"


@pytest.mark.parametrize("payload, cls, message", [
    (b"name=test-### label=red", "QubesValueError", None),
    (b"name=--helpVM label=red", "QubesValueError", None),
    (b"name=1stVM label=red", "QubesValueError", None),
    (b"label=red", "ProtocolError", "Creation requested without key: name"),
    (b"name=vm31", "ProtocolError", "Creation requested without key: label"),
    (b"name=vm31 label=nosuchlabel", "ProtocolError", "Creation requested without key: label"),
    (b"name=vm31 label=red pool=varlibqubes", "ProtocolError",
     "Pool option specified but 'allow_pool' is False"),
    (b"name=vm31 label=red pool:private=varlibqubes", "ProtocolError",
     "Pool option specified but 'allow_pool' is False"),
    (b"name=test-vm1 label=red", "QubesVMAlreadyExistsError", "Qube already exists: test-vm1"),
    (b"name=vm31 name=vm31b label=red", "ProtocolError", "Options must be unique"),
    (b"name=vm31 label=red what=is", "ProtocolError",
     "Options does not match: name, label, pool, pool:"),
    (b"name=vm31 label=\xff", "ProtocolError", None),
    # our documented deviation: upstream aborts the connection (bare ValueError)
    (b"name=vm31 label=red junk", "ProtocolError", None),
])
def test_31_create_errors(rw, payload, cls, message):
    with Saves(rw) as s:
        name, msg = rw.error("admin.vm.Create.AppVM", "dom0", "test-template", payload)
    assert name == cls
    if message is not None:
        assert msg == message
    assert not s.changed
    assert "vm31" not in rw.ok("admin.vm.List")


def test_32_create_in_pool_errors(rw):
    with Saves(rw) as s:
        assert err_class(rw, "admin.vm.CreateInPool.AppVM", "dom0", "test-template",
                         b"name=vm32 label=red pool=nosuchpool") == "QubesException"
        assert err_class(rw, "admin.vm.CreateInPool.AppVM", "dom0", "test-template",
                         b"name=vm32 label=red pool:invalid=varlibqubes") == "ProtocolError"
        assert err_class(rw, "admin.vm.CreateInPool.AppVM", "dom0", "test-template",
                         b"name=vm32 label=red pool=varlibqubes pool:root=varlibqubes") == \
            "ProtocolError"
    assert not s.changed


# -- 33: removal ---------------------------------------------------------------------------

def test_33_remove(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm33 label=red")
    with Saves(rw) as s:
        assert rw.call("admin.vm.Remove", "vm33") == b"0\0"
    assert s.changed
    assert "vm33" not in rw.ok("admin.vm.List")
    assert '<property name="name">vm33</property>' not in rw.xml.read_text()
    assert err_class(rw, "admin.vm.List", "vm33") == "QubesVMNotFoundError"


def test_33_remove_refused(rw):
    with Saves(rw) as s:
        assert rw.error("admin.vm.Remove", "dom0") == \
            ("QubesVMInUseError", "'dom0' cannot be removed")
        # a template in use by an AppVM is referenced by a property
        assert err_class(rw, "admin.vm.Remove", "test-template") == "QubesVMInUseError"
    assert not s.changed
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=net33 label=red")
    rw.ok("admin.vm.property.Set", "net33", "provides_network", b"True")
    rw.ok("admin.property.Set", "dom0", "updatevm", b"net33")
    assert err_class(rw, "admin.vm.Remove", "net33") == "QubesVMInUseError"
    rw.ok("admin.property.Reset", "dom0", "updatevm")
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=rpm33 label=red")
    rw.ok("admin.vm.property.Set", "rpm33", "installed_by_rpm", b"True")
    assert err_class(rw, "admin.vm.Remove", "rpm33") == "QubesVMInUseError"
    rw.ok("admin.vm.Remove", "net33")


# -- 37-40: state and labels ---------------------------------------------------------------

def test_37_current_state_halted(ro):
    assert ro.call("admin.vm.CurrentState", "test-vm1") == \
        b"0\0mem=0 mem_static_max=0 cputime=0 power_state=Halted"


def test_38_labels(ro):
    assert ro.ok("admin.label.List") == \
        "red\norange\nyellow\ngreen\ngray\nblue\npurple\nblack\n"
    colors = {"red": "0xcc0000", "orange": "0xf57900", "yellow": "0xedd400",
              "green": "0x73d216", "gray": "0x555555", "blue": "0x3465a4",
              "purple": "0x75507b", "black": "0x000000"}
    for index, (name, color) in enumerate(colors.items(), start=1):
        assert ro.ok("admin.label.Get", "dom0", name) == color
        assert ro.ok("admin.label.Index", "dom0", name) == str(index)
        assert ro.ok("admin.label.Get", "dom0", str(index)) == color
    assert ro.call("admin.label.Get", "dom0", " ") == b""  # a space breaks the framing
    name = err_class(ro, "admin.label.Get", "dom0", "bad!label")
    assert name == "QubesInvalidLabelError" and is_a(name, qexc.ProtocolError)
    assert err_class(ro, "admin.label.Get", "dom0", "nosuchlabel") == "QubesLabelNotFoundError"


def test_39_label_create(rw):
    with Saves(rw) as s:
        assert rw.call("admin.label.Create", "dom0", "cyan", b"0x00ffff") == b"0\0"
    assert s.changed
    assert rw.ok("admin.label.Index", "dom0", "cyan") == "9"
    assert rw.ok("admin.label.Get", "dom0", "cyan") == "0x00ffff"
    assert rw.ok("admin.label.List").endswith("black\ncyan\n")
    assert '<label id="label-9" color="0x00ffff">cyan</label>' in rw.xml.read_text()
    with Saves(rw) as s:
        for payload, fragment in ((b"0x00ff\xffff", "encoded in ASCII"),
                                  (b"0x00fffff", "length of 8"),
                                  (b"0X00ffff", "must start with: 0x"),
                                  (b"0x00fffg", "hexadecimal digits after prefix")):
            name, msg = rw.error("admin.label.Create", "dom0", "newlabel", payload)
            assert name == "QubesInvalidLabelValueError", payload
            assert fragment in msg, (payload, msg)
        for bad in ("01", "../xxx", "strange-name!@#$"):
            assert is_a(err_class(rw, "admin.label.Create", "dom0", bad, b"0x00ffff"),
                        qexc.ProtocolError), bad
        assert err_class(rw, "admin.label.Create", "dom0", "red", b"0x00ffff") == \
            "QubesLabelInUseError"
    assert not s.changed
    rw.ok("admin.label.Remove", "dom0", "cyan")


def test_40_label_remove(rw):
    rw.ok("admin.label.Create", "dom0", "magenta", b"0xff00ff")
    rw.ok("admin.label.Create", "dom0", "teal", b"0x008080")
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm40 label=teal")
    with Saves(rw) as s:
        assert err_class(rw, "admin.label.Remove", "dom0", "teal") == "QubesLabelInUseError"
        assert err_class(rw, "admin.label.Remove", "dom0", "nosuch") == \
            "QubesLabelNotFoundError"
        assert rw.error("admin.label.Remove", "dom0", "red") == \
            ("ProtocolError", "Can only remove custom labels")
    assert not s.changed
    with Saves(rw) as s:
        assert rw.call("admin.label.Remove", "dom0", "magenta") == b"0\0"
    assert s.changed
    assert "magenta" not in rw.ok("admin.label.List")
    assert "magenta" not in rw.xml.read_text()


# -- 46: disposables -----------------------------------------------------------------------

def test_46_create_disposable(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=dvm46 label=green")
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=notdvm46 label=green")
    with Saves(rw) as s:
        assert err_class(rw, "admin.vm.CreateDisposable", "dvm46") == "QubesException"
        assert err_class(rw, "admin.vm.CreateDisposable", "dvm46", "oops") == \
            "PermissionDenied"
        assert err_class(rw, "admin.vm.CreateDisposable", "dvm46", "", b"other") == \
            "ProtocolError"
    assert not s.changed
    rw.ok("admin.vm.property.Set", "dvm46", "template_for_dispvms", b"True")
    rw.ok("admin.vm.feature.Set", "dvm46", "inherited", b"yes")
    with Saves(rw) as s:
        name = rw.ok("admin.vm.CreateDisposable", "dvm46")
    assert s.changed
    assert re.fullmatch(r"disp\d{1,4}", name), name
    assert re.fullmatch(rf"{name} class=DispVM state=Halted uuid=[0-9a-f-]{{36}}\n",
                        rw.ok("admin.vm.List", name))
    assert rw.ok("admin.vm.property.Get", name, "template") == "default=False type=vm dvm46"
    assert rw.ok("admin.vm.property.Get", name, "auto_cleanup") == \
        "default=False type=bool True"
    assert rw.ok("admin.vm.property.Get", name, "dispid") == \
        f"default=False type=int {name[4:]}"
    assert rw.ok("admin.vm.property.Get", name, "label") == "default=False type=label green"
    tags = rw.ok("admin.vm.tag.List", name).split("\n")
    assert "created-by-dom0" in tags and "disp-created-by-dom0" in tags
    assert rw.ok("admin.vm.feature.Get", name, "inherited") == "yes"

    reply = rw.ok("admin.vm.CreateDisposable", "dvm46", "", b"uuid")
    assert re.fullmatch(r"uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", reply), reply
    assert rw.ok("admin.vm.List", reply).split(" ")[1] == "class=DispVM"

    # dest dom0: the source's default_dispvm (dom0's follows the global one)
    assert err_class(rw, "admin.vm.CreateDisposable", "dom0") == "QubesException"
    rw.ok("admin.property.Set", "dom0", "default_dispvm", b"dvm46")
    name2 = rw.ok("admin.vm.CreateDisposable", "dom0")
    assert rw.ok("admin.vm.property.Get", name2, "template") == "default=False type=vm dvm46"
    rw.ok("admin.property.Reset", "dom0", "default_dispvm")
    # the template is in use while its disposables exist
    assert err_class(rw, "admin.vm.Remove", "dvm46") == "QubesVMInUseError"
    for vm in (name, reply, name2):
        rw.ok("admin.vm.Remove", vm)


# -- 50 (partially): the admin-permission veto runs before any side effect ---------------

def test_50_permission_event_before_side_effects(rw):
    rw.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=vm50 label=red")
    with Saves(rw) as s:
        assert err_class(rw, "admin.vm.feature.Set", "vm50", "preload-dispvm", b"x") == \
            "PermissionDenied"
        assert err_class(rw, "admin.vm.tag.Set", "vm50", "created-by-x", src="test-vm1") == \
            "PermissionDenied"
    assert not s.changed
    assert rw.ok("admin.vm.feature.List", "vm50") == ""
    assert rw.ok("admin.vm.tag.Get", "vm50", "created-by-x") == "0"


def test_04_vm_list_from_non_dom0_is_filtered(rw):
    """Item 4 in upstream mode (qrexec policy only, no userdomains.yaml): the module
    policy allows admin.vm.List from test-vm1 to @adminvm, itself and test-template, so
    exactly those three are listed, dom0 included; domains created later are not."""
    names = [line.split(" ")[0] for line in
             rw.ok("admin.vm.List", "dom0", src="test-vm1").split("\n")[:-1]]
    assert names == ["dom0", "test-template", "test-vm1"]
