"""Domain classes: AdminVM, TemplateVM, AppVM, StandaloneVM, DispVM (spec 6.1, 6.2)."""

import re
from typing import TYPE_CHECKING

from qubesd.exc import QubesPropertyValueError, QubesValueError
from qubesd.model.labels import Label
from qubesd.model.properties import (
    BOOL,
    INT,
    LABEL,
    STR,
    VM,
    Prop,
    PropertyHolder,
    props_table,
)

if TYPE_CHECKING:
    from qubesd.model.app import App

ADMINVM_UUID = "00000000-0000-0000-0000-000000000000"


# -- checks used by property declarations ------------------------------------------

def _positive(holder, prop: Prop, value: int) -> int:
    if value <= 0:
        raise QubesPropertyValueError(holder, prop.name, value, f"{prop.name} must be positive")
    return value


def _non_negative(holder, prop: Prop, value: int) -> int:
    if value < 0:
        raise QubesPropertyValueError(holder, prop.name, value,
                                      f"{prop.name} must be non-negative")
    return value


def _label(holder, prop: Prop, value) -> Label:
    if isinstance(value, Label):
        return value
    return holder.app.get_label(value)


def _existing_vm(holder, prop: Prop, value: str | None):
    if value is None:
        return None
    if value not in holder.app.domains:
        raise QubesPropertyValueError(
            holder, prop.name, value, f"Can't set {prop.name} to non-existing qube {value}")
    return value


def _netvm(holder, prop: Prop, value: str | None):
    value = _existing_vm(holder, prop, value)
    if value is None:
        return None
    target = holder.app.domains[value]
    if not target.get("provides_network"):
        raise QubesValueError(f"The {value} qube does not provide network")
    # walk the chain from the new netvm: reaching the holder again would be a loop
    seen, current = set(), target
    while current is not None and current.name not in seen:
        if current is holder:
            raise QubesValueError("Loops in network are unsupported")
        seen.add(current.name)
        current = current.netvm_obj()
    return value


def _dispvm_template(holder, prop: Prop, value: str | None):
    value = _existing_vm(holder, prop, value)
    if value is not None and not holder.app.domains[value].get_or("template_for_dispvms", False):
        raise QubesPropertyValueError(
            holder, prop.name, value,
            f"VM {value} is not allowed to be used as a disposable template")
    return value


def _template_of(klass: str):
    def check(holder, prop: Prop, value: str | None):
        if value is None:
            raise QubesPropertyValueError(holder, prop.name, value, "template cannot be None")
        value = _existing_vm(holder, prop, value)
        target = holder.app.domains[value]
        if klass == "DispVM":
            if not target.get_or("template_for_dispvms", False):
                raise QubesPropertyValueError(
                    holder, prop.name, value,
                    f"VM {value} is not allowed to be used as a disposable template")
        elif type(target).__name__ != klass:
            raise QubesPropertyValueError(
                holder, prop.name, value, f"wrong VM class: {value} is not a {klass}")
        if getattr(holder, "_loaded", False) and holder.is_running():
            raise QubesPropertyValueError(
                holder, prop.name, value, "Cannot change template while qube is running")
        return value
    return check


_DEFAULT_USER = re.compile(r"[A-Za-z0-9_+,.-]+\Z")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


def _default_user(holder, prop: Prop, value: str) -> str:
    if not _DEFAULT_USER.match(value):
        raise QubesPropertyValueError(holder, prop.name, value,
                                      "Username can contain only those characters: a-zA-Z0-9_+,.-")
    return value


def _mac(holder, prop: Prop, value: str) -> str:
    if not _MAC.match(value):
        raise QubesPropertyValueError(holder, prop.name, value, "Invalid MAC address value")
    return value


def _virt_mode(holder, prop: Prop, value: str) -> str:
    value = value.lower()
    if value not in ("hvm", "pv", "pvh"):
        raise QubesPropertyValueError(holder, prop.name, value,
                                      "Invalid virtualization mode, supported values: hvm, pv, pvh")
    return value


