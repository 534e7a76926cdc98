"""qubes.xml persistence through the real daemon (spec/admin-api.md 7).

Every mutating call survives a restart; read calls never rewrite the file; the upstream
sample loads and keeps every stored value across a save; an interrupted save leaves the
old file whole; 50 concurrent writers are all acknowledged and all durable.
"""

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lxml import etree
from qubesd_harness import QubesdProcess

from qubesd.store import QubesXmlFile

SAMPLE = Path("/work/shared/data/qubes-upstream-sample.xml")
ROOT = Path(__file__).resolve().parent.parent


def restart(q: QubesdProcess) -> None:
    assert q.stop() == 0, q.log.read_text()[-2000:]
    q.start()


def stamp(q) -> tuple[int, int, bytes]:
    st = os.stat(q.xml)
    return st.st_ino, st.st_mtime_ns, q.xml.read_bytes()


def lines(text: str) -> list[str]:
    assert text == "" or text.endswith("\n"), text
    return text.split("\n")[:-1]


def snapshot(q: QubesdProcess) -> dict:
    """Everything the API shows about the stored state."""
    snap = {"list": q.ok("admin.vm.List"), "global": q.ok("admin.property.GetAll"),
            "labels": {n: (q.ok("admin.label.Get", "dom0", n),
                           q.ok("admin.label.Index", "dom0", n))
                       for n in lines(q.ok("admin.label.List"))}, "vms": {}}
    for line in lines(snap["list"]):
        name = line.split(" ")[0]
        snap["vms"][name] = {
            "props": q.ok("admin.vm.property.GetAll", name),
            "features": {f: q.ok("admin.vm.feature.Get", name, f)
                         for f in lines(q.ok("admin.vm.feature.List", name))},
            "feature-order": q.ok("admin.vm.feature.List", name),
            "tags": q.ok("admin.vm.tag.List", name),
        }
    return snap


# -- every mutating call survives a restart ---------------------------------------------

def test_mutations_survive_restart(qubesd_fixture):
    q = qubesd_fixture
    q.ok("admin.label.Create", "dom0", "cyan", b"0x00ffff")
    q.ok("admin.label.Create", "dom0", "gone", b"0x123456")
    q.ok("admin.label.Remove", "dom0", "gone")
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=net label=cyan")
    q.ok("admin.vm.property.Set", "net", "provides_network", b"True")
    q.ok("admin.property.Set", "dom0", "default_netvm", b"net")
    q.ok("admin.property.Set", "dom0", "stats_interval", b"9")
    q.ok("admin.property.Set", "dom0", "clockvm", b"net")
    q.ok("admin.property.Set", "dom0", "updatevm", b"")
    q.ok("admin.vm.property.Set", "test-vm1", "vcpus", b"3")
    q.ok("admin.vm.property.Set", "test-vm1", "netvm", b"")
    q.ok("admin.vm.property.Set", "test-vm1", "kernelopts", b"a\\b\nc <&> \"'")
    q.ok("admin.vm.property.Set", "test-vm1", "memory", b"123")
    q.ok("admin.vm.property.Reset", "test-vm1", "memory")
    q.ok("admin.vm.property.Set", "test-vm1", "label", b"green")
    q.ok("admin.vm.property.Set", "test-template", "default_user", b"bob")
    q.ok("admin.vm.feature.Set", "test-vm1", "b-feature", b"1")
    q.ok("admin.vm.feature.Set", "test-vm1", "a-feature", b"x <y> & \"z\"")
    q.ok("admin.vm.feature.Set", "test-vm1", "empty", b"")
    q.ok("admin.vm.feature.Set", "test-vm1", "removed", b"1")
    q.ok("admin.vm.feature.Remove", "test-vm1", "removed")
    q.ok("admin.vm.feature.Set", "dom0", "dom0-feature", b"on")
    q.ok("admin.vm.tag.Set", "test-vm1", "zz-tag")
    q.ok("admin.vm.tag.Set", "test-vm1", "aa-tag")
    q.ok("admin.vm.tag.Set", "test-vm1", "gone-tag")
    q.ok("admin.vm.tag.Remove", "test-vm1", "gone-tag")
    q.ok("admin.vm.Create.StandaloneVM", "dom0", "", b"name=sa label=blue")
    q.ok("admin.vm.CreateInPool.TemplateVM", "dom0", "", b"name=tpl2 label=black "
         b"pool=varlibqubes")
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=removed label=red")
    q.ok("admin.vm.Remove", "removed")
    q.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=dvm label=purple")
    q.ok("admin.vm.property.Set", "dvm", "template_for_dispvms", b"True")
    disp = q.ok("admin.vm.CreateDisposable", "dvm")
    q.ok("admin.vm.property.Set", disp, "auto_cleanup", b"False")
    before = snapshot(q)
    xml_before = q.xml.read_bytes()
    restart(q)
    after = snapshot(q)
    assert after == before
    # stopping saved the same content (no drift on a save without change)
    assert q.xml.read_bytes() == xml_before
    # spot checks, so an empty snapshot cannot pass
    assert q.ok("admin.vm.property.Get", "test-vm1", "kernelopts") == \
        "default=False type=str a\\b\nc <&> \"'"
    assert q.ok("admin.vm.feature.List", "test-vm1") == "b-feature\na-feature\nempty\n"
    assert q.ok("admin.label.Index", "dom0", "cyan") == "9"
    assert q.error("admin.label.Get", "dom0", "gone")[0] == "QubesLabelNotFoundError"
    assert "removed" not in q.ok("admin.vm.List")
    assert f"{disp} class=DispVM" in q.ok("admin.vm.List")
    assert q.ok("admin.property.Get", "dom0", "updatevm") == "default=False type=vm "
    restart(q)
    assert snapshot(q) == before


