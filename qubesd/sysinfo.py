"""What the qrexec policy engine matches against: upstream's internal.GetSystemInfo."""


def domain_record(vm) -> dict:
    """One domain's entry in upstream's internal.GetSystemInfo."""
    get = vm.get_or
    return {
        "internal": vm.features.get("internal") or None,
        "tags": list(vm.tags),
        "type": type(vm).__name__,
        "template_for_dispvms": bool(get("template_for_dispvms", False)),
        "default_dispvm": get("default_dispvm", None),
        "icon": get("icon", None),
        "label": vm.get("label").color if get("label", None) else None,
        "guivm": get("guivm", None),
        "relayvm": None,
        "transport_rpc": None,
        "power_state": vm.power_state,
        "uuid": vm.uuid,
    }


def system_info(app) -> dict:
    """upstream's internal.GetSystemInfo: what the qrexec policy engine matches against."""
    return {"domains": {vm.name: domain_record(vm) for vm in app.sorted_domains()}}