def _kernel(holder, prop: Prop, value: str) -> str:
    if "/" in value:
        raise QubesPropertyValueError(holder, prop.name, value,
                                      "Kernel name cannot contain '/'")
    return value


def _kernelopts(holder, prop: Prop, value: str) -> str:
    if len(value) > 512:
        raise QubesPropertyValueError(holder, prop.name, value,
                                      "kernelopts longer than 512 characters")
    return value


def _provides_network(holder, prop: Prop, value: bool) -> bool:
    if not value and any(vm.get_or("netvm", None) == holder.name
                         for vm in holder.app.domains.values() if vm is not holder):
        raise QubesValueError(f"The qube {holder.name} is still used as netvm by other qubes")
    return value


def _forbidden(holder, prop: Prop, value):
    raise QubesPropertyValueError(holder, prop.name, value,
                                  f"property {prop.name!r} on {type(holder).__name__} "
                                  "instance cannot be set")


def _from_template(name: str, fallback):
    """Default: the template's value, else ``fallback`` (a value or a function)."""
    def default(vm):
        template = vm.template_obj()
        if template is not None:
            return template.get(name)
        return fallback(vm) if callable(fallback) else fallback
    return default


def _global(name: str):
    return lambda vm: vm.app.get(name)


def _ip(vm) -> str | None:
    if vm.get_or("netvm", None) is None:
        return None
    num = vm.get("dispid") if "dispid" in vm.PROPS else vm.qid
    prefix = "10.138" if "dispid" in vm.PROPS else "10.137"
    return f"{prefix}.{num >> 8}.{num & 0xff}"


def _dns(vm) -> str | None:
    if vm.get_or("netvm", None) is not None or vm.get_or("provides_network", False):
        return "10.139.1.1 10.139.1.2"
    return None


def _maxmem(vm) -> int:
    template = vm.template_obj()
    if template is not None:
        return template.get("maxmem")
    host = vm.app.host_memory_mib // 2
    if vm.features.get("os") == "Linux":
        return min(vm.get("memory") * 10, host)
    return min(4000, host)


_KIND = {"AppVM": "appvm", "TemplateVM": "templatevm", "DispVM": "dispvm",
         "StandaloneVM": "standalonevm", "AdminVM": "adminvm"}


def _icon(vm) -> str:
    kind = _KIND.get(type(vm).__name__, "appvm")
    if kind == "appvm" and vm.get_or("template_for_dispvms", False):
        kind = "templatevm"
    elif kind == "appvm" and vm.get_or("provides_network", False):
        kind = "servicevm"
    return f"{kind}-{vm.get('label').name}"


def _xid(vm) -> int:
    return vm.app.backend_xid(vm) if vm.is_running() else -1


# -- property tables ----------------------------------------------------------------

_BASE_PROPS = props_table(
    Prop("name", STR, write_once=True, doc="User-specified name of the domain."),
    Prop("qid", INT, write_once=True, doc="Internal, persistent identificator of "
         "particular domain. Note this is different from Xen domid."),
    Prop("uuid", STR, write_once=True, doc="UUID from libvirt."),
    Prop("label", LABEL, check=_label, doc="Colourful label assigned to VM. This is where "
         "the colour of the padlock is set."),
    Prop("klass", STR, lambda vm: type(vm).__name__, stateless=True,
         doc="Domain class name"),
    Prop("icon", STR, _icon, stateless=True, doc="Name of the icon of the domain"),
    Prop("devices_denied", STR, "", doc="List of denied device interface codes."),
    Prop("include_in_backups", BOOL, True, doc="If this domain is to be included in "
         "default backup."),
    Prop("default_dispvm", VM, _global("default_dispvm"), stage=4, check=_dispvm_template,
         doc="Default disposable template to use for service calls."),
)