def test_xml_mode_and_no_leftovers(qubesd_fixture):
    q = qubesd_fixture
    q.ok("admin.vm.tag.Set", "test-vm1", "x")
    assert stat.S_IMODE(os.stat(q.xml).st_mode) == 0o660
    assert [p.name for p in q.xml.parent.iterdir() if p.name.startswith("qubes.xml~")] == []
    etree.fromstring(q.xml.read_bytes())  # well-formed


# -- read calls never write ------------------------------------------------------------

READ_CALLS = [
    ("admin.vmclass.List", "dom0", ""), ("admin.vm.List", "dom0", ""),
    ("admin.vm.List", "test-vm1", ""),
    ("admin.vm.property.List", "test-vm1", ""), ("admin.vm.property.Get", "test-vm1", "netvm"),
    ("admin.vm.property.Get", "test-vm1", "nosuch"),
    ("admin.vm.property.GetAll", "test-vm1", ""),
    ("admin.vm.property.GetAll", "test-template", ""), ("admin.vm.property.GetAll", "dom0", ""),
    ("admin.vm.property.GetDefault", "test-vm1", "vcpus"),
    ("admin.vm.property.Help", "test-vm1", "label"),
    ("admin.property.List", "dom0", ""), ("admin.property.Get", "dom0", "default_kernel"),
    ("admin.property.GetAll", "dom0", ""),
    ("admin.property.GetDefault", "dom0", "default_pool"),
    ("admin.property.Help", "dom0", "clockvm"),
    ("admin.vm.feature.List", "test-vm1", ""), ("admin.vm.feature.Get", "test-vm1", "f"),
    ("admin.vm.feature.Get", "test-vm1", "missing"),
    ("admin.vm.feature.CheckWithTemplate", "test-vm1", "f"),
    ("admin.vm.feature.CheckWithNetvm", "test-vm1", "f"),
    ("admin.vm.feature.CheckWithAdminVM", "test-vm1", "f"),
    ("admin.vm.feature.CheckWithTemplateAndAdminVM", "test-vm1", "f"),
    ("admin.vm.tag.List", "test-vm1", ""), ("admin.vm.tag.Get", "test-vm1", "t"),
    ("admin.label.List", "dom0", ""), ("admin.label.Get", "dom0", "red"),
    ("admin.label.Index", "dom0", "red"), ("admin.label.Get", "dom0", "nosuch"),
    ("admin.vm.CurrentState", "test-vm1", ""), ("admin.vm.CurrentState", "dom0", ""),
    ("policy.List", "dom0", ""), ("policy.Get", "dom0", "90-admin-default"),
    ("policy.GetFiles", "dom0", "admin.vm.List"), ("policy.include.List", "dom0", ""),
    ("policy.include.Get", "dom0", "admin-local-ro"), ("policy.acl.Get", "dom0", ""),
    ("policy.Explain", "dom0", ""), ("policy.Audit", "dom0", ""),
    ("policy.acl.Report", "dom0", ""), ("policy.acl.WhoCan", "dom0", "test-vm1"),
    ("policy.acl.CanI", "dom0", "test-vm1"),
]


