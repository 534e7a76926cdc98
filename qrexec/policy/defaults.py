"""The default qrexec policy: upstream-like Admin API defaults.

Every Admin API method gets ``!include-service <method> * include/admin-
{local,global}-{ro,rwx}`` by its scope (spec admin-api.md section 3), the
``policy.*`` services go to ``include/admin-policy-{ro,rwx}``; the include
files are empty (each ``-ro`` one includes its ``-rwx`` one), so everything
is denied until an administrator adds lines there.

The shipped copy lives in ``policies/policy.d`` of the source tree;
:func:`render_default_policy` produces the same files, and
:func:`install_default_policy` installs them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEVICE_CLASSES = ("block", "pci", "usb", "mic")
VM_CLASSES = ("AppVM", "DispVM", "StandaloneVM", "TemplateVM")

# (method, scope, rwx) -- rwx is True for write or execute methods
_GLOBAL_RO = [
    "admin.vmclass.List", "admin.vm.List", "admin.vm.Stats", "admin.Events",
    "admin.property.List", "admin.property.Get", "admin.property.GetAll",
    "admin.property.GetDefault", "admin.property.Help",
    "admin.pool.List", "admin.pool.ListDrivers", "admin.pool.Info", "admin.pool.UsageDetails",
    "admin.pool.volume.List", "admin.label.List", "admin.label.Get", "admin.label.Index",
    "admin.deviceclass.List",
]
_GLOBAL_RWX = [
    *(f"admin.vm.Create.{c}" for c in VM_CLASSES),
    *(f"admin.vm.CreateInPool.{c}" for c in VM_CLASSES),
    "admin.vm.CreateDisposable", "admin.vm.Remove",
    "admin.property.Set", "admin.property.Reset",
    "admin.pool.Add", "admin.pool.Remove", "admin.pool.Set.revisions_to_keep",
    "admin.pool.Set.ephemeral_volatile", "admin.label.Create", "admin.label.Remove",
    "admin.backup.Execute", "admin.backup.Cancel",
]
_LOCAL_RO = [
    "admin.vm.CurrentState",
    "admin.vm.property.List", "admin.vm.property.Get", "admin.vm.property.GetAll",
    "admin.vm.property.GetDefault", "admin.vm.property.Help",
    "admin.vm.feature.List", "admin.vm.feature.Get", "admin.vm.feature.CheckWithTemplate",
    "admin.vm.feature.CheckWithNetvm", "admin.vm.feature.CheckWithAdminVM",
    "admin.vm.feature.CheckWithTemplateAndAdminVM",
    "admin.vm.tag.List", "admin.vm.tag.Get", "admin.vm.notes.Get", "admin.vm.firewall.Get",
    "admin.vm.volume.List", "admin.vm.volume.Info", "admin.vm.volume.ListSnapshots",
    *(f"admin.vm.device.{c}.{m}" for c in DEVICE_CLASSES
      for m in ("Available", "Assigned", "Attached")),
    "admin.vm.device.denied.List", "admin.backup.Info",
]
_LOCAL_RWX = [
    "admin.vm.Start", "admin.vm.Shutdown", "admin.vm.Pause", "admin.vm.Unpause",
    "admin.vm.Suspend", "admin.vm.Resume", "admin.vm.Kill", "admin.vm.Console",
    "admin.vm.property.Set", "admin.vm.property.Reset",
    "admin.vm.feature.Set", "admin.vm.feature.Remove",
    "admin.vm.tag.Set", "admin.vm.tag.Remove", "admin.vm.notes.Set",
    "admin.vm.firewall.Set", "admin.vm.firewall.Reload",
    "admin.vm.volume.Revert", "admin.vm.volume.Resize", "admin.vm.volume.Clear",
    "admin.vm.volume.CloneFrom", "admin.vm.volume.CloneTo",
    "admin.vm.volume.Set.revisions_to_keep", "admin.vm.volume.Set.rw",
    "admin.vm.volume.Set.ephemeral", "admin.vm.volume.Import", "admin.vm.volume.ImportWithSize",
    *(f"admin.vm.device.{c}.{m}" for c in DEVICE_CLASSES
      for m in ("Assign", "Unassign", "Attach", "Detach", "Set.assignment")),
    "admin.vm.device.denied.Add", "admin.vm.device.denied.Remove",
]

#: Admin API method -> (scope, "ro" | "rwx")
ADMIN_METHODS: dict[str, tuple[str, str]] = {
    **{m: ("global", "ro") for m in _GLOBAL_RO},
    **{m: ("global", "rwx") for m in _GLOBAL_RWX},
    **{m: ("local", "ro") for m in _LOCAL_RO},
    **{m: ("local", "rwx") for m in _LOCAL_RWX},
}

#: policy admin services -> "ro" | "rwx"
POLICY_METHODS: dict[str, str] = {
    "policy.List": "ro", "policy.Get": "ro", "policy.GetFiles": "ro",
    "policy.include.List": "ro", "policy.include.Get": "ro",
    "policy.Replace": "rwx", "policy.Remove": "rwx",
    "policy.include.Replace": "rwx", "policy.include.Remove": "rwx",
    "policy.acl.Get": "ro", "policy.acl.Replace": "rwx", "policy.Explain": "ro",
}

_HEADER = """\
## Do not modify this file, create a new policy file with a lower number in the
## filename instead. For example `30-admin-user.policy`.
"""

_INCLUDE_TEXT = """\
## This file is included from all {what} policy lines of
## {main} in the default configuration.
## Lines here use the per-service syntax: SOURCE TARGET ACTION [PARAMS],
## for example:
##   mgmt-vm @tag:managed allow target=dom0
## Note that policy parsing stops at the first match.
{include}
"""


def render_default_policy() -> dict[str, str]:
    """The default policy files: relative path -> text."""
    files: dict[str, str] = {}
    lines = [_HEADER, "###", "### Default Admin API qrexec policy", "###", "",
             "## WARNING: these services let a qube control the system. Allow them only to",
             "## trusted qubes, and add target=dom0 to every allow/ask line.", ""]
    width = max(len(m) for m in ADMIN_METHODS)
    for method in sorted(ADMIN_METHODS):
        scope, rw = ADMIN_METHODS[method]
        lines.append(f"!include-service {method:<{width}} * include/admin-{scope}-{rw}")
    files["90-admin-default.policy"] = "\n".join(lines) + "\n"

    lines = [_HEADER, "###", "### Default policy for the policy administration services", "###",
             ""]
    width = max(len(m) for m in POLICY_METHODS)
    for method in sorted(POLICY_METHODS):
        lines.append(f"!include-service {method:<{width}} * include/admin-policy-"
                     f"{POLICY_METHODS[method]}")
    files["90-admin-policy-default.policy"] = "\n".join(lines) + "\n"

    files["91-admin-default-deny.policy"] = _HEADER + """
