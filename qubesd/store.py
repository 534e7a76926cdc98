"""qubes.xml: load with lxml, save atomically, and commit concurrent writers together.

Format: spec/admin-api.md section 7. Saving follows upstream's rules (7.3): lock the file
with ``lockf``, refuse to overwrite a file replaced behind our back, write a temporary
file in the same directory, fsync, rename over ``qubes.xml``, fsync the directory.

The store knows the model's data, never who asked for a change.
"""

import asyncio
import fcntl
import logging
import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from qubesd.atomicfile import replace_file
from qubesd.exc import QubesException
from qubesd.model.app import App
from qubesd.model.labels import Label
from qubesd.model.properties import BOOL, INT, LABEL, VM
from qubesd.model.vm import VM_CLASSES, AdminVM, BaseVM

log = logging.getLogger("qubesd.store")


class StoreLoadError(QubesException):
    """qubes.xml cannot be loaded; the daemon refuses to start rather than lose data."""


# -- loading ---------------------------------------------------------------------------

def _typed(kind: str, text: str, app: App, where: str):
    if kind == VM:
        return text or None
    if kind == INT:
        if text in ("", "None"):
            return None
        try:
            return int(text)
        except ValueError:
            raise StoreLoadError(f"{where}: not an integer: {text!r}") from None
    if kind == BOOL:
        if text not in ("True", "False"):
            raise StoreLoadError(f"{where}: not a boolean: {text!r}")
        return text == "True"
    if kind == LABEL:
        try:
            return app.get_label(text)
        except KeyError:
            raise StoreLoadError(f"{where}: unknown label {text!r}") from None
    return text


def _kept(element) -> str:
    """An element we keep verbatim (devices, volume-config), re-indented for output."""
    element.tail = None
    etree.indent(element, space="  ", level=3)
    return etree.tostring(element, encoding="unicode")


def _label_ref(node) -> str:
    ref = node.get("ref")
    if ref and ref.startswith("label-") and ref[6:].isdigit():
        return ref[6:]
    return node.text or ""


def load(app: App, data: bytes, source: str = "qubes.xml") -> None:
    """Fill an empty app from the bytes of a qubes.xml."""
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True,
                                                      remove_blank_text=True))
    except etree.XMLSyntaxError as err:
        raise StoreLoadError(f"{source}: {err}") from None
    if root.tag != "qubes":
        raise StoreLoadError(f"{source}: root element is <{root.tag}>, not <qubes>")

    for node in root.iterfind("./labels/label"):
        index = int(node.get("id", "label-0").rpartition("-")[2])
        color = node.get("color", "")
        if color == "0x555753":  # upstream fixes the historical grey the same way
            color = "0x555555"
        app.labels[index] = Label(index, node.text or "", color)

    for node in root.iterfind("./pools/pool"):
        app.pools[node.get("name")] = dict(node.attrib)

    pending_refs: list[tuple[BaseVM, str, str]] = []
    domain_nodes = []
    for node in root.iterfind("./domains/domain"):
        klass = node.get("class")
        cls = VM_CLASSES.get("AppVM" if klass == "QubesVM" else klass)
        where = f"{source}: domain {node.get('id')}"
        if cls is None:
            raise StoreLoadError(f"{where}: unknown class {klass!r}")
        values = {}
        for prop_node in node.iterfind("./properties/property"):
            name = prop_node.get("name")
            values[name] = _label_ref(prop_node) if name == "label" else (prop_node.text or "")
        if cls is AdminVM:
            vm = AdminVM(app)
        else:
            try:
                vm = cls(app, values["name"], int(values["qid"]), values.get("uuid") or "")
            except (KeyError, ValueError):
                raise StoreLoadError(f"{where}: missing or bad name/qid") from None
        for name, text in values.items():
            prop = cls.PROPS.get(name)
            if prop is None:
                raise StoreLoadError(f"{where}: property {name!r} unknown for class {klass}")
            if name in ("name", "qid") or (cls is AdminVM and name in ("uuid",)):
                continue
            if prop.kind == VM:
                pending_refs.append((vm, name, text))
            else:
                vm.load_value(name, _typed(prop.kind, text, app, f"{where} {name}"))
        if not vm.uuid and cls is not AdminVM:
            import uuid as uuidlib
            vm.uuid = str(uuidlib.uuid4())
            vm.load_value("uuid", vm.uuid)
        for feature in node.iterfind("./features/feature"):
            vm.features[feature.get("name")] = feature.text or ""
        vm.tags.update(dict.fromkeys(tag.get("name") for tag in node.iterfind("./tags/tag")))
        vm.devices = [_kept(d) for d in node.iterfind("./devices")]
        vm.volume_config = [_kept(v) for v in node.iterfind("./volume-config")]
        if vm.name in app.domains:
            raise StoreLoadError(f"{where}: duplicate domain name {vm.name!r}")
        app.attach(vm)
        domain_nodes.append(vm)

    if "dom0" not in app.domains:
        dom0 = AdminVM(app)
        dom0.load_value("label", app.get_label("black"))
        app.attach(dom0)

    for node in root.iterfind("./properties/property"):
        name = node.get("name")
        prop = app.PROPS.get(name)
        if prop is None:
            raise StoreLoadError(f"{source}: unknown global property {name!r}")
        app.load_value(name, _typed(prop.kind, node.text or "", app, f"{source}: {name}"))

    for vm, name, text in pending_refs:
        vm.load_value(name, text or None)
    for vm in app.domains.values():
        vm._loaded = True


