"""The app: every domain, label, pool and global property, and the event bus."""

import os
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

from qubesd.events import EventBus
from qubesd.exc import (
    QubesLabelNotFoundError,
    QubesPropertyValueError,
    QubesValueError,
    QubesVMAlreadyExistsError,
    QubesVMNotFoundError,
)
from qubesd.model.labels import DEFAULT_LABELS, Label
from qubesd.model.properties import (
    BOOL,
    INT,
    NO_DEFAULT,
    STR,
    VM,
    Prop,
    PropertyHolder,
    props_table,
)
from qubesd.model.validate import validate_name
from qubesd.model.vm import AdminVM, BaseVM

MAX_QID = 9999


def _global_vm(klass: str | None = None, dispvm_template: bool = False):
    def check(app, prop: Prop, value: str | None):
        if value is None:
            return None
        vm = app.domains.get(value)
        if vm is None:
            raise QubesPropertyValueError(
                app, prop.name, value, f"Can't set {prop.name} to non-existing qube {value}")
        if klass is not None and type(vm).__name__ != klass:
            raise QubesPropertyValueError(app, prop.name, value,
                                          f"wrong VM class: {value} is not a {klass}")
        if prop.name == "default_netvm" and not vm.get_or("provides_network", False):
            raise QubesValueError(f"The {value} qube does not provide network")
        if dispvm_template and not vm.get_or("template_for_dispvms", False):
            raise QubesPropertyValueError(
                app, prop.name, value,
                f"VM {value} is not allowed to be used as a disposable template")
        return value
    return check


def _positive(app, prop: Prop, value: int) -> int:
    if value <= 0:
        raise QubesPropertyValueError(app, prop.name, value, f"{prop.name} must be positive")
    return value


def _pool(app, prop: Prop, value: str) -> str:
    if value not in app.pools:
        raise QubesPropertyValueError(app, prop.name, value, f"No such storage pool: {value}")
    return value


def _default_pool(app) -> str:
    if "default" in app.pools:
        return "default"
    for name, config in app.pools.items():
        if config.get("driver", "").startswith("file"):
            return name
    return next(iter(app.pools), "varlibqubes")


GLOBAL_PROPS = props_table(*(
    Prop(name, kind, default, stage=3, check=check, doc=doc, read_only=ro)
    for name, kind, default, check, doc, ro in (
        ("check_updates_vm", BOOL, True, None,
         "Check for updates inside qubes", False),
        ("clockvm", VM, None, _global_vm(),
         "Which VM to use as NTP proxy for updating AdminVM", False),
        ("default_audiovm", VM, "dom0", _global_vm(),
         "Default AudioVM for VMs.", False),
        ("default_dispvm", VM, None, _global_vm(dispvm_template=True),
         "Default DispVM base for service calls", False),
        ("default_guivm", VM, "dom0", _global_vm(), "Default GuiVM for VMs.", False),
        ("default_kernel", STR, NO_DEFAULT, None, "Which kernel to use when not overriden in VM",
         False),
        ("default_netvm", VM, None, _global_vm(),
         ("Default NetVM for AppVMs. Initial state is `None`, which means that AppVMs "
          "are not connected to the Internet."), False),
        ("default_pool", STR, _default_pool, _pool,
         "Default storage pool", False),
        ("default_pool_kernel", STR, lambda app: app.get("default_pool"), _pool,
         "Default storage pool for kernel volumes", False),
        ("default_pool_private", STR, lambda app: app.get("default_pool"), _pool,
         "Default storage pool for private volumes", False),
        ("default_pool_root", STR, lambda app: app.get("default_pool"), _pool,
         "Default storage pool for root volumes", False),
        ("default_pool_volatile", STR, lambda app: app.get("default_pool"), _pool,
         "Default storage pool for volatile volumes", False),
        ("default_qrexec_timeout", INT, 60, _positive,
         "Default time in seconds after which qrexec connection attempt is deemed failed",
         False),
        ("default_shutdown_timeout", INT, 60, _positive,
         "Default time in seconds for VM shutdown to complete", False),
        ("default_template", VM, NO_DEFAULT, _global_vm("TemplateVM"),
         "Default template for new AppVMs", False),
        ("management_dispvm", VM, None, _global_vm(dispvm_template=True),
         "Default DispVM base for managing VMs", False),
        ("maxmem", INT, lambda app: app.host_memory_mib, None,
         "Maximum amount of memory available for qubes, in MiB", True),
        ("no_cpus", INT, lambda app: app.host_cpus, None,
         "Number of CPUs in the host", True),
        ("stats_interval", INT, 3, _positive,
         "Interval in seconds for VM stats reporting (memory, CPU usage)", False),
        ("updatevm", VM, None, _global_vm(),
         "Which VM to use as `yum` proxy for updating AdminVM and TemplateVMs", False),
    )))


