"""The demo seeded by `make run` on a fresh state directory.

Two users, alice and bob, each with a management VM and a GUI domain, overlapping
domain sets (both own ``dev`` and ``build``, both may look at the network domains), and
a security officer VM. Their management VMs are started so that qrexec gives each a
socket, and ``qvm-ls`` through ``qrexec-client-vm`` shows two different views.
"""

import logging
import shutil
from pathlib import Path

from qrexec.policy.defaults import install_default_policy
from qubesd.model.vm import AppVM, TemplateVM
from qubesd.registry import REGISTRY

log = logging.getLogger("qubesd.demo")

POLICIES = Path(__file__).resolve().parent.parent / "policies"

#: name, class, label, extra properties (after the template, which is the default)
DOMAINS = (
    ("debian-12-xfce", TemplateVM, "black", {}),
    ("fedora-41-xfce", TemplateVM, "black", {}),
    ("sys-net", AppVM, "red", {"provides_network": True}),
    ("sys-firewall", AppVM, "green", {"provides_network": True}),
    ("default-dvm", AppVM, "red", {"template_for_dispvms": True}),
    ("sys-gui-alice", AppVM, "purple", {}),
    ("sys-gui-bob", AppVM, "blue", {}),
    ("alice-admin", AppVM, "purple", {}),
    ("bob-admin", AppVM, "blue", {}),
    ("sys-secadmin", AppVM, "black", {}),
    ("work", AppVM, "purple", {}),
    ("personal", AppVM, "yellow", {}),
    ("bob-work", AppVM, "blue", {}),
    ("bob-personal", AppVM, "orange", {}),
    ("dev", AppVM, "green", {}),
    ("build", AppVM, "green", {}),
)
GUI_OF = {"work": "sys-gui-alice", "personal": "sys-gui-alice",
          "bob-work": "sys-gui-bob", "bob-personal": "sys-gui-bob"}
ACTORS = ("alice-admin", "bob-admin", "sys-gui-alice", "sys-gui-bob")
OFFICERS = ("sys-secadmin",)
RUNNING = ("sys-net", "sys-firewall", "alice-admin", "bob-admin", "sys-gui-alice",
           "sys-gui-bob", "sys-secadmin", "work")


def demo_policy() -> str:
    """qrexec rules letting the users' VMs reach qubesd; the Casbin layer then limits
    each of them to its own sets. Generated from the method registry."""
    lines = ["# Written by the `make run` demo: the multi-user VMs may reach qubesd;",
             "# userdomains.yaml (the Casbin layer) decides what each may do there.", ""]
    for method in sorted(REGISTRY.methods):
        m = REGISTRY.methods[method]
        if m.socket != "admin":
            continue
        if method.startswith("policy."):
            lines.append(f"{method} * @tag:demo-officer @adminvm allow target=dom0")
            continue
        lines.append(f"{method} * @tag:demo-user @adminvm allow target=dom0")
        if m.dest_adminvm is not True:
            lines.append(f"{method} * @tag:demo-user @anyvm allow target=dom0")
    return "\n".join(lines) + "\n"


def seed_config(config_dir: Path) -> None:
    install_default_policy(config_dir)
    policy_dir = config_dir / "policy.d"
    (policy_dir / "30-demo-multiuser.policy").write_text(demo_policy())
    target = config_dir / "userdomains.yaml"
    if not target.exists():
        shutil.copyfile(POLICIES / "userdomains.demo.yaml", target)


async def seed_domains(daemon) -> None:
    app = daemon.app
    app.set("default_kernel", "6.12.40-1.fc41")
    for name, cls, label, props in DOMAINS:
        if name in app.domains:
            continue
        template = "debian-12-xfce" if cls is AppVM else None
        vm = app.add_new_vm(cls, name, label, template=template)
        for key, value in props.items():
            vm.set(key, value)
        vm.add_tag("created-by-dom0")
        if name == "debian-12-xfce":
            app.set("default_template", name)
        if name == "default-dvm":
            app.set("default_dispvm", name)
    app.set("default_netvm", "sys-firewall")
    app.domains["sys-net"].set("netvm", None)
    app.domains["sys-firewall"].set("netvm", "sys-net")
    for name, gui in GUI_OF.items():
        app.domains[name].set("guivm", gui)
    for name in ACTORS:
        app.domains[name].add_tag("demo-user")
        app.domains[name].set("netvm", None)
    for name in OFFICERS:
        app.domains[name].add_tag("demo-officer")
    await daemon.committer.commit()
    for name in RUNNING:
        await daemon.power.start(app.domains[name])
    log.info("demo seeded: %d domains; users alice and bob, officer sec", len(app.domains))
