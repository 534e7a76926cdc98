"""Admin API handlers (spec/admin-api.md section 3).

Each handler is declared once with `api`; the dispatcher has already checked the
declared destination, argument and payload rules and passed the gate. A handler
validates the argument and payload, fires the permission event before any side effect,
acts, and saves after a change. Raw values stay ``untrusted_...`` until validated.
"""

import asyncio
import random
import re
import string

from qubesd.dispatch import Call, require, require_arg
from qubesd.exc import (
    ProtocolError,
    QubesException,
    QubesFeatureNotFoundError,
    QubesInvalidLabelError,
    QubesInvalidLabelValueError,
    QubesLabelInUseError,
    QubesLabelNotFoundError,
    QubesTagNotFoundError,
    QubesValueError,
    QubesVMAlreadyExistsError,
    QubesVMInUseError,
    QubesVMNotFoundError,
    QubesVMNotHaltedError,
    QubesVMNotRunningError,
)
from qubesd.model.labels import Label
from qubesd.model.properties import PropertyHolder
from qubesd.model.validate import is_label_name, validate_name, validate_tag
from qubesd.model.vm import VM_CLASSES, AdminVM, DispVM
from qubesd.registry import Access as A
from qubesd.registry import Dest as D
from qubesd.registry import NamesDomain, api
from qubesd.registry import Presence as P
from qubesd.registry import Scope as S

GLOBAL, LOCAL = S.GLOBAL, S.LOCAL
R, W, X = A.READ, A.WRITE, A.EXECUTE

#: events never forwarded by admin.Events (spec 5.2)
_UNFORWARDED = ("admin-permission:", "device-get:", "device-list:", "device-list-attached:")


# -- collections ---------------------------------------------------------------------

@api("admin.vmclass.List", dest=D.ADMINVM, scope=GLOBAL, access=R)
async def vmclass_list(call: Call) -> str:
    call.fire_permission()
    names = sorted(list(VM_CLASSES) + ["RemoteVM"])
    return "".join(f"{name}\n" for name in call.filter(names))


def _list_line(vm) -> str:
    return f"{vm.name} class={type(vm).__name__} state={vm.power_state} uuid={vm.uuid}\n"


@api("admin.vm.List", dest=D.ANY, scope=GLOBAL, access=R, filtered=True)
async def vm_list(call: Call) -> str:
    call.fire_permission()
    if isinstance(call.dest, AdminVM):
        domains = call.app.sorted_domains()
    else:
        domains = [call.dest]
    return "".join(_list_line(vm) for vm in call.filter(domains))


# -- properties (one implementation for domains and the app) --------------------------

def _holder(call: Call) -> PropertyHolder:
    return call.app if call.method.name.startswith("admin.property.") else call.dest


