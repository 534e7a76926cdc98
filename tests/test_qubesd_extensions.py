"""Extensions: a plugin found through its entry point subscribes to events and may veto.

The plugin is a real distribution (a .dist-info with entry_points.txt) on PYTHONPATH of a
real qubesd subprocess; nothing is patched.
"""

import textwrap

import pytest
from qubesd_harness import QubesdProcess

PLUGIN = '''
from qubesd.exc import QubesException


class VcpuCap:
    """Refuses more than 4 vcpus; records every tag added, as a feature of dom0."""

    def __init__(self, daemon):
        self.app = daemon.app
        daemon.app.bus.subscribe("property-pre-set:vcpus", self.cap)
        daemon.app.bus.subscribe("domain-tag-add:*", self.seen)

    def cap(self, vm, event, name, newvalue, **kwargs):
        if newvalue > 4:
            raise QubesException(f"vcpus capped at 4 by policy (asked {newvalue})")

    def seen(self, vm, event, tag, **kwargs):
        self.app.domains["dom0"].features["last-tag"] = f"{vm.name}:{tag}"
'''


@pytest.fixture
def qubesd_with_plugin(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "vcpucap.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "vcpucap-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vcpucap\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[qubesd.extensions]\nvcpucap = vcpucap:VcpuCap\n")
    import os
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                       os.environ.get("PYTHONPATH")]))}
    daemon = QubesdProcess(tmp_path / "q", env=env).start()
    yield daemon
    daemon.stop()


def test_plugin_is_loaded_and_logged(qubesd_with_plugin):
    assert "loaded extension vcpucap" in qubesd_with_plugin.log.read_text()


def test_pre_event_handler_vetoes_and_nothing_changes(qubesd_with_plugin):
    q = qubesd_with_plugin
    q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
    q.ok("admin.vm.property.Set", "tpl", "vcpus", b"4")
    before = q.xml.read_bytes()
    assert q.error("admin.vm.property.Set", "tpl", "vcpus", b"8") == (
        "QubesException", "vcpus capped at 4 by policy (asked 8)")
    assert q.xml.read_bytes() == before
    assert q.ok("admin.vm.property.Get", "tpl", "vcpus") == "default=False type=int 4"


def test_wildcard_subscription_sees_events(qubesd_with_plugin):
    q = qubesd_with_plugin
    q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
    q.ok("admin.vm.tag.Set", "tpl", "project-x")
    assert q.ok("admin.vm.feature.Get", "dom0", "last-tag") == "tpl:project-x"


def test_builtin_guivm_tags_follow_the_property(qubesd):
    q = qubesd
    q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
    q.ok("admin.property.Set", "dom0", "default_template", b"tpl")
    q.ok("admin.vm.Create.AppVM", "dom0", "", b"name=gui label=red")
    q.ok("admin.vm.Create.AppVM", "dom0", "", b"name=work label=red")
    tags = lambda: set(q.ok("admin.vm.tag.List", "work").split())
    assert {"guivm-dom0", "audiovm-dom0"} <= tags()
    q.ok("admin.vm.property.Set", "work", "guivm", b"gui")
    assert "guivm-gui" in tags() and "guivm-dom0" not in tags()
    q.ok("admin.vm.property.Set", "work", "guivm", b"")
    assert not any(t.startswith("guivm-") for t in tags())
    q.ok("admin.vm.property.Reset", "work", "guivm")
    assert "guivm-dom0" in tags()
    q.ok("admin.property.Set", "dom0", "default_guivm", b"gui")  # follows the default too
    assert "guivm-gui" in tags() and "guivm-dom0" not in tags()
    q.stop()
    q.start()
    assert "guivm-gui" in tags()


def test_created_by_tags_are_protected_from_domains(tmp_path):
    # a policy that lets tpl change tags: the builtin extension still vetoes created-by-*
    policy = tmp_path / "q" / "etc" / "policy.d"
    policy.mkdir(parents=True)
    (policy / "30-tags.policy").write_text(
        "admin.vm.tag.Set * tpl @anyvm allow target=dom0\n"
        "admin.vm.tag.Remove * tpl @anyvm allow target=dom0\n")
    with QubesdProcess(tmp_path / "q") as q:
        q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
        q.ok("admin.vm.tag.Set", "tpl", "ordinary", src="tpl")  # the policy allows this
        before = q.xml.read_bytes()
        for method in ("admin.vm.tag.Set", "admin.vm.tag.Remove"):
            assert q.error(method, "tpl", "created-by-dom0", src="tpl") == (
                "PermissionDenied",
                "changing this tag is prohibited by qubes.ext.admin.AdminExtension")
        assert q.xml.read_bytes() == before
        q.ok("admin.vm.tag.Set", "tpl", "created-by-x")  # dom0 may