class App(PropertyHolder):
    """The whole system state held by qubesd."""

    PROPS = GLOBAL_PROPS

    def __init__(self) -> None:
        super().__init__()
        self.bus = EventBus()
        self.domains: dict[str, BaseVM] = {}
        self.by_uuid: dict[str, BaseVM] = {}
        self.by_qid: dict[int, BaseVM] = {}
        self.labels: dict[int, Label] = {}
        self.pools: dict[str, dict[str, str]] = {}
        self.host_memory_mib = 4096
        self.host_cpus = 2
        self._sorted: list[BaseVM] | None = None
        #: called with the domain after any change to it (store and caches listen)
        self.change_listeners: list[Callable[[BaseVM | None], None]] = []
        self.xids: dict[str, int] = {}

    # -- PropertyHolder -----------------------------------------------------------------
    def holder_label(self) -> str:
        return "Qubes"

    def __str__(self) -> str:
        return "Qubes"

    def _fire(self, event: str, pre_event: bool = False, **kwargs) -> None:
        self.bus.fire(self, event, pre_event=pre_event, **kwargs)

    def fire_event(self, event: str, pre_event: bool = False, **kwargs) -> list:
        return self.bus.fire(self, event, pre_event=pre_event, **kwargs)

    def _changed(self) -> None:
        self.domain_changed(None)

    def domain_changed(self, vm: BaseVM | None) -> None:
        for listener in self.change_listeners:
            listener(vm)

    def backend_xid(self, vm: BaseVM) -> int:
        return self.xids.get(vm.uuid, -1)

    # -- initial state ------------------------------------------------------------------
    def load_initial_values(self) -> None:
        """What upstream's qubes-create writes: default labels, pools, dom0."""
        for index, name, color in DEFAULT_LABELS:
            self.labels[index] = Label(index, name, color)
        self.pools["varlibqubes"] = {"name": "varlibqubes", "dir_path": "/var/lib/qubes",
                                     "driver": "file", "revisions_to_keep": "1",
                                     "ephemeral_volatile": "False"}
        self.pools["linux-kernel"] = {"name": "linux-kernel",
                                      "dir_path": "/var/lib/qubes/vm-kernels",
                                      "driver": "linux-kernel"}
        self._values["default_pool_kernel"] = "linux-kernel"
        dom0 = AdminVM(self)
        dom0.load_value("label", self.get_label("black"))
        self.attach(dom0)

    # -- labels -------------------------------------------------------------------------
    def get_label(self, untrusted_label: Any) -> Label:
        """Look a label up by index, name, or digit string, as upstream."""
        if isinstance(untrusted_label, Label):
            return untrusted_label
        if isinstance(untrusted_label, int):
            if untrusted_label in self.labels:
                return self.labels[untrusted_label]
        else:
            for label in self.labels.values():
                if label.name == untrusted_label:
                    return label
            if isinstance(untrusted_label, str) and untrusted_label.isdigit() \
                    and int(untrusted_label) in self.labels:
                return self.labels[int(untrusted_label)]
        raise QubesLabelNotFoundError(untrusted_label)

    # -- domains --------------------------------------------------------------------------
    def sorted_domains(self) -> list[BaseVM]:
        """dom0 first, then by name (upstream's VM ordering)."""
        if self._sorted is None:
            self._sorted = sorted(self.domains.values(),
                                  key=lambda vm: (vm.qid != 0, vm.name))
        return self._sorted

    def __iter__(self) -> Iterator[BaseVM]:
        return iter(self.sorted_domains())

    def lookup(self, untrusted_ref: str) -> BaseVM:
        """Resolve a caller's domain reference: a name or ``uuid:<uuid>``."""
        from qubesd.exc import QubesVMInvalidUUIDError
        from qubesd.model.validate import is_uuid
        if untrusted_ref.startswith("uuid:"):
            untrusted_uuid = untrusted_ref[5:]
            if not is_uuid(untrusted_uuid):
                raise QubesVMInvalidUUIDError(untrusted_uuid)
            vm = self.by_uuid.get(untrusted_uuid)
            if vm is None:
                raise QubesVMNotFoundError(untrusted_ref)
            return vm
        name = validate_name(untrusted_ref)
        vm = self.domains.get(name)
        if vm is None:
            raise QubesVMNotFoundError(name)
        return vm

    def allocate_qid(self) -> int:
        """The lowest unused qid in 1..9999, as upstream."""
        for qid in range(1, MAX_QID + 1):
            if qid not in self.by_qid:
                return qid
        raise QubesValueError("No free qid")

    def attach(self, vm: BaseVM) -> None:
        """Put a domain into the collection without events (used by load)."""
        self.domains[vm.name] = vm
        self.by_uuid[vm.uuid] = vm
        self.by_qid[vm.qid] = vm
        self._sorted = None

    def add_new_vm(self, cls: type[BaseVM], name: str, label: Any, template: str | None = None,
                   qid: int | None = None, uuid: str | None = None,
                   **props: Any) -> BaseVM:
        name = validate_name(name)
        if name in self.domains:
            raise QubesVMAlreadyExistsError(f"Qube already exists: {name}")
        vm = cls(self, name, qid if qid is not None else self.allocate_qid(),
                 uuid or str(uuidlib.uuid4()))
        vm.load_value("label", self.get_label(label))
        if template is not None:
            # validated like any later set, before the domain joins the collection
            vm.load_value("template", vm.prop("template").check(vm, vm.prop("template"),
                                                                 template))
        for key, value in props.items():
            vm.load_value(key, vm.prop(key).check(vm, vm.prop(key), value)
                          if vm.prop(key).check else value)
        self.attach(vm)
        vm._loaded = True
        self.domain_changed(vm)
        self.fire_event("domain-add", vm=vm)
        vm.fire_event("domain-init")
        return vm

    def remove_vm(self, vm: BaseVM) -> None:
        self.fire_event("domain-pre-delete", pre_event=True, vm=vm)
        del self.domains[vm.name]
        del self.by_uuid[vm.uuid]
        del self.by_qid[vm.qid]
        self._sorted = None
        self.domain_changed(vm)
        self.fire_event("domain-delete", vm=vm)

    def references_to(self, vm: BaseVM) -> list[str]:
        """Every property naming ``vm``, as upstream's 'Domain is in use' check."""
        found = [f"Qubes.{name}" for name, value in self._values.items()
                 if self.PROPS[name].kind == VM and value == vm.name]
        for other in self.domains.values():
            if other is vm:
                continue
            for name, value in other.explicit_items():
                if other.PROPS.get(name) is not None and other.PROPS[name].kind == VM \
                        and value == vm.name:
                    found.append(f"{other.name}.{name}")
        return found


def host_memory_mib() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 4096
