"""qubesd: the daemon that holds every domain and answers the Admin API."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from qrexec.policy.defaults import install_default_policy
from qubesd import paths
from qubesd.api import admin as _admin_api  # noqa: F401 - registers the methods
from qubesd.api import internal as _internal_api  # noqa: F401 - registers the methods
from qubesd.api import policy as _policy_api  # noqa: F401 - registers policy.*
from qubesd.backend import BackendError, LibvirtBackend
from qubesd.dispatch import Call, Dispatcher
from qubesd.extensions import load_extensions
from qubesd.gate import Gate
from qubesd.lifecycle import PowerManager
from qubesd.model.app import App
from qubesd.model.properties import VM, Prop, PropertyHolder
from qubesd.registry import REGISTRY
from qubesd.server import serve
from qubesd.store import StoreLoadError, open_store, warm_cache
from qubesd.sysinfo import system_info

log = logging.getLogger("qubesd")


class Daemon:
    """Wires the parts together; owns nothing the parts could own themselves."""

    def __init__(self, state_dir: Path, run_dir: Path, config_dir: Path,
                 libvirt_uri: str = paths.DEFAULT_LIBVIRT_URI, debug: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.run_dir = Path(run_dir)
        self.config_dir = Path(config_dir)
        self.libvirt_uri = libvirt_uri
        self.debug = debug
        self.app = App()
        self.registry = REGISTRY
        self.committer = None
        self.power: PowerManager | None = None
        self.gate: Gate | None = None
        self.extensions: list = []
        self.servers: list[asyncio.AbstractServer] = []
        self._system_info: dict | None = None

    # -- start and stop ----------------------------------------------------------------
    async def start(self) -> None:
        for directory in (self.state_dir, self.run_dir, self.config_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.committer = open_store(self.app, self.state_dir / "qubes.xml")
        if install_default_policy(self.config_dir):
            log.info("installed the default qrexec policy in %s", self.config_dir / "policy.d")
        backend = LibvirtBackend(self.libvirt_uri)
        await backend.open(asyncio.get_running_loop())
        self.app.host_memory_mib, self.app.host_cpus = _host(backend)
        self.power = PowerManager(self.app, backend, self.committer.commit)
        self.power.sync_states()
        self.app.change_listeners.append(self._invalidate)
        self.extensions = load_extensions(self)
        self.gate = Gate(self)
        self._watch = asyncio.ensure_future(self.gate.watch())
        self._warm = asyncio.ensure_future(warm_cache(self.app))
        admin = Dispatcher(self, self.registry, "admin")
        internal = Dispatcher(self, self.registry, "internal")
        self.servers = [
            await serve(str(self.run_dir / paths.SOCKET_NAME), admin, self.debug),
            await serve(str(self.run_dir / paths.INTERNAL_SOCKET_NAME), internal, self.debug),
        ]
        log.info("qubesd ready: %d domains, %d methods, libvirt %s, sockets in %s",
                 len(self.app.domains), len(self.registry), self.libvirt_uri, self.run_dir)

    async def stop(self) -> None:
        if getattr(self, "_watch", None) is not None:
            self._watch.cancel()
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        if self.committer is not None:
            await self.committer.commit()
        if self.power is not None:
            self.power.backend.close()
        for name in (paths.SOCKET_NAME, paths.INTERNAL_SOCKET_NAME):
            try:
                os.unlink(self.run_dir / name)
            except FileNotFoundError:
                pass

    # -- shared services for handlers -----------------------------------------------------
    def _invalidate(self, vm) -> None:
        self._system_info = None

    def system_info(self) -> dict:
        if self._system_info is None:
            self._system_info = system_info(self.app)
        return self._system_info

    def visible_value(self, call: Call, prop: Prop, value):
        """A value naming a domain the caller may not see reads as None."""
        if prop.kind == VM and value is not None and not call.from_dom0 \
                and not self.gate.can_see(call, value):
            return None
        return value

    def render_property(self, call: Call, holder: PropertyHolder, name: str) -> str:
        prop = holder.PROPS[name]
        if prop.kind != VM or call.from_dom0:
            return holder.wire_get(name)
        try:
            value = holder.get(name)
        except AttributeError:
            value = None
        value = self.visible_value(call, prop, value)
        return (f"default={holder.is_default(name)} type=vm "
                f"{'' if value is None else value}")


def _host(backend: LibvirtBackend) -> tuple[int, int]:
    try:
        return backend.host_info()
    except BackendError:
        return 4096, os.cpu_count() or 1


def parse_args(argv: list[str] | None, prog: str = "qubesd",
               description: str = "The Qubes management daemon: holds every domain, "
                                  "persists qubes.xml, drives libvirt and answers the Admin "
                                  "API on a UNIX socket.",
               with_demo: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--state-dir", type=Path, default=paths.DEFAULT_STATE_DIR,
                        help="where qubes.xml lives (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path, default=paths.DEFAULT_RUN_DIR,
                        help="where the sockets qubesd.sock and qubesd.internal.sock are "
                             "created (default: %(default)s)")
    parser.add_argument("--config-dir", type=Path, default=paths.DEFAULT_CONFIG_DIR,
                        help="laid out like /etc/qubes: policy.d/ and userdomains.yaml "
                             "(default: %(default)s)")
    parser.add_argument("--libvirt-uri", default=paths.DEFAULT_LIBVIRT_URI,
                        help="libvirt connection URI (default: %(default)s, libvirt's "
                             "built-in test driver)")
    parser.add_argument("--debug", action="store_true",
                        help="verbose logs and Python tracebacks in error replies")
    if with_demo:
        parser.add_argument("--no-demo", action="store_true",
                            help="do not seed the multi-user demo into a fresh state")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    daemon = Daemon(args.state_dir, args.run_dir, args.config_dir, args.libvirt_uri,
                    args.debug)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: saving state")
    await daemon.stop()


def launch(args: argparse.Namespace, run_coroutine) -> int:
    """Run ``run_coroutine(args)`` with logging set up; start-up failures become one line
    on stderr and exit status 1."""
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(run_coroutine(args))
    except StoreLoadError as err:
        print(f"qubesd: cannot load state: {err}", file=sys.stderr)
        return 1
    except (FileExistsError, BackendError, OSError) as err:
        print(f"qubesd: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return launch(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
