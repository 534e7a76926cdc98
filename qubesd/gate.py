"""The gate: the one function every call from a domain other than dom0 passes.

Steps (DESIGN.md section 4), each recorded with its reason:

1. generic validation: done by the dispatcher from the method's declaration;
2. qrexec policy: the call (method, argument, source, destination) must evaluate to
   allow against the current policy; ``ask`` counts as no inside qubesd;
3. Casbin: the source must act for a user whose grants cover the method on the
   destination's sets (or, for a global call, cover the method at all); deny wins;
4. value constraints: a domain named by the call besides its destination (a VM-valued
   property, the template of a Create, the disposable template) must be usable by the
   caller, i.e. visible to it through both layers;
5. audit: the verdict, each layer's reason, the snapshot id and the latency.

Listings (``admin.vm.List``, ``admin.Events``, ``admin.vm.Stats``) get a per-domain
filter from the same two layers, evaluated when each item is produced. Handlers never
check access themselves.
"""

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from acl import AuditLog
from acl.audit import now as audit_now
from qrexec.policy import SystemInfo
from qubesd.dispatch import Call, refusal
from qubesd.exc import PermissionDenied
from qubesd.model.properties import VM
from qubesd.model.vm import AdminVM, BaseVM
from qubesd.policystate import USERDOMAINS_FILE, PolicyState, build_state, fingerprint
from qubesd.registry import Method, NamesDomain, Scope
from qubesd.sysinfo import domain_record

log = logging.getLogger("qubesd.gate")

#: the method whose visibility defines "the caller may see / use this domain"
SEE = "admin.vm.List"


@dataclass(slots=True)
class Verdict:
    allowed: bool
    reason: str
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    user: str | None = None
    snapshot: str = ""
    reasons_json: str | None = None  # the audit's encoding, kept with a cached verdict

    def to_dict(self) -> dict[str, Any]:
        return {"result": "allow" if self.allowed else "deny", "reason": self.reason,
                "user": self.user, "snapshot": self.snapshot, "layers": self.layers}