QUBESVM_PROPS = props_table(
    Prop("autostart", BOOL, False, doc="Setting this to True means that domain will be "
         "started automatically when the system starts."),
    Prop("backup_timestamp", INT, None, doc="Time of last backup of the qube, in seconds "
         "since unix epoch"),
    Prop("debug", BOOL, False, doc="Turns on debugging features."),
    Prop("default_user", STR, _from_template("default_user", "user"), check=_default_user,
         doc="Default user to start applications as."),
    Prop("dns", STR, _dns, stateless=True, doc="DNS servers set up for this domain."),
    Prop("gateway", STR, lambda vm: None, stateless=True, doc="Gateway for other domains "
         "that use this domain as netvm."),
    Prop("gateway6", STR, lambda vm: None, stateless=True, doc="Gateway (IPv6) for other "
         "domains that use this domain as netvm."),
    Prop("installed_by_rpm", BOOL, False, doc="If this domain's image was installed from "
         "package tracked by package manager."),
    Prop("ip", STR, _ip, doc="IP address of this domain."),
    Prop("ip6", STR, lambda vm: None, doc="IPv6 address of this domain."),
    Prop("kernel", STR, _from_template("kernel", _global("default_kernel")), check=_kernel,
         doc="Kernel used by this domain."),
    Prop("keyboard_layout", STR, lambda vm: "us++", doc="Keyboard layout for this VM"),
    Prop("mac", STR, "00:16:3e:5e:6c:00", check=_mac, doc="MAC address of the NIC "
         "emulated inside VM"),
    Prop("maxmem", INT, _maxmem, check=_non_negative, doc="Maximum amount of memory "
         "available for this VM (for the purpose of the memory balancer). Set to 0 to "
         "disable memory balancing for this qube."),
    Prop("memory", INT, _from_template("memory", 400), check=_positive,
         doc="Memory initially available to the domain, in MiB."),
    Prop("provides_network", BOOL, False, check=_provides_network,
         doc="If this domain can act as network provider (formerly known as NetVM or "
         "ProxyVM)"),
    Prop("qrexec_timeout", INT, _from_template("qrexec_timeout",
                                               _global("default_qrexec_timeout")),
         check=_positive, doc="Time in seconds after which qrexec connection attempt is "
         "deemed failed."),
    Prop("shutdown_timeout", INT, _from_template("shutdown_timeout",
                                                 _global("default_shutdown_timeout")),
         check=_positive, doc="Time in seconds for shutdown of the VM, after which VM may "
         "be forcefully powered off."),
    Prop("start_time", STR, lambda vm: vm.start_time, stateless=True,
         doc="Tells when machine was started."),
    Prop("stubdom_mem", INT, None, doc="Memory amount allocated for the stubdom"),
    Prop("stubdom_uuid", STR, lambda vm: None, stateless=True, doc="Stubdomain UUID."),
    Prop("stubdom_xid", INT, lambda vm: -1, stateless=True, doc="Stubdomain xid."),
    Prop("updateable", BOOL, lambda vm: vm.template_obj() is None
         and "template" not in vm.PROPS, check=_forbidden,
         doc="True if this machine may be updated on its own."),
    Prop("vcpus", INT, _from_template("vcpus", 2), check=_positive,
         doc="Number of virtual CPUs for a qube"),
    Prop("virt_mode", STR, _from_template("virt_mode", "pvh"), check=_virt_mode,
         doc="Virtualisation mode: full virtualisation (\"HVM\"), or paravirtualisation "
         "(\"PV\"), or hybrid (\"PVH\")."),
    Prop("visible_gateway", STR, lambda vm: None, stateless=True,
         doc="Default gateway of this domain."),
    Prop("visible_gateway6", STR, lambda vm: None, stateless=True,
         doc="Default (IPv6) gateway of this domain."),
    Prop("visible_ip", STR, lambda vm: vm.get("ip"), stateless=True,
         doc="IP address of this domain as seen by the domain."),
    Prop("visible_ip6", STR, lambda vm: vm.get("ip6"), stateless=True,
         doc="IPv6 address of this domain as seen by the domain."),
    Prop("visible_netmask", STR, lambda vm: None, stateless=True,
         doc="Netmask as seen by the domain."),
    Prop("xid", INT, _xid, stateless=True, doc="Xen ID."),
    Prop("audiovm", VM, _global("default_audiovm"), stage=4, check=_existing_vm,
         doc="VM used for Audio"),
    Prop("bootmode", STR, "default", stage=4, doc="The boot mode of the qube."),
    Prop("guivm", VM, _global("default_guivm"), stage=4, check=_existing_vm,
         doc="VM used for Gui"),
    Prop("kernelopts", STR, "swiotlb=2048", stage=4, check=_kernelopts,
         doc="Kernel command line passed to domain."),
    Prop("management_dispvm", VM, _from_template("management_dispvm",
                                                 _global("management_dispvm")),
         stage=4, check=_dispvm_template,
         doc="Default disposable template to use for management tasks."),
    Prop("netvm", VM, _global("default_netvm"), stage=4, check=_netvm,
         doc="VM that provides network connection to this domain. When None, machine is "
         "disconnected. When absent, domain uses default NetVM."),
    base=_BASE_PROPS,
)