# -- saving ----------------------------------------------------------------------------

def _text(value) -> str:
    if value is None:
        return ""
    return escape(str(value))


def domain_xml(vm: BaseVM) -> str:
    """One <domain> element, indented for its place in the document; cached per domain."""
    cached = vm.xml_cache
    if cached is not None:
        return cached
    out = [f'    <domain id="domain-{vm.qid}" class="{type(vm).__name__}">\n']
    explicit = vm._values
    props = [(name, explicit[name]) for name in vm.PROPS if name in explicit]
    if isinstance(vm, AdminVM):
        props = [p for p in props if p[0] not in ("name", "qid", "uuid")]
    if props:
        out.append("      <properties>\n")
        for name, value in props:
            out.append(f'        <property name="{name}">{_text(value)}</property>\n')
        out.append("      </properties>\n")
    else:
        out.append("      <properties/>\n")
    if vm.features:
        out.append("      <features>\n")
        for name, value in vm.features.items():
            out.append(f"        <feature name={quoteattr(name)}>{_text(value)}</feature>\n")
        out.append("      </features>\n")
    else:
        out.append("      <features/>\n")
    if vm.tags:
        out.append("      <tags>\n")
        out.extend(f"        <tag name={quoteattr(tag)}/>\n" for tag in vm.tags)
        out.append("      </tags>\n")
    else:
        out.append("      <tags/>\n")
    for kept in vm.devices:
        out.append(f"      {kept}\n")
    for kept in vm.volume_config:
        out.append(f"      {kept}\n")
    out.append("    </domain>\n")
    vm.xml_cache = text = "".join(out)
    return text


def serialize(app: App) -> bytes:
    out = ["<qubes>\n  <labels>\n"]
    for index in sorted(app.labels):
        label = app.labels[index]
        out.append(f'    <label id="label-{index}" color={quoteattr(label.color)}>'
                   f"{_text(label.name)}</label>\n")
    out.append("  </labels>\n")
    if app.pools:
        out.append("  <pools>\n")
        for config in app.pools.values():
            attrs = " ".join(f"{k}={quoteattr(str(v))}" for k, v in config.items())
            out.append(f"    <pool {attrs}/>\n")
        out.append("  </pools>\n")
    else:
        out.append("  <pools/>\n")
    explicit = [(n, app._values[n]) for n in app.PROPS if n in app._values]
    if explicit:
        out.append("  <properties>\n")
        for name, value in explicit:
            out.append(f'    <property name="{name}">{_text(value)}</property>\n')
        out.append("  </properties>\n")
    else:
        out.append("  <properties/>\n")
    out.append("  <domains>\n")
    out.extend(domain_xml(vm) for vm in app.sorted_domains())
    out.append("  </domains>\n</qubes>\n")
    return "".join(out).encode("utf-8")