class Gate:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.app = daemon.app
        self.policy_dirs = [daemon.run_dir / "policy.d", daemon.config_dir / "policy.d"]
        self.users_path = daemon.config_dir / USERDOMAINS_FILE
        self.state: PolicyState = build_state(self.policy_dirs, self.users_path)
        self._fingerprint = fingerprint([*self.policy_dirs, self.users_path])
        self._sysinfo: SystemInfo | None = None
        self._dirty: set[str] | None = set()  # None: rebuild everything
        #: (src, method, dest, arg) -> the policy layers' verdict; valid for one snapshot
        #: and one state of the domains, so any change clears it
        self._cache: dict[tuple[str, str, str, str], Verdict] = {}
        self.audit = AuditLog(daemon.state_dir / "audit.log")
        self.app.change_listeners.append(self._domain_changed)
        self._log_state()

    def _log_state(self) -> None:
        state = self.state
        mode = ("multi-user" if state.users is not None else
                "fail-closed" if state.users_error else "upstream (qrexec policy only)")
        if state.qrexec.error:
            log.error("policy snapshot %s: the qrexec policy does not load, every call from "
                      "a domain is denied: %s (mode %s)", state.id, state.qrexec.error, mode)
        else:
            log.info("policy snapshot %s: %d qrexec rules, mode %s", state.id,
                     len(state.qrexec), mode)

    # -- system info for the qrexec engine, updated per changed domain --------------------
    def _domain_changed(self, vm: BaseVM | None) -> None:
        self._cache.clear()
        if vm is None or self._dirty is None:
            self._dirty = None
        else:
            self._dirty.add(vm.name)

    def sysinfo(self) -> SystemInfo:
        dirty = self._dirty
        if self._sysinfo is None or dirty is None:
            self._sysinfo = SystemInfo.from_json(self.daemon.system_info())
        elif dirty:
            self._sysinfo = self._sysinfo.updated(
                {name: (domain_record(self.app.domains[name])
                        if name in self.app.domains else None) for name in dirty})
        self._dirty = set()
        return self._sysinfo

    # -- reloading ------------------------------------------------------------------------
    def swap(self, state: PolicyState, cause: str, source: str = "dom0") -> None:
        """Install a new snapshot; calls in flight finish on the one they started with.
        Every change is audited, whoever made it (dom0 included) and however (API call
        or file edit)."""
        previous = self.state
        self.state = state
        self._cache = {}
        self._fingerprint = fingerprint([*self.policy_dirs, self.users_path])
        self._log_state()
        if state.id == previous.id:
            return
        try:
            self.audit.append({
                "source": source, "method": "policy-change", "argument": cause,
                "destination": "dom0", "result": "allow",
                "snapshot": state.id, "previous_snapshot": previous.id,
                "reasons": {"qrexec": state.qrexec.error or f"{len(state.qrexec)} rules",
                            "users": state.users_error or (
                                state.users.source if state.users else "no userdomains.yaml")}})
        except OSError:
            log.exception("audit log write failed")

    def rebuild(self, cause: str, source: str = "dom0") -> PolicyState:
        """Load the three parts from disk and swap them in (after an API change).

        A userdomains.yaml that does not validate is refused: the running users stay in
        force, so a policy edit never turns a working system into a locked one."""
        state = self._keep_running_users(build_state(self.policy_dirs, self.users_path))
        self.swap(state, cause, source)
        return state

    def _keep_running_users(self, state: PolicyState) -> PolicyState:
        if state.users_error and self.state.users is not None:
            log.error("userdomains.yaml refused, keeping the running users of snapshot %s: "
                      "%s", self.state.id, state.users_error)
            return PolicyState(state.qrexec, self.state.users, self.state.authorizer, None,
                               state.id)
        return state

    async def watch(self, interval: float = 0.5) -> None:
        """Rebuild when a policy file or userdomains.yaml changes on disk."""
        loop = asyncio.get_running_loop()
        paths = [*self.policy_dirs, self.users_path]
        while True:
            await asyncio.sleep(interval)
            current = await loop.run_in_executor(None, fingerprint, paths)
            if current == self._fingerprint:
                continue
            state = await loop.run_in_executor(None, build_state, self.policy_dirs,
                                               self.users_path)
            self.swap(self._keep_running_users(state), "policy files changed on disk",
                      "file watcher")
            self._fingerprint = current

    # -- the decision -----------------------------------------------------------------------
    def decide(self, src: BaseVM, method: Method, dest: BaseVM, arg: str,
               untrusted_payload: bytes, state: PolicyState | None = None) -> Verdict:
        """Both layers and the value constraints for one call; no side effects."""
        state = state or self.state
        layers = self._policy_layers(state, src, method, dest, arg)
        # value constraints belong to the multi-user layer: without userdomains.yaml the
        # qrexec policy alone decides, so existing Qubes policies keep their meaning
        if not layers.allowed or method.names_domain is NamesDomain.NONE \
                or state.authorizer is None:
            return layers
        constraint = self._value_constraint(state, src, method, dest, arg, untrusted_payload)
        verdict = Verdict(constraint["allowed"], layers.reason, dict(layers.layers),
                          layers.user, layers.snapshot)
        verdict.layers["value"] = constraint
        if not constraint["allowed"]:
            verdict.reason = f"value constraint: {constraint['reason']}"
        return verdict

    def _policy_layers(self, state: PolicyState, src: BaseVM, method: Method, dest: BaseVM,
                       arg: str) -> Verdict:
        """The qrexec and Casbin verdicts, memoised until the policy or a domain changes
        (they depend on nothing else: tags, types and power states are domain state)."""
        key = (src.name, method.name, dest.name, arg)
        cache = self._cache if state is self.state else {}
        verdict = cache.get(key)
        if verdict is not None:
            return verdict
        sysinfo = self._sysinfo if not self._dirty and self._sysinfo is not None \
            else self.sysinfo()
        verdict = Verdict(False, "", snapshot=state.id)
        target = "dom0" if isinstance(dest, AdminVM) else dest.name
        res = state.qrexec.evaluate(method.name, arg, src.name, target, sysinfo)
        rule = f"{res.rule[0]}:{res.rule[1]}" if res.rule else None
        verdict.layers["qrexec"] = {"result": res.result, "reason": res.reason, "rule": rule}
        if res.result != "allow":
            verdict.reason = (f"qrexec policy: {res.result}"
                              f"{' at ' + rule if rule else ''}: {res.reason}")
            if res.result == "ask":
                verdict.reason += " (ask counts as deny inside qubesd)"
        else:
            casbin = self._casbin(state, src, method, dest)
            verdict.layers["casbin"] = casbin
            verdict.user = casbin.get("user")
            if casbin["allowed"]:
                verdict.allowed = True
                verdict.reason = "allowed by both layers"
            else:
                verdict.reason = f"casbin: {casbin['reason']}"
        if len(cache) > 65536:
            cache.clear()
        cache[key] = verdict
        return verdict

    def _casbin(self, state: PolicyState, src: BaseVM, method: Method | str,
                dest: BaseVM | None) -> dict[str, Any]:
        name = method if method.__class__ is str else method.name
        if state.authorizer is None:
            return {"allowed": True, "reason": "no userdomains.yaml: qrexec policy alone "
                                               "decides (upstream mode)"}
        is_global = dest is None or (isinstance(dest, AdminVM) and (
            method.__class__ is str or method.scope is Scope.GLOBAL))
        decision = state.authorizer.decide(src.name, name, None if is_global else dest.name,
                                           () if is_global else dest.tags)
        principal = state.users.principal_of(src.name) if state.users else None
        return {"allowed": decision.allowed, "reason": decision.reason,
                "rows": decision.rows, "user": principal.user if principal else None}

    def _value_constraint(self, state: PolicyState, src: BaseVM, method: Method,
                          dest: BaseVM, arg: str, untrusted_payload: bytes) -> dict[str, Any]:
        named = None
        kind = method.names_domain
        if kind is NamesDomain.MEMBERSHIP_TAG:
            # a tag named by a set's rule moves domains between sets: a user could hand
            # her domain to another user, or slip out of a set her deny grant names
            rules = [s.name for s in state.users.sets.values() if arg in s.tags]
            if rules:
                return {"allowed": False, "reason": f"tag {arg} decides membership of "
                        f"set(s) {', '.join(sorted(rules))}; only dom0 may change it"}
            return {"allowed": True, "reason": "the tag decides no set membership"}
        if kind is NamesDomain.PROPERTY_VALUE:
            holder = self.app if method.name.startswith("admin.property.") else dest
            prop = holder.PROPS.get(arg)
            if prop is not None and prop.kind == VM:
                try:
                    named = untrusted_payload.decode("ascii") or None
                except UnicodeDecodeError:
                    named = None  # the handler's sanitizer refuses it with its own error
        elif kind is NamesDomain.TEMPLATE_ARG:
            # no argument means the system default, which the caller must be able to use
            # too: it would otherwise create from a template it may not see
            named = arg or self._default_template(method)
        elif kind is NamesDomain.DISPVM_TEMPLATE:
            named = (src.get_or("default_dispvm", None) if isinstance(dest, AdminVM)
                     else dest.name)
        if named is None:
            return {"allowed": True, "reason": "names no other domain"}
        if self.usable(src, named, state):
            return {"allowed": True, "reason": f"{named} is usable by {src.name}"}
        # the same answer whether or not the domain exists: no existence oracle
        return {"allowed": False, "reason": f"{named} is not usable by {src.name}"}

    def _default_template(self, method: Method) -> str | None:
        klass = method.name.rsplit(".", 1)[1]
        if klass == "DispVM":
            return self.app.get_or("default_dispvm", None)
        if klass == "AppVM":
            return self.app.get_or("default_template", None)
        return None  # TemplateVM and StandaloneVM are not based on a template

    def usable(self, src: BaseVM, name: str, state: PolicyState | None = None) -> bool:
        """May ``src`` see (and so name in a value) the domain ``name``?"""
        state = state or self.state
        vm = self.app.domains.get(name)
        if vm is None:
            return False
        if isinstance(vm, AdminVM):
            return self._global_visible(src, SEE, state)
        if state.users is not None:
            # the VMs acting for the caller's own user (e.g. her GUI domain as a guivm)
            mine, theirs = state.users.principal_of(src.name), state.users.principal_of(name)
            if mine is not None and theirs is not None and mine.user == theirs.user:
                return True
        res = state.qrexec.evaluate(SEE, "", src.name, name, self.sysinfo())
        if res.result != "allow":
            return False
        return self._casbin(state, src, SEE, vm)["allowed"]

    def _global_visible(self, src: BaseVM, method: str, state: PolicyState) -> bool:
        res = state.qrexec.evaluate(method, "", src.name, "dom0", self.sysinfo())
        return res.result == "allow" and self._casbin(state, src, method, None)["allowed"]

    # -- what the dispatcher calls ---------------------------------------------------------
    def authorize(self, call: Call) -> None:
        state = self.state
        started = time.perf_counter()
        verdict = self.decide(call.src, call.method, call.dest, call.arg, call.payload, state)
        if verdict.allowed and call.method.filtered:
            call.filters.append(self._filter_for(call, state))
            if call.method.stream:
                call.redact = self._redact_for(call.src)
        audited = self._audit(call, verdict, started)
        if not verdict.allowed:
            raise PermissionDenied(refusal(call.method.name, call.arg, call.requested_dest))
        if not audited:  # fail closed: no call from a domain goes unrecorded
            raise PermissionDenied("Request refused: the audit log cannot be written")

    def _audit(self, call: Call, verdict: Verdict, started: float) -> bool:
        """One JSON line per decision (acl/audit.py's fields), encoded here because this
        runs for every call from a domain."""
        reasons = verdict.reasons_json
        if reasons is None:
            reasons = verdict.reasons_json = json.dumps(
                {layer: info.get("reason", "") for layer, info in verdict.layers.items()},
                ensure_ascii=True, separators=(",", ":"))
        user = "null" if verdict.user is None else _json_str(verdict.user)
        line = (f'{{"time":"{audit_now()}","source":{_json_str(call.src.name)},'
                f'"user":{user},"method":{_json_str(call.method.name)},'
                f'"argument":{_json_str(call.arg)},"destination":{_json_str(call.dest.name)},'
                f'"result":"{"allow" if verdict.allowed else "deny"}","reasons":{reasons},'
                f'"snapshot":"{verdict.snapshot}",'
                f'"latency_us":{(time.perf_counter() - started) * 1e6:.1f}}}\n')
        try:
            self.audit.write_line(line.encode("ascii"))
        except (OSError, ValueError):  # ValueError: the log was closed
            log.exception("audit log write failed")
            return False
        return True

    def _filter_for(self, call: Call, state: PolicyState):
        src, method = call.src, call.method.name
        if method == "admin.Events":
            return lambda item: self._event_visible(src, item)
        visible = self.visible_names(src, method, state)
        return lambda vm: vm.name in visible

    def visible_names(self, src: BaseVM, method: str,
                      state: PolicyState | None = None) -> set[str]:
        """The domains on which ``src`` may call ``method``, by both layers at once."""
        state = state or self.state
        domains = [vm for vm in self.app.sorted_domains() if not isinstance(vm, AdminVM)]
        if state.authorizer is not None:
            names = state.authorizer.visible(src.name, method,
                                             ((vm.name, vm.tags) for vm in domains))
        else:
            names = [vm.name for vm in domains]
        allowed = set(state.qrexec.allowed_targets(method, "", src.name, names,
                                                   self.sysinfo()))
        # Upstream lists dom0 when the policy allows it. Under userdomains.yaml it is left
        # out: no user holds rights on dom0, and the stock client would stumble over a
        # refused GetAll of a domain it was shown.
        if state.authorizer is None and self._global_visible(src, method, state):
            allowed.add("dom0")
        return allowed

    def _event_visible(self, src: BaseVM, item) -> bool:
        """Decided per event, when it fires, on the snapshot current at that moment."""
        subject, event, kwargs = item
        state = self.state
        if isinstance(subject, BaseVM):
            target = subject
        else:
            target = kwargs.get("vm") if isinstance(kwargs.get("vm"), BaseVM) else None
        target_name = target.name if target is not None and not isinstance(
            target, AdminVM) else "dom0"
        res = state.qrexec.evaluate("admin.Events", event.replace(":", "_"), src.name,
                                    target_name, self.sysinfo())
        if res.result != "allow":
            return False
        casbin_dest = None if target_name == "dom0" else target
        return self._casbin(state, src, "admin.Events", casbin_dest)["allowed"]

    def _redact_for(self, src: BaseVM):
        """Event values naming a domain the caller may not see read as None, as the
        same values do through property.Get."""
        app = self.app

        def redact(subject, event: str, kwargs: dict) -> dict:
            if self.state.authorizer is None:
                return kwargs
            vm_valued = event.startswith("property-") and _names_domain(
                subject, kwargs.get("name"), app)
            shown = {}
            for key, value in kwargs.items():
                name = value.name if isinstance(value, BaseVM) else (
                    value if vm_valued and key in ("newvalue", "oldvalue") else None)
                if name is not None and not self.usable(src, name):
                    value = None
                shown[key] = value
            return shown
        return redact

    def can_see(self, call: Call, name: str) -> bool:
        """Whether a property value naming ``name`` is shown to the caller (upstream shows
        every value; under userdomains.yaml only domains the caller may see)."""
        return self.state.authorizer is None or self.usable(call.src, name)

    def explain(self, src: BaseVM, method: Method, dest: BaseVM, arg: str,
                untrusted_payload: bytes = b"") -> Verdict:
        """The verdict a real call would get, through the same code path."""
        return self.decide(src, method, dest, arg, untrusted_payload)


def _names_domain(subject, prop_name, app) -> bool:
    """Whether a property event's values are domain names."""
    holder = subject if isinstance(subject, BaseVM) else app
    prop = holder.PROPS.get(prop_name) if isinstance(prop_name, str) else None
    return prop is not None and prop.kind == VM


__all__ = ["Gate", "Verdict"]