## Default action is deny anyway; notify=no mutes the spurious notification
## for GetAll, which clients call when only some properties are allowed.

admin.vm.property.GetAll * @anyvm @anyvm   deny notify=no
admin.vm.property.GetAll * @anyvm @adminvm deny notify=no

admin.property.GetAll    * @anyvm @anyvm   deny notify=no
admin.property.GetAll    * @anyvm @adminvm deny notify=no
"""
    for scope, what in (("local", "per-qube"), ("global", "global"), ("policy", "policy")):
        main = ("90-admin-policy-default.policy" if scope == "policy"
                else "90-admin-default.policy")
        files[f"include/admin-{scope}-rwx"] = _INCLUDE_TEXT.format(
            what=f"{what} read-write/execute", main=main, include="")
        files[f"include/admin-{scope}-ro"] = _INCLUDE_TEXT.format(
            what=f"{what} read-only", main=main,
            include=f"\n## Write access implies read access\n!include include/admin-{scope}-rwx\n")
    return files


def shipped_policy_dir() -> Path:
    """``policies/policy.d`` of the source tree."""
    return Path(__file__).resolve().parents[2] / "policies" / "policy.d"


def install_default_policy(config_dir: str | Path) -> bool:
    """Create ``<config_dir>/policy.d`` with the default policy if missing.

    Copies the shipped ``policies/policy.d`` (or, if the source tree is not
    available, the rendered defaults).  Returns True if it installed
    something, False if ``policy.d`` already existed.  The directory is
    filled under a temporary name and renamed, so a crash never leaves a
    half-installed policy.
    """
    config_dir = Path(config_dir)
    target = config_dir / "policy.d"
    if target.exists():
        return False
    config_dir.mkdir(parents=True, exist_ok=True)
    tmp = config_dir / f".policy.d.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    src = shipped_policy_dir()
    if src.is_dir() and (src / "90-admin-default.policy").is_file():
        shutil.copytree(src, tmp)
    else:
        for rel, text in render_default_policy().items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    (tmp / "include").mkdir(exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            return False
        raise
    fd = os.open(config_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