_TEMPLATE_FOR_DISPVMS = Prop(
    "template_for_dispvms", BOOL, False,
    doc="Should this VM be allowed to start as Disposable VM")


class BaseVM(PropertyHolder):
    """Everything a domain has: properties, features, tags, and a place in the app."""

    PROPS = _BASE_PROPS
    #: the class of the template this class requires, or None
    TEMPLATE_CLASS: str | None = None

    def __init__(self, app: "App", name: str, qid: int, uuid: str) -> None:
        super().__init__()
        self.app = app
        self._values.update(name=name, qid=qid, uuid=uuid)
        self.name = name
        self.qid = qid
        self.uuid = uuid
        self.features: dict[str, str] = {}
        self.tags: dict[str, None] = {}  # ordered set: saves keep the file's order
        self.devices: list = []        # opaque <devices> elements kept from qubes.xml
        self.volume_config: list = []  # opaque <volume-config> children
        self.power_state = "Halted"
        self.start_time: str | None = None
        self.xml_cache: str | None = None
        self._loaded = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def __str__(self) -> str:
        return self.name

    def holder_label(self) -> str:
        return self.name

    def _fire(self, event: str, pre_event: bool = False, **kwargs) -> None:
        self.app.bus.fire(self, event, pre_event=pre_event, **kwargs)

    def fire_event(self, event: str, pre_event: bool = False, **kwargs) -> list:
        return self.app.bus.fire(self, event, pre_event=pre_event, **kwargs)

    def _changed(self) -> None:
        self.xml_cache = None
        self.app.domain_changed(self)

    def template_obj(self) -> "BaseVM | None":
        name = self._values.get("template") if "template" in self.PROPS else None
        return self.app.domains.get(name) if name else None

    def netvm_obj(self) -> "BaseVM | None":
        if "netvm" not in self.PROPS:
            return None
        name = self.get_or("netvm", None)
        return self.app.domains.get(name) if name else None

    # -- features and tags (events per spec 5.2) --------------------------------------
    def set_feature(self, name: str, value: str) -> None:
        kwargs = {"feature": name, "value": value}
        if name in self.features:
            kwargs["oldvalue"] = self.features[name]
        self._fire(f"domain-feature-pre-set:{name}", pre_event=True, **kwargs)
        self.features[name] = value
        self._changed()
        self._fire(f"domain-feature-set:{name}", **kwargs)

    def remove_feature(self, name: str) -> None:
        self._fire(f"domain-feature-pre-delete:{name}", pre_event=True, feature=name)
        del self.features[name]
        self._changed()
        self._fire(f"domain-feature-delete:{name}", feature=name)

    def add_tag(self, tag: str) -> None:
        if tag in self.tags:
            return
        self.tags[tag] = None
        self._changed()
        self._fire(f"domain-tag-add:{tag}", tag=tag)

    def remove_tag(self, tag: str) -> None:
        del self.tags[tag]
        self._changed()
        self._fire(f"domain-tag-delete:{tag}", tag=tag)

    # -- state ----------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.power_state != "Halted"

    def is_halted(self) -> bool:
        return self.power_state == "Halted"


