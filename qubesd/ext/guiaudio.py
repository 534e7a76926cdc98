"""Keeps the ``guivm-<name>`` and ``audiovm-<name>`` tags in step with the properties.

Exactly one such tag per domain (spec 9.2), so policies can target ``@tag:guivm-X``.
The multi-user layer also relies on the guivm tag to find the domains a GUI domain
displays.
"""

from qubesd.model.vm import AdminVM


class GuiAudioTagsExtension:
    KINDS = ("guivm", "audiovm")

    def __init__(self, daemon) -> None:
        self.app = daemon.app
        bus = self.app.bus
        for kind in self.KINDS:
            bus.subscribe(f"property-set:{kind}", self.on_vm_property)
            bus.subscribe(f"property-reset:{kind}", self.on_vm_property)
            bus.subscribe(f"property-set:default_{kind}", self.on_default)
            bus.subscribe(f"property-reset:default_{kind}", self.on_default)
        bus.subscribe("domain-init", self.on_init)
        for vm in self.app.domains.values():  # domain-load: fix tags of a loaded store
            self.sync(vm, quiet=True)

    def sync(self, vm, quiet: bool = False) -> None:
        if isinstance(vm, AdminVM):
            return
        for kind in self.KINDS:
            if kind not in vm.PROPS:
                continue
            target = vm.get_or(kind, None)
            wanted = f"{kind}-{target}" if target else None
            for tag in [t for t in vm.tags if t.startswith(f"{kind}-") and t != wanted]:
                if quiet:
                    del vm.tags[tag]
                    vm.xml_cache = None
                else:
                    vm.remove_tag(tag)
            if wanted and wanted not in vm.tags:
                if quiet:
                    vm.tags[wanted] = None
                    vm.xml_cache = None
                else:
                    vm.add_tag(wanted)

    def on_vm_property(self, subject, event: str, **kwargs) -> None:
        if subject is not self.app:
            self.sync(subject)

    def on_default(self, subject, event: str, **kwargs) -> None:
        kind = event.split(":", 1)[1][len("default_"):]
        for vm in list(self.app.domains.values()):
            if kind in vm.PROPS and vm.is_default(kind):
                self.sync(vm)

    def on_init(self, subject, event: str, **kwargs) -> None:
        self.sync(subject)