async def warm_cache(app: App, chunk: int = 256) -> None:
    """Render every domain's fragment ahead of the first save, a few at a time so the
    loop keeps answering: the first save then costs what later ones cost."""
    domains = list(app.domains.values())
    for start in range(0, len(domains), chunk):
        for vm in domains[start:start + chunk]:
            domain_xml(vm)
        await asyncio.sleep(0)


class QubesXmlFile:
    """The file on disk: atomic replace, lockf, and the changed-behind-our-back check."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._known: tuple[int, int] | None = None  # (st_ino, st_mtime_ns) we wrote/read
        self.before_rename = None  # test hook: called with the temp path before rename

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            data = f.read()
            st = os.fstat(f.fileno())
        self._known = (st.st_ino, st.st_mtime_ns)
        return data

    def write(self, data: bytes) -> None:
        """Replace qubes.xml with ``data``, durably. Blocking: run in a thread."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o660)
        try:
            fcntl.lockf(lock_fd, fcntl.LOCK_EX)
            st = os.fstat(lock_fd)
            if self._known is not None and (st.st_ino, st.st_mtime_ns) != self._known \
                    and st.st_size:
                raise QubesException("Someone else modified qubes.xml in the meantime")
            replace_file(self.path, data, 0o660, self.before_rename)
            st = os.stat(self.path)
            self._known = (st.st_ino, st.st_mtime_ns)
        finally:
            os.close(lock_fd)


class GroupCommitter:
    """Makes changes durable; concurrent callers share one write.

    A caller mutates the model in the event loop, then awaits `commit()`. The call
    returns once a write that started *after* its change has reached the disk, so no
    call is acknowledged before its change is durable, and N callers arriving while a
    write is in flight are all covered by the next single write.
    """

    def __init__(self, app: App, file: QubesXmlFile) -> None:
        self.app = app
        self.file = file
        self._requested = 0   # generation of the newest change awaiting durability
        self._durable = 0     # generation covered by the last completed write
        self._writer: asyncio.Task | None = None
        self.writes = 0       # completed writes, for benchmarks and tests

    async def commit(self) -> None:
        self._requested += 1
        mine = self._requested
        while self._durable < mine:
            if self._writer is None:
                self._writer = asyncio.ensure_future(self._write_round())
            writer = self._writer
            await asyncio.shield(writer)
            if writer.exception() is not None and self._durable < mine:
                raise writer.exception()

    async def _write_round(self) -> None:
        generation = self._requested
        try:
            data = serialize(self.app)  # in the loop thread: a consistent snapshot
            await asyncio.get_running_loop().run_in_executor(None, self.file.write, data)
            self._durable = generation
            self.writes += 1
        except Exception:
            log.exception("saving %s failed", self.file.path)
            raise
        finally:
            self._writer = None

    def save_now(self) -> None:
        """Synchronous save (start-up, shutdown)."""
        self.file.write(serialize(self.app))
        self._durable = self._requested


def open_store(app: App, path: Path) -> GroupCommitter:
    """Load ``path`` into ``app``, or create the initial store if it is missing."""
    file = QubesXmlFile(path)
    if path.exists():
        load(app, file.read(), str(path))
        committer = GroupCommitter(app, file)
    else:
        app.load_initial_values()
        committer = GroupCommitter(app, file)
        committer.save_now()
        log.info("created initial store %s", path)
    return committer