def _escape_getall(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


async def property_list(call: Call) -> str:
    holder = _holder(call)
    call.fire_permission()
    return "".join(f"{name}\n" for name in call.filter(holder.PROPS))


async def property_get(call: Call) -> str:
    holder = _holder(call)
    holder.prop(call.arg)  # unknown property: QubesNoSuchPropertyError before permission
    call.fire_permission()
    return call.daemon.render_property(call, holder, call.arg)


async def property_getall(call: Call) -> str:
    holder = _holder(call)
    call.fire_permission()
    return "".join(
        f"{name} {_escape_getall(call.daemon.render_property(call, holder, name))}\n"
        for name in call.filter(holder.PROPS))


async def property_get_default(call: Call) -> str | None:
    holder = _holder(call)
    prop = holder.prop(call.arg)
    call.fire_permission()
    try:
        value = prop.compute_default(holder)
    except AttributeError:
        return None
    value = call.daemon.visible_value(call, prop, value)
    return f"type={prop.kind} {'' if value is None else value}"


async def property_help(call: Call) -> str:
    holder = _holder(call)
    prop = holder.prop(call.arg)
    call.fire_permission()
    return " ".join(prop.doc.split())


async def property_set(call: Call) -> None:
    holder = _holder(call)
    prop = holder.prop(call.arg)
    newvalue = prop.sanitize(holder, call.payload)
    call.fire_permission(newvalue=newvalue)
    holder.set(call.arg, newvalue)
    await call.save()


async def property_reset(call: Call) -> None:
    holder = _holder(call)
    holder.prop(call.arg)
    call.fire_permission()
    holder.reset(call.arg)
    await call.save()


for _prefix, _dest, _scope in (("admin.vm.property.", D.ANY, LOCAL),
                               ("admin.property.", D.ADMINVM, GLOBAL)):
    api(_prefix + "List", dest=_dest, scope=_scope, access=R)(property_list)
    api(_prefix + "Get", dest=_dest, arg=P.REQUIRED, scope=_scope, access=R)(property_get)
    api(_prefix + "GetAll", dest=_dest, scope=_scope, access=R)(property_getall)
    api(_prefix + "GetDefault", dest=_dest, arg=P.REQUIRED, scope=_scope,
        access=R)(property_get_default)
    api(_prefix + "Help", dest=_dest, arg=P.REQUIRED, scope=_scope, access=R)(property_help)
    api(_prefix + "Set", dest=_dest, arg=P.REQUIRED, payload=P.OPTIONAL, scope=_scope,
        access=W, names_domain=NamesDomain.PROPERTY_VALUE)(property_set)
    api(_prefix + "Reset", dest=_dest, arg=P.REQUIRED, scope=_scope,
        access=W)(property_reset)


# -- features -------------------------------------------------------------------------

_FEATURE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_FEATURE_VALUE = re.compile(r"[\x20-\x7e]*\Z")


@api("admin.vm.feature.List", dest=D.ANY, scope=LOCAL, access=R)
async def feature_list(call: Call) -> str:
    call.fire_permission()
    return "".join(f"{name}\n" for name in call.filter(call.dest.features))


@api("admin.vm.feature.Get", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=R)
async def feature_get(call: Call) -> str:
    call.fire_permission()
    try:
        return call.dest.features[call.arg]
    except KeyError:
        raise QubesFeatureNotFoundError(call.dest.name, call.arg) from None


def _feature_chain(call: Call, next_hop) -> str:
    call.fire_permission()
    vm, seen = call.dest, set()
    while vm is not None and vm.name not in seen:
        if call.arg in vm.features:
            return vm.features[call.arg]
        seen.add(vm.name)
        vm = next_hop(vm)
    raise QubesFeatureNotFoundError(call.dest.name, call.arg)


def _with_admin(call: Call, hop):
    dom0 = call.app.domains["dom0"]

    def next_hop(vm):
        following = hop(vm) if hop else None
        return following if following is not None else (dom0 if vm is not dom0 else None)
    return next_hop


@api("admin.vm.feature.CheckWithTemplate", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=R)
async def feature_check_template(call: Call) -> str:
    return _feature_chain(call, lambda vm: vm.template_obj())


@api("admin.vm.feature.CheckWithNetvm", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=R)
async def feature_check_netvm(call: Call) -> str:
    return _feature_chain(call, lambda vm: vm.netvm_obj())


@api("admin.vm.feature.CheckWithAdminVM", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=R)
async def feature_check_adminvm(call: Call) -> str:
    return _feature_chain(call, _with_admin(call, None))


@api("admin.vm.feature.CheckWithTemplateAndAdminVM", dest=D.ANY, arg=P.REQUIRED,
     scope=LOCAL, access=R)
async def feature_check_template_adminvm(call: Call) -> str:
    return _feature_chain(call, _with_admin(call, lambda vm: vm.template_obj()))


@api("admin.vm.feature.Set", dest=D.ANY, arg=P.REQUIRED, payload=P.OPTIONAL, scope=LOCAL,
     access=W)
async def feature_set(call: Call) -> None:
    untrusted_name = call.arg
    try:
        untrusted_value = call.payload.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("Feature value contains non-ASCII characters") from None
    require(bool(_FEATURE_NAME.match(untrusted_name)), "feature name contains illegal characters")
    require(bool(_FEATURE_VALUE.match(untrusted_value)),
            f"{untrusted_name} value contains illegal characters")
    if untrusted_name.startswith("service."):
        service = untrusted_name[len("service."):]
        if not service or "/" in service or service in (".", "..") or (
                len(service) > 48 and not service.startswith("app-dispvm.")):
            raise QubesValueError(f"Invalid service name: {service!r}")
    name, value = untrusted_name, untrusted_value
    call.fire_permission(value=value)
    call.dest.set_feature(name, value)
    await call.save()


@api("admin.vm.feature.Remove", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=W)
async def feature_remove(call: Call) -> None:
    call.fire_permission()
    if call.arg not in call.dest.features:
        raise QubesFeatureNotFoundError(call.dest.name, call.arg)
    call.dest.remove_feature(call.arg)
    await call.save()


# -- tags -----------------------------------------------------------------------------

@api("admin.vm.tag.List", dest=D.ANY, scope=LOCAL, access=R)
async def tag_list(call: Call) -> str:
    call.fire_permission()
    return "".join(f"{tag}\n" for tag in call.filter(sorted(call.dest.tags)))


@api("admin.vm.tag.Get", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=R)
async def tag_get(call: Call) -> str:
    tag = validate_tag(call.arg)
    call.fire_permission()
    return "1" if tag in call.dest.tags else "0"


@api("admin.vm.tag.Set", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=W,
     names_domain=NamesDomain.MEMBERSHIP_TAG)
async def tag_set(call: Call) -> None:
    tag = validate_tag(call.arg)
    call.fire_permission()
    call.dest.add_tag(tag)
    await call.save()


@api("admin.vm.tag.Remove", dest=D.ANY, arg=P.REQUIRED, scope=LOCAL, access=W,
     names_domain=NamesDomain.MEMBERSHIP_TAG)
async def tag_remove(call: Call) -> None:
    tag = validate_tag(call.arg)
    call.fire_permission()
    if tag not in call.dest.tags:
        raise QubesTagNotFoundError(call.dest.name, tag)
    call.dest.remove_tag(tag)
    await call.save()


# -- labels ---------------------------------------------------------------------------

def _label_arg(call: Call) -> str:
    if not is_label_name(call.arg):
        raise QubesInvalidLabelError(f"Invalid label name: {call.arg!r}")
    return call.arg


@api("admin.label.List", dest=D.ADMINVM, scope=GLOBAL, access=R)
async def label_list(call: Call) -> str:
    call.fire_permission()
    labels = [call.app.labels[i].name for i in sorted(call.app.labels)]
    return "".join(f"{name}\n" for name in call.filter(labels))


@api("admin.label.Get", dest=D.ADMINVM, arg=P.REQUIRED, scope=GLOBAL, access=R)
async def label_get(call: Call) -> str:
    label = call.app.get_label(_label_arg(call))
    call.fire_permission(label=label)
    return label.color


@api("admin.label.Index", dest=D.ADMINVM, arg=P.REQUIRED, scope=GLOBAL, access=R)
async def label_index(call: Call) -> str:
    label = call.app.get_label(_label_arg(call))
    call.fire_permission(label=label)
    return str(label.index)


@api("admin.label.Create", dest=D.ADMINVM, arg=P.REQUIRED, payload=P.REQUIRED, scope=GLOBAL,
     access=W)
async def label_create(call: Call) -> None:
    name = _label_arg(call)
    if name.isdigit():
        raise QubesInvalidLabelError("Label name cannot be a number")
    try:
        untrusted_color = call.payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise QubesInvalidLabelValueError("label color must be encoded in ASCII") from None
    if len(untrusted_color) != 8:
        raise QubesInvalidLabelValueError("label color must be of length of 8")
    if not untrusted_color.startswith("0x"):
        raise QubesInvalidLabelValueError("label color must start with: 0x")
    if not all(c in string.hexdigits for c in untrusted_color[2:]):
        raise QubesInvalidLabelValueError(
            "label color must contain only hexadecimal digits after prefix")
    color = untrusted_color
    if any(label.name == name for label in call.app.labels.values()):
        raise QubesLabelInUseError(name)
    call.fire_permission(color=color)
    index = max([8, *call.app.labels]) + 1
    call.app.labels[index] = Label(index, name, color)
    call.app.domain_changed(None)
    await call.save()


@api("admin.label.Remove", dest=D.ADMINVM, arg=P.REQUIRED, scope=GLOBAL, access=W)
async def label_remove(call: Call) -> None:
    label = call.app.get_label(_label_arg(call))
    if label.index <= 8:
        raise ProtocolError("Can only remove custom labels")
    call.fire_permission(label=label)
    if any(vm.get_or("label", None) == label for vm in call.app.domains.values()):
        raise QubesLabelInUseError(label.name)
    del call.app.labels[label.index]
    call.app.domain_changed(None)
    await call.save()


# -- creation and removal ---------------------------------------------------------------

_VOLUMES = ("root", "private", "volatile", "kernel")


def _parse_create_payload(call: Call, allow_pool: bool) -> dict:
    try:
        untrusted_payload = call.payload.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("Payload must be ASCII") from None
    untrusted_options: dict[str, str] = {}
    for untrusted_token in untrusted_payload.split(" "):
        untrusted_key, sep, untrusted_value = untrusted_token.partition("=")
        # upstream aborts the connection here (a bare ValueError); we answer instead
        require(bool(sep), f"Invalid option {untrusted_token!r}: expected key=value")
        require(untrusted_key not in untrusted_options, "Options must be unique")
        untrusted_options[untrusted_key] = untrusted_value
    options: dict = {"pools": {}}
    for untrusted_key, untrusted_value in untrusted_options.items():
        if untrusted_key == "name":
            options["name"] = validate_name(untrusted_value)
        elif untrusted_key == "label":
            if not is_label_name(untrusted_value) or untrusted_value.isdigit():
                raise QubesInvalidLabelError(f"Invalid label name: {untrusted_value!r}")
            try:  # an unknown label leaves the key unset, as upstream
                options["label"] = call.app.get_label(untrusted_value)
            except QubesLabelNotFoundError:
                pass
        elif untrusted_key == "pool" or untrusted_key.startswith("pool:"):
            require(allow_pool, "Pool option specified but 'allow_pool' is False")
            if untrusted_key == "pool":
                options["pool"] = untrusted_value
            else:
                volume = untrusted_key[len("pool:"):]
                require(volume in _VOLUMES, f"Invalid volume name: {volume!r}")
                options["pools"][volume] = untrusted_value
        else:
            raise ProtocolError("Options does not match: name, label, pool, pool:")
    for key in ("name", "label"):
        require(key in options, f"Creation requested without key: {key}")
    require(not ("pool" in options and options["pools"]),
            "Conflicting options: pool and pool:<volume>")
    return options


def _volume_config(vm, pool: str | None, pools: dict[str, str]) -> str:
    """Record where each volume lives (storage itself is a later issue).

    As upstream, ``pool=`` moves only the volumes that are written and not snapshots:
    an AppVM's root follows its template and the kernel stays in the kernel pool.
    """
    app = vm.app
    template = vm.template_obj()
    has_template = template is not None
    layout = (  # name, default pool, rw, snapshot of the template, saved
        ("root", app.get("default_pool_root"), True, has_template, not has_template),
        ("private", app.get("default_pool_private"), True, False, True),
        ("volatile", app.get("default_pool_volatile"), True, False, False),
        ("kernel", app.get("default_pool_kernel"), False, False, False),
    )
    lines = ["<volume-config>"]
    for name, default, rw, snapshot, saved in layout:
        chosen = pools.get(name) or (pool if rw and not snapshot else None) or default
        if snapshot and template is not None:
            chosen = pools.get(name) or _template_root_pool(template) or default
        lines.append(f'  <volume name="{name}" pool="{chosen}" rw="{rw}" '
                     f'snap_on_start="{snapshot}" save_on_stop="{saved}"/>')
    lines.append("</volume-config>")
    return "\n      ".join(lines)


def _template_root_pool(template) -> str | None:
    for kept in template.volume_config:
        match = re.search(r'<volume name="root" pool="([^"]*)"', kept)
        if match:
            return match.group(1)
    return None


def _make_create(klass: str, allow_pool: bool):
    cls = VM_CLASSES[klass]

    async def create(call: Call) -> None:
        has_template = "template" in cls.PROPS
        require(not call.arg or has_template, f"{klass} cannot be based on template")
        options = _parse_create_payload(call, allow_pool)
        details = {"pool": options.get("pool"), "pools": options["pools"],
                   "name": options["name"], "label": options["label"]}
        if call.arg:
            details["template"] = call.arg
        call.fire_permission(**details)
        app = call.app
        if options["name"] in app.domains:
            raise QubesVMAlreadyExistsError(f"Qube already exists: {options['name']}")
        template = None
        if has_template:
            template = call.arg or app.get_or(
                "default_dispvm" if klass == "DispVM" else "default_template", None)
            if call.arg and call.arg not in app.domains:
                raise QubesVMNotFoundError(call.arg)
            if template is None:
                raise QubesValueError(
                    "Template for the qube not specified, nor default template set.")
        for pool in [options.get("pool"), *options["pools"].values()]:
            if pool is not None and pool not in app.pools:
                raise QubesException(f"Unknown storage pool {pool}")
        vm = app.add_new_vm(cls, options["name"], options["label"], template=template)
        vm.volume_config = [_volume_config(vm, options.get("pool"), options["pools"])]
        vm.add_tag(f"created-by-{call.src.name}")
        await call.save()
    return create


for _klass in ("AppVM", "DispVM", "StandaloneVM", "TemplateVM"):
    api(f"admin.vm.Create.{_klass}", dest=D.ADMINVM, arg=P.OPTIONAL, payload=P.REQUIRED,
        scope=GLOBAL, access=W, names_domain=NamesDomain.TEMPLATE_ARG)(
        _make_create(_klass, allow_pool=False))
    api(f"admin.vm.CreateInPool.{_klass}", dest=D.ADMINVM, arg=P.OPTIONAL,
        payload=P.REQUIRED, scope=GLOBAL, access=W, names_domain=NamesDomain.TEMPLATE_ARG)(
        _make_create(_klass, allow_pool=True))


@api("admin.vm.CreateDisposable", dest=D.ANY, arg=P.OPTIONAL, payload=P.OPTIONAL,
     scope=GLOBAL, access=W, names_domain=NamesDomain.DISPVM_TEMPLATE)
async def create_disposable(call: Call) -> str:
    require_arg(call, ("", "preload"), "preload")
    require(call.payload in (b"", b"uuid"), "Invalid payload: expected empty or 'uuid'")
    app = call.app
    if isinstance(call.dest, AdminVM):
        template_name = call.src.get_or("default_dispvm", None)
        template = app.domains.get(template_name) if template_name else None
    else:
        template = call.dest
    call.fire_permission(dispvm_template=template)
    if template is None or not template.get_or("template_for_dispvms", False):
        raise QubesException(f"Qube {template} is not a disposable template")
    used = {vm.get_or("dispid", None) for vm in app.domains.values() if isinstance(vm, DispVM)}
    dispid = random.choice([i for i in range(10000) if i not in used
                            and f"disp{i}" not in app.domains])
    vm = app.add_new_vm(DispVM, f"disp{dispid}", template.get("label"),
                        template=template.name, dispid=dispid, auto_cleanup=True)
    vm.add_tag(f"created-by-{call.src.name}")
    vm.add_tag(f"disp-created-by-{call.src.name}")
    for name, value in template.features.items():
        if not name.startswith("preload-dispvm"):
            vm.features[name] = value
    await call.save()
    if call.arg == "preload":
        return ""
    return f"uuid:{vm.uuid}" if call.payload == b"uuid" else vm.name


@api("admin.vm.Remove", dest=D.ANY, scope=GLOBAL, access=W)
async def vm_remove(call: Call) -> None:
    call.fire_permission()
    vm = call.dest
    if isinstance(vm, AdminVM):
        raise QubesVMInUseError(vm, "'dom0' cannot be removed")
    if vm.get_or("installed_by_rpm", False):
        raise QubesVMInUseError(vm, f"VM installed by package manager: {vm.name}")
    if not vm.is_halted():
        raise QubesVMNotHaltedError(vm)
    users = call.app.references_to(vm)
    if users:
        raise QubesVMInUseError(vm, f"Domain is in use: {vm.name!r}; used by: "
                                    f"{', '.join(users)}")
    call.app.remove_vm(vm)
    call.daemon.power.backend.undefine(vm.uuid)
    await call.save()


# -- lifecycle --------------------------------------------------------------------------

@api("admin.vm.Start", dest=D.ANY, scope=LOCAL, access=X)
async def vm_start(call: Call) -> None:
    call.fire_permission()
    await call.daemon.power.start(call.dest)


_SHUTDOWN_ARGS = {"": (False, False), "force": (True, False), "wait": (False, True),
                  "force+wait": (True, True), "wait+force": (True, True)}


@api("admin.vm.Shutdown", dest=D.ANY, arg=P.OPTIONAL, scope=LOCAL, access=X)
async def vm_shutdown(call: Call) -> None:
    require(call.arg in _SHUTDOWN_ARGS, "Argument must match: force, wait")
    force, wait = _SHUTDOWN_ARGS[call.arg]
    call.fire_permission(force=force, wait=wait)
    await call.daemon.power.shutdown(call.dest, force=force, wait=wait)


def _simple_power(name: str, operation: str):
    async def handler(call: Call) -> None:
        call.fire_permission()
        await getattr(call.daemon.power, operation)(call.dest)
    api(f"admin.vm.{name}", dest=D.ANY, scope=LOCAL, access=X)(handler)


for _name, _op in (("Pause", "pause"), ("Unpause", "unpause"), ("Suspend", "suspend"),
                   ("Resume", "resume"), ("Kill", "kill")):
    _simple_power(_name, _op)


@api("admin.vm.CurrentState", dest=D.ANY, scope=LOCAL, access=R)
async def vm_current_state(call: Call) -> str:
    call.fire_permission()
    vm = call.dest
    if isinstance(vm, AdminVM):
        mem = call.app.host_memory_mib * 1024
        return f"mem={mem} mem_static_max={mem} cputime=0 power_state=Running"
    if vm.is_halted():
        return "mem=0 mem_static_max=0 cputime=0 power_state=Halted"
    mem, mem_max, cputime, _ = call.daemon.power.backend.current_state(vm.uuid)
    return (f"mem={mem} mem_static_max={mem_max} cputime={cputime} "
            f"power_state={vm.power_state}")


# -- streams ------------------------------------------------------------------------------

@api("admin.Events", dest=D.ANY, scope=GLOBAL, access=R, stream=True, filtered=True)
async def events(call: Call) -> None:
    call.fire_permission()
    send = call.send_event
    app = call.app
    only = None if isinstance(call.dest, AdminVM) else call.dest

    def forward(subject, event: str, **kwargs) -> None:
        if event.startswith(_UNFORWARDED) or event == "domain-is-fully-usable":
            return
        if only is not None and subject is not only:
            return
        if call.visible((subject, event, kwargs)):
            send(subject, event, call.redact(subject, event, kwargs) if call.redact else kwargs)

    send(app, "connection-established", {})
    app.bus.subscribe("*", forward)
    try:
        await asyncio.Event().wait()  # until the client goes away and we are cancelled
    finally:
        app.bus.unsubscribe("*", forward)


@api("admin.vm.Stats", dest=D.ANY, scope=GLOBAL, access=R, stream=True, filtered=True)
async def stats(call: Call) -> None:
    call.fire_permission()
    app = call.app
    backend = call.daemon.power.backend
    if not isinstance(call.dest, AdminVM) and call.dest.is_halted():
        raise QubesVMNotRunningError(call.dest)
    call.send_event(app, "connection-established", {})
    while True:
        figures = backend.stats()
        if isinstance(call.dest, AdminVM):
            running = [vm for vm in app.sorted_domains()
                       if not isinstance(vm, AdminVM) and vm.uuid in figures]
        else:
            running = [call.dest] if call.dest.uuid in figures else []
        for vm in call.filter(running):
            info = figures[vm.uuid]
            call.send_event(vm, "vm-stats", {
                "memory_kb": info.get("memory_kb", 0),
                "memory_assigned_total": info.get("memory_kb", 0),
                "memory_assigned_usable": info.get("memory_kb", 0),
                "memory_with_swap_used": info.get("memory_kb", 0),
                "cpu_time": info.get("cpu_time", 0),
                "cpu_usage": info.get("cpu_usage", 0),
                "online_vcpus": info.get("online_vcpus", 0)})
        await asyncio.sleep(app.get("stats_interval"))