def test_read_calls_never_write(qubesd_fixture):
    q = qubesd_fixture
    q.ok("admin.vm.feature.Set", "test-vm1", "f", b"v")
    q.ok("admin.vm.tag.Set", "test-vm1", "t")
    before = stamp(q)
    from qubesd import daemon as _daemon  # noqa: F401 - registers every method
    from qubesd.registry import REGISTRY
    read_methods = {m.name for m in REGISTRY
                    if m.socket == "admin" and not m.mutating and not m.stream}
    assert read_methods <= {c[0] for c in READ_CALLS}, \
        read_methods - {c[0] for c in READ_CALLS}
    for _ in range(3):
        for method, dest, arg in READ_CALLS:
            reply = q.call(method, dest, arg)
            assert reply[:2] in (b"0\0", b"2\0"), (method, reply)
    assert stamp(q) == before


# -- the upstream sample -------------------------------------------------------------------

def model(data: bytes) -> dict:
    """The stored values of a qubes.xml, order-insensitive where upstream is."""
    root = etree.fromstring(data, etree.XMLParser(remove_blank_text=True))

    def device_sets(domain):
        found = []
        for devices in domain.iterfind("devices"):
            items = sorted(
                (tuple(sorted(dev.attrib.items())),
                 tuple(sorted((o.get("name"), o.text or "") for o in dev.iterfind("option"))))
                for dev in devices.iterfind("device"))
            if items:  # empty <devices class="pci"/> elements are not significant
                found.append((devices.get("class"), tuple(items)))
        return sorted(found)

    domains = {}
    for d in root.iterfind("domains/domain"):
        domains[d.get("id")] = {
            "class": d.get("class"),
            "properties": {p.get("name"): p.text or "" for p in d.iterfind(
                "properties/property")},
            "features": {f.get("name"): f.text or "" for f in d.iterfind("features/feature")},
            "tags": {t.get("name") for t in d.iterfind("tags/tag")},
            "devices": device_sets(d),
            "volumes": {v.get("name"): dict(v.attrib) for v in d.iterfind(
                "volume-config/volume")},
        }
    return {
        "labels": [(lb.get("id"), lb.get("color"), lb.text) for lb in root.iterfind(
            "labels/label")],
        "pools": {p.get("name"): dict(p.attrib) for p in root.iterfind("pools/pool")},
        "properties": {p.get("name"): p.text or "" for p in root.iterfind(
            "properties/property")},
        "domains": domains,
    }


def by_name(stored: dict, name: str) -> dict:
    for domain in stored["domains"].values():
        if domain["properties"].get("name", "dom0") == name:
            return domain
    raise KeyError(name)


@pytest.fixture
def sample(tmp_path):
    root = tmp_path / "q"
    (root / "lib").mkdir(parents=True)
    shutil.copy(SAMPLE, root / "lib" / "qubes.xml")
    daemon = QubesdProcess(root).start()
    yield daemon
    daemon.stop()


def test_sample_loads(sample):
    q = sample
    stored = model(SAMPLE.read_bytes())
    listed = {}
    for line in lines(q.ok("admin.vm.List")):
        name, klass, state, _uuid = line.split(" ")
        listed[name] = (klass[len("class="):], state[len("state="):])
    expected = {d["properties"].get("name", "dom0"): (d["class"], "Running" if
                d["class"] == "AdminVM" else "Halted") for d in stored["domains"].values()}
    assert listed == expected
    assert len(listed) == 14
    for domain in stored["domains"].values():
        name = domain["properties"].get("name", "dom0")
        for prop, text in domain["properties"].items():
            reply = q.ok("admin.vm.property.Get", name, prop)
            head, _, value = reply.partition(" type=")
            assert head == "default=False", (name, prop, reply)
            assert value.split(" ", 1)[1] == text, (name, prop, reply, text)
        assert q.ok("admin.vm.feature.List", name) == "".join(
            f"{f}\n" for f in domain["features"])
        for feature, value in domain["features"].items():
            assert q.ok("admin.vm.feature.Get", name, feature) == value
        assert set(lines(q.ok("admin.vm.tag.List", name))) == domain["tags"], name
    for prop, text in stored["properties"].items():
        reply = q.ok("admin.property.Get", "dom0", prop)
        assert reply.startswith("default=False type=") and reply.split(" ", 2)[2] == text
    assert lines(q.ok("admin.label.List")) == [lb[2] for lb in stored["labels"]]
    assert q.ok("admin.label.Get", "dom0", "cyan") == "0x00ffff"
    # uuid addressing works on loaded domains
    uuid = by_name(stored, "sys-usb")["properties"]["uuid"]
    assert q.ok("admin.vm.List", f"uuid:{uuid}").startswith("sys-usb class=DispVM ")


def test_sample_keeps_every_value_across_save(sample):
    q = sample
    original = model(SAMPLE.read_bytes())
    q.ok("admin.vm.feature.Set", "work", "added-by-test", b"1")
    saved = model(q.xml.read_bytes())
    restart(q)
    reloaded = model(q.xml.read_bytes())
    expected = original
    by_name(expected, "work")["features"]["added-by-test"] = "1"
    assert saved == expected
    assert reloaded == expected
    assert q.ok("admin.vm.feature.Get", "work", "added-by-test") == "1"


