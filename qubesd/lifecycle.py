"""Domain power operations: the model's side of the libvirt backend.

Keeps each domain's power state current from libvirt lifecycle callbacks, fires the
domain events of spec/admin-api.md section 5 in upstream's order, and removes
auto-cleanup disposables after they stop. It knows nothing of the API layer.
"""

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable

from qubesd.backend import BackendError, DomainSpec, LibvirtBackend
from qubesd.exc import (
    QubesException,
    QubesVMError,
    QubesVMNotHaltedError,
    QubesVMNotPausedError,
    QubesVMNotRunningError,
    QubesVMNotStartedError,
    QubesVMNotSuspendedError,
    QubesVMShutdownTimeoutError,
)
from qubesd.model.app import App
from qubesd.model.vm import AdminVM, BaseVM, DispVM

log = logging.getLogger("qubesd.lifecycle")

_CALLBACK_STATE = {"started": "Running", "resumed": "Running", "suspended": "Paused",
                   "pmsuspended": "Suspended", "crashed": "Crashed", "stopped": "Halted",
                   "shutdown": "Halting"}


class PowerManager:
    def __init__(self, app: App, backend: LibvirtBackend,
                 save: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.backend = backend
        self.save = save
        self._stopped: dict[str, asyncio.Event] = {}
        self._own_transition: set[str] = set()  # uuids whose callback we caused ourselves
        backend.on_lifecycle(self._on_lifecycle)

    def sync_states(self) -> None:
        """At start-up: take the power state of every domain from libvirt."""
        states = self.backend.power_states()
        for vm in self.app.domains.values():
            if not isinstance(vm, AdminVM):
                vm.power_state = states.get(vm.uuid, "Halted")
                if vm.power_state != "Halted":
                    self.app.xids[vm.uuid] = self.backend.domain_id(vm.uuid)

    def spec(self, vm: BaseVM) -> DomainSpec:
        get = vm.get_or
        return DomainSpec(name=vm.name, uuid=vm.uuid, memory_mib=get("memory", 400),
                          maxmem_mib=get("maxmem", 0), vcpus=get("vcpus", 2),
                          virt_mode=get("virt_mode", "pvh"), kernel=get("kernel", None) or None,
                          kernelopts=get("kernelopts", "") or "", netvm=get("netvm", None),
                          mac=get("mac", None), ip=get("ip", None), qid=vm.qid)

    def _set_state(self, vm: BaseVM, state: str) -> None:
        vm.power_state = state
        self.app.domain_changed(vm)

    # -- libvirt callbacks, delivered in the event loop --------------------------------
    def _on_lifecycle(self, uuid: str, event: str, detail: int) -> None:
        vm = self.app.by_uuid.get(uuid)
        if vm is None or isinstance(vm, AdminVM):
            return
        if uuid in self._own_transition and event in ("started", "resumed", "suspended"):
            return
        if event == "stopped":
            self._handle_stopped(vm)
        elif event == "started" and vm.power_state == "Halted":
            self.app.xids[vm.uuid] = self.backend.domain_id(vm.uuid)
            self._set_state(vm, "Running")
            vm.fire_event("domain-start", start_guid=True)
        elif event == "suspended" and vm.power_state != "Paused":
            self._set_state(vm, "Paused")
            vm.fire_event("domain-paused")
        elif event == "resumed" and vm.power_state != "Running":
            self._set_state(vm, "Running")
            vm.fire_event("domain-unpaused")
        elif event in _CALLBACK_STATE and event not in ("started", "resumed", "suspended"):
            self._set_state(vm, _CALLBACK_STATE[event])

    def _handle_stopped(self, vm: BaseVM) -> None:
        if vm.power_state == "Halted":
            return
        self._set_state(vm, "Halted")
        vm.start_time = None
        self.app.xids.pop(vm.uuid, None)
        vm.fire_event("domain-stopped")
        vm.fire_event("domain-shutdown")
        waiter = self._stopped.pop(vm.uuid, None)
        if waiter is not None:
            waiter.set()
        if isinstance(vm, DispVM) and vm.get("auto_cleanup") and vm.name in self.app.domains:
            asyncio.ensure_future(self._cleanup(vm))

    async def _cleanup(self, vm: BaseVM) -> None:
        try:
            self.app.remove_vm(vm)
            self.backend.undefine(vm.uuid)
            await self.save()
            log.info("removed disposable %s after shutdown", vm.name)
        except Exception:
            log.exception("cleanup of disposable %s failed", vm.name)

    def _stop_waiter(self, vm: BaseVM) -> asyncio.Event:
        return self._stopped.setdefault(vm.uuid, asyncio.Event())

    # -- operations ----------------------------------------------------------------------
    async def start(self, vm: BaseVM) -> None:
        if isinstance(vm, AdminVM):
            raise QubesVMNotHaltedError(vm, "Cannot start Dom0 fake domain!")
        if vm.power_state != "Halted":
            return
        if vm.features.get("prohibit-start"):
            raise QubesException(f"Qube start prohibited: {vm.features['prohibit-start']}")
        template = vm.template_obj()
        if "template" in vm.PROPS and template is None:
            from qubesd.exc import QubesNoTemplateError
            raise QubesNoTemplateError(vm)
        vm.fire_event("domain-pre-start", pre_event=True, start_guid=True,
                      mem_required=None)
        netvm = vm.netvm_obj()
        if netvm is not None and netvm.power_state == "Halted":
            await self.start(netvm)
        self._set_state(vm, "Transient")
        vm.fire_event("domain-pre-spawn", pre_event=True)
        self._own_transition.add(vm.uuid)
        try:
            await self.backend.start(self.spec(vm))
        except BackendError as err:
            self._set_state(vm, "Halted")
            vm.fire_event("domain-start-failed", reason=f"Start failed: {err}")
            raise QubesException(f"Start failed: {err}") from None
        finally:
            self._own_transition.discard(vm.uuid)
        vm.start_time = str(datetime.datetime.now().timestamp())
        self.app.xids[vm.uuid] = self.backend.domain_id(vm.uuid)
        vm.fire_event("domain-spawn", start_guid=True)
        vm.fire_event("domain-pre-unpaused", pre_event=True)
        self._set_state(vm, "Running")
        vm.fire_event("domain-unpaused")
        vm.fire_event("domain-start", start_guid=True)

    async def shutdown(self, vm: BaseVM, force: bool = False, wait: bool = False) -> None:
        if isinstance(vm, AdminVM):
            raise QubesVMError(vm, "Cannot shutdown Dom0 fake domain!")
        if vm.power_state == "Halted":
            raise QubesVMNotStartedError(vm)
        vm.fire_event("domain-pre-shutdown", pre_event=True, force=force)
        if vm.power_state == "Paused" and not force:
            raise QubesVMNotRunningError(vm)
        waiter = self._stop_waiter(vm)
        try:
            if vm.power_state == "Paused":
                await self.backend.kill(vm.uuid)
            else:
                await self.backend.shutdown(vm.uuid, force=force)
        except BackendError as err:
            vm.fire_event("domain-shutdown-failed", reason=str(err))
            raise QubesException(f"Shutdown failed: {err}") from None
        if vm.power_state != "Halted":
            self._set_state(vm, "Halting")
        if wait:
            try:
                await asyncio.wait_for(waiter.wait(), vm.get_or("shutdown_timeout", 60))
            except TimeoutError:
                raise QubesVMShutdownTimeoutError(vm) from None

    async def kill(self, vm: BaseVM) -> None:
        if isinstance(vm, AdminVM):
            raise QubesVMError(vm, "Cannot kill Dom0 fake domain!")
        if vm.power_state == "Halted":
            raise QubesVMNotStartedError(vm)
        waiter = self._stop_waiter(vm)
        try:
            await self.backend.kill(vm.uuid)
        except BackendError as err:
            raise QubesException(f"Kill failed: {err}") from None
        try:  # the stop handling follows through the lifecycle callback
            await asyncio.wait_for(waiter.wait(), 10)
        except TimeoutError:
            log.warning("no stop event for %s after kill; syncing from libvirt", vm.name)
            if self.backend.power_state(vm.uuid) == "Halted":
                self._handle_stopped(vm)

    async def pause(self, vm: BaseVM) -> None:
        if isinstance(vm, AdminVM) or vm.power_state not in ("Running", "Transient"):
            raise QubesVMNotRunningError(vm)
        vm.fire_event("domain-pre-paused", pre_event=True)
        await self._own(vm, self.backend.pause)
        self._set_state(vm, "Paused")
        vm.fire_event("domain-paused")

    async def unpause(self, vm: BaseVM) -> None:
        if isinstance(vm, AdminVM) or vm.power_state != "Paused":
            raise QubesVMNotPausedError(vm)
        vm.fire_event("domain-pre-unpaused", pre_event=True)
        await self._own(vm, self.backend.unpause)
        self._set_state(vm, "Running")
        vm.fire_event("domain-unpaused")

    async def suspend(self, vm: BaseVM) -> None:
        if isinstance(vm, AdminVM) or vm.power_state not in ("Running", "Transient"):
            raise QubesVMNotRunningError(vm)
        await self._own(vm, self.backend.suspend)
        state = self.backend.power_state(vm.uuid)
        self._set_state(vm, state if state in ("Suspended", "Paused") else "Paused")
        vm.fire_event("domain-paused")

    async def resume(self, vm: BaseVM) -> None:
        if isinstance(vm, AdminVM) or vm.power_state not in ("Suspended", "Paused"):
            raise QubesVMNotSuspendedError(vm)
        await self._own(vm, self.backend.resume)
        self._set_state(vm, "Running")
        vm.fire_event("domain-unpaused")
        vm.fire_event("domain-resumed")

    async def _own(self, vm: BaseVM, operation) -> None:
        self._own_transition.add(vm.uuid)
        try:
            await operation(vm.uuid)
        except BackendError as err:
            raise QubesException(str(err)) from None
        finally:
            # the callback of our own change arrives through the loop after this point
            asyncio.get_running_loop().call_soon(self._own_transition.discard, vm.uuid)
