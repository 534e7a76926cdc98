"""Upstream's built-in vetoes (spec 4.2), as an extension on the permission events.

- ``created-by-*`` tags mark ownership; only dom0 may set or remove them.
- ``guivm-*`` and ``audiovm-*`` tags mirror the properties (the gui/audio extension keeps
  them in step) and decide what a GUI domain may touch; only dom0 may write them.
- A few features record internal state of preloaded disposables; nobody may change them
  through the API, dom0 included.
- Creator features: ``tag-created-vm-with`` adds tags, ``set-created-guivm`` sets the
  guivm of what a domain creates.
"""

from qubesd.exc import PermissionDenied
from qubesd.model.vm import AdminVM

PROTECTED_FEATURES = frozenset({"deferred-netvm-original", "preload-dispvm",
                                "preload-dispvm-completed", "preload-dispvm-in-progress"})


class AdminProtectExtension:
    def __init__(self, daemon) -> None:
        self.app = daemon.app
        bus = self.app.bus
        for method in ("admin.vm.tag.Set", "admin.vm.tag.Remove"):
            bus.subscribe(f"admin-permission:{method}", self.on_tag_change)
        for method in ("admin.vm.feature.Set", "admin.vm.feature.Remove"):
            bus.subscribe(f"admin-permission:{method}", self.on_feature_change)
        bus.subscribe("domain-tag-add:created-by-*", self.on_created)

    PROTECTED_TAG_PREFIXES = ("created-by-", "guivm-", "audiovm-")

    def on_tag_change(self, src, event: str, dest=None, arg: str = "", **kwargs) -> None:
        if arg.startswith(self.PROTECTED_TAG_PREFIXES) and not isinstance(src, AdminVM):
            raise PermissionDenied(
                "changing this tag is prohibited by qubes.ext.admin.AdminExtension")

    def on_feature_change(self, src, event: str, dest=None, arg: str = "", **kwargs) -> None:
        if arg in PROTECTED_FEATURES:
            raise PermissionDenied(
                "changing this feature is prohibited by qubes.ext.admin.AdminExtension")

    def on_created(self, vm, event: str, tag: str, **kwargs) -> None:
        creator = self.app.domains.get(tag[len("created-by-"):])
        if creator is None:
            return
        for extra in creator.features.get("tag-created-vm-with", "").split():
            vm.add_tag(extra)
        guivm = creator.features.get("set-created-guivm")
        if guivm and guivm in self.app.domains and "guivm" in vm.PROPS:
            vm.set("guivm", guivm)