def test_sample_label_and_global_changes(sample):
    q = sample
    original = model(SAMPLE.read_bytes())
    q.ok("admin.label.Create", "dom0", "pink", b"0xff88cc")
    q.ok("admin.property.Set", "dom0", "stats_interval", b"4")
    q.ok("admin.vm.tag.Set", "vault", "secret")
    restart(q)
    after = model(q.xml.read_bytes())
    original["labels"].append(("label-10", "0xff88cc", "pink"))
    original["properties"]["stats_interval"] = "4"
    by_name(original, "vault")["tags"].add("secret")
    assert after == original


# -- interrupted saves -------------------------------------------------------------------

class Interrupted(Exception):
    pass


def test_save_interrupted_before_rename(tmp_path):
    path = tmp_path / "qubes.xml"
    old = SAMPLE.read_bytes()
    path.write_bytes(old)
    store = QubesXmlFile(path)
    store.read()

    def boom(tmp):
        assert Path(tmp).read_bytes() == b"<qubes>new</qubes>\n"  # fully written first
        raise Interrupted

    store.before_rename = boom
    with pytest.raises(Interrupted):
        store.write(b"<qubes>new</qubes>\n")
    assert path.read_bytes() == old
    assert model(path.read_bytes()) == model(old)
    assert [p.name for p in tmp_path.iterdir()] == ["qubes.xml"]  # temp file removed
    # the next save works
    store.before_rename = None
    store.write(b"<qubes/>\n")
    assert path.read_bytes() == b"<qubes/>\n"


def test_save_killed_before_rename(tmp_path):
    path = tmp_path / "qubes.xml"
    old = SAMPLE.read_bytes()
    path.write_bytes(old)
    script = (
        "import os, sys\n"
        "from qubesd.store import QubesXmlFile\n"
        "f = QubesXmlFile(sys.argv[1])\n"
        "f.read()\n"
        "f.before_rename = lambda tmp: os._exit(7)\n"
        "f.write(b'<qubes>' + b'x' * 100000 + b'</qubes>')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], check=False, cwd=ROOT,
                          capture_output=True, timeout=30)
    assert proc.returncode == 7, proc.stderr
    assert path.read_bytes() == old
    assert model(path.read_bytes()) == model(old)


def test_external_replacement_is_not_overwritten(qubesd_fixture):
    """7.3: a qubes.xml replaced behind the daemon's back is not silently overwritten."""
    q = qubesd_fixture
    foreign = q.xml.read_bytes().replace(b"</domains>", b"</domains>\n<!-- foreign -->")
    tmp = q.xml.with_name("foreign.tmp")
    tmp.write_bytes(foreign)
    os.replace(tmp, q.xml)
    reply = q.call("admin.vm.tag.Set", "test-vm1", "after-foreign")
    assert reply.startswith(b"2\0QubesException\0"), reply
    assert b"Someone else modified qubes.xml" in reply
    assert q.xml.read_bytes() == foreign


# -- group commit --------------------------------------------------------------------------

def test_50_concurrent_writers(qubesd_fixture):
    q = qubesd_fixture
    replies: dict[int, bytes] = {}
    barrier = threading.Barrier(50)

    def writer(i: int) -> None:
        barrier.wait()
        replies[i] = q.call("admin.vm.feature.Set", "test-vm1", f"concurrent-{i}",
                            str(i).encode())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert replies == {i: b"0\0" for i in range(50)}
    # acknowledged means durable: already in the file before any restart
    stored = model(q.xml.read_bytes())["domains"]["domain-2"]["features"]
    assert {f"concurrent-{i}": str(i) for i in range(50)}.items() <= stored.items()
    restart(q)
    names = set(lines(q.ok("admin.vm.feature.List", "test-vm1")))
    assert {f"concurrent-{i}" for i in range(50)} <= names
    for i in (0, 17, 49):
        assert q.ok("admin.vm.feature.Get", "test-vm1", f"concurrent-{i}") == str(i)


def test_concurrent_creates_get_distinct_qids(qubesd_fixture):
    q = qubesd_fixture
    replies = {}

    def create(i: int) -> None:
        replies[i] = q.call("admin.vm.Create.AppVM", "dom0", "test-template",
                            f"name=par{i} label=red".encode())

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert replies == {i: b"0\0" for i in range(20)}
    restart(q)
    qids = [q.ok("admin.vm.property.Get", f"par{i}", "qid") for i in range(20)]
    assert len(set(qids)) == 20