class AdminVM(BaseVM):
    PROPS = props_table(
        Prop("keyboard_layout", STR, "us++", doc="Keyboard layout for this VM"),
        Prop("maxmem", INT, lambda vm: vm.app.host_memory_mib, read_only=True,
             doc="Memory available to dom0, in MiB."),
        Prop("updateable", BOOL, True, read_only=True,
             doc="True if this machine may be updated on its own."),
        Prop("name", STR, write_once=True, read_only=True, doc="The name of this VM"),
        base=_BASE_PROPS,
    )

    def __init__(self, app: "App", name: str = "dom0", qid: int = 0,
                 uuid: str = ADMINVM_UUID) -> None:
        super().__init__(app, "dom0", 0, ADMINVM_UUID)
        self.power_state = "Running"

    def is_running(self) -> bool:
        return True


class QubesVM(BaseVM):
    PROPS = QUBESVM_PROPS
    VM_DIR = "appvms"


class TemplateVM(QubesVM):
    VM_DIR = "vm-templates"
    PROPS = props_table(
        Prop("netvm", VM, None, stage=4, check=_netvm,
             doc="VM that provides network connection to this domain. When None, machine "
             "is disconnected."),
        Prop("appvm_default_bootmode", STR, stage=4,
             doc="Default bootmode for AppVMs based on this template."),
        base=QUBESVM_PROPS,
    )


class StandaloneVM(QubesVM):
    PROPS = props_table(_TEMPLATE_FOR_DISPVMS, base=QUBESVM_PROPS)


class AppVM(QubesVM):
    TEMPLATE_CLASS = "TemplateVM"
    PROPS = props_table(
        _TEMPLATE_FOR_DISPVMS,
        Prop("template", VM, stage=4, allow_none=False, check=_template_of("TemplateVM"),
             doc="Template, on which this AppVM is based."),
        base=QUBESVM_PROPS,
    )


def _dispvm_include_in_backups(vm) -> bool:
    return not vm.get("auto_cleanup")


class DispVM(QubesVM):
    TEMPLATE_CLASS = "AppVM"
    PROPS = props_table(
        Prop("template", VM, stage=4, allow_none=False, check=_template_of("DispVM"),
             doc="AppVM, on which this DispVM is based."),
        Prop("auto_cleanup", BOOL, False, doc="automatically remove this VM upon shutdown"),
        Prop("dispid", INT, write_once=True, doc="Internal, persistent identifier of "
             "particular DispVM."),
        Prop("include_in_backups", BOOL, _dispvm_include_in_backups,
             doc="If this domain is to be included in default backup."),
        Prop("default_dispvm", VM, lambda vm: vm._values.get("template"), stage=4,
             check=_dispvm_template, doc="Default disposable template to use for service "
             "calls."),
        base=QUBESVM_PROPS,
    )


VM_CLASSES: dict[str, type[BaseVM]] = {
    cls.__name__: cls for cls in (AdminVM, AppVM, DispVM, StandaloneVM, TemplateVM)}

#: properties whose value names another domain (the gate's value constraints use this)
VM_REF_PROPS = frozenset(
    name for cls in VM_CLASSES.values() for name, p in cls.PROPS.items() if p.kind == VM)

__all__ = [
    "ADMINVM_UUID",
    "VM_CLASSES",
    "VM_REF_PROPS",
    "AdminVM",
    "AppVM",
    "BaseVM",
    "DispVM",
    "QubesVM",
    "StandaloneVM",
    "TemplateVM",
]
