"""Libvirt domain XML for the backend (spec admin-api.md 6.5, in spirit).

Pure functions of plain data: no libvirt connection and nothing of the model, so
the XML can be unit-tested and reused (e.g. by a dry-run tool).

Two flavours, chosen by the libvirt domain ``type``:

* ``xen`` (also used on ``test:///``, which accepts it): close to upstream's
  ``xen.xml`` -- ``xenpvh``/``xenfv``/``xenpv`` machine types, ``ethernet``
  interface with ``backenddomain`` and ``vif-route-qubes``, console target ``xen``.
* ``kvm``/``qemu``: what a real QEMU accepts -- os type ``hvm``, a plain ``ethernet``
  tap (an ``<ip>`` or ``<script>`` there would configure the *host* side, which is
  wrong for a qube) and a serial console.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxml import etree

if TYPE_CHECKING:  # only for the annotation; backend imports this module at run time
    from qubesd.backend import DomainSpec

#: Namespace of our ``<metadata>`` child. libvirt keeps one element per namespace URI.
QUBES_METADATA_NS = "https://qubes-multiuser.invalid/libvirt/metadata/1"
QUBES_METADATA_PREFIX = "qubes"

VIRT_MODES = ("pvh", "hvm", "pv")
XEN_LIKE_TYPES = ("xen", "test")

# upstream machine/os-type pairs for Xen (xen.xml)
_XEN_OS = {
    "pvh": ("xenpvh", "xenpvh"),
    "hvm": ("xenfv", "hvm"),
    "pv": ("xenpv", "linux"),
}
_HVMLOADER = "/usr/lib/xen/boot/hvmloader"


def _sub(
    parent: etree._Element, tag: str, text: str | None = None, **attrib: str
) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def build_domain_element(spec: DomainSpec, domain_type: str = "xen") -> etree._Element:
    """Return the ``<domain>`` element for *spec*; raises ValueError on impossible input."""
    if spec.virt_mode not in VIRT_MODES:
        raise ValueError(f"virt_mode must be one of {VIRT_MODES}, not {spec.virt_mode!r}")
    if spec.memory_mib <= 0:
        raise ValueError("memory_mib must be positive")
    if spec.vcpus <= 0:
        raise ValueError("vcpus must be positive")
    xen_like = domain_type in XEN_LIKE_TYPES

    dom = etree.Element("domain", type=domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)

    # Our own namespace, so the model's qid survives a restart of qubesd and can be read
    # back from `virsh dumpxml` without touching qubes.xml.
    meta = _sub(dom, "metadata")
    qvm = etree.SubElement(
        meta,
        f"{{{QUBES_METADATA_NS}}}vm",
        nsmap={QUBES_METADATA_PREFIX: QUBES_METADATA_NS},
    )
    _sub(qvm, f"{{{QUBES_METADATA_NS}}}qid", str(spec.qid))
    if spec.netvm is not None:
        _sub(qvm, f"{{{QUBES_METADATA_NS}}}netvm", spec.netvm)

    # upstream: memory=maxmem (balloon ceiling) unless maxmem is 0; currentMemory=memory
    ceiling = spec.maxmem_mib if spec.maxmem_mib > 0 else spec.memory_mib
    ceiling = max(ceiling, spec.memory_mib)
    if spec.memory_hotplug:
        # maxMemory needs slots; QEMU additionally wants a NUMA cell, so it is opt-in
        _sub(dom, "maxMemory", str(ceiling), unit="MiB", slots="16")
    _sub(dom, "memory", str(ceiling), unit="MiB")
    _sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")

    if spec.virt_mode != "pv":
        cpu = _sub(dom, "cpu", mode="host-passthrough")
        # nested virtualisation off, stable TSC required: upstream's choice for non-PV
        _sub(cpu, "feature", name="vmx", policy="disable")
        _sub(cpu, "feature", name="svm", policy="disable")
        if xen_like:
            _sub(cpu, "feature", name="invtsc", policy="require")

    os_el = _sub(dom, "os")
    if xen_like:
        machine, os_type = _XEN_OS[spec.virt_mode]
        _sub(os_el, "type", os_type, arch="x86_64", machine=machine)
        if spec.virt_mode == "hvm":
            _sub(os_el, "loader", _HVMLOADER)
    else:
        _sub(os_el, "type", "hvm")
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        if spec.kernelopts:
            _sub(os_el, "cmdline", spec.kernelopts)

    if spec.virt_mode != "pv":
        feats = _sub(dom, "features")
        for f in ("pae", "acpi", "apic") if xen_like else ("acpi", "apic"):
            _sub(feats, f)
        if xen_like and spec.virt_mode == "hvm":
            _sub(feats, "viridian")

    clock = _sub(dom, "clock", offset="utc", adjustment="reset")
    if xen_like:
        _sub(clock, "timer", name="tsc", mode="native")

    # Qubes never lets libvirt restart a domain behind qubesd's back
    for what in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, what, "destroy")

    devices = _sub(dom, "devices")
    if spec.netvm is not None:
        iface = _sub(devices, "interface", type="ethernet")
        if spec.mac:
            _sub(iface, "mac", address=spec.mac)
        if xen_like:
            if spec.ip:
                _sub(iface, "ip", address=spec.ip, family="ipv4")
            _sub(iface, "backenddomain", name=spec.netvm)
            _sub(iface, "script", path="vif-route-qubes")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="xen" if xen_like else "serial", port="0")
    return dom


def build_domain_xml(spec: DomainSpec, domain_type: str = "xen") -> str:
    """Serialised form of :func:`build_domain_element`, ready for ``defineXML``."""
    return etree.tostring(build_domain_element(spec, domain_type), encoding="unicode")


def parse_qid(domain_xml: str) -> int | None:
    """Read our qid back from a libvirt ``XMLDesc`` (None if absent or not ours)."""
    root = etree.fromstring(domain_xml.encode())
    found = root.find(f"metadata/{{{QUBES_METADATA_NS}}}vm/{{{QUBES_METADATA_NS}}}qid")
    if found is None or found.text is None:
        return None
    try:
        return int(found.text)
    except ValueError:
        return None


def console_tty(domain_xml: str) -> str | None:
    """``/domain/devices/console/@tty`` of a live XMLDesc (None when libvirt gave none)."""
    root = etree.fromstring(domain_xml.encode())
    for console in root.iterfind("devices/console"):
        tty = console.get("tty")
        if tty:
            return tty
    return None
