"""The officer's services: ``policy.*`` (qrexec policy files, userdomains.yaml, explain,
audit and the officer's reports), registered as qubesd methods so that they pass the
same gate as the Admin API. Under a userdomains.yaml the gate lets only officers through.

Every change is validated first and then swapped in as one new snapshot of qrexec
policy, users and Casbin rules; an invalid change is refused with the reason and leaves
everything as it was.
"""

import hashlib
import json
from pathlib import Path

from acl import read_audit
from qrexec.policy.admin import (
    PolicyAdmin,
    PolicyAdminError,
    PolicyAdminFileNotFoundException,
    PolicyAdminProtocolException,
    PolicyAdminSyntaxException,
    PolicyAdminTokenException,
)
from qubesd.atomicfile import replace_file
from qubesd.dispatch import Call
from qubesd.exc import QubesException
from qubesd.policystate import build_state
from qubesd.registry import Access, Dest, Presence, Scope, api
from userdomains import UserDomainsError

_P, _R, _W = Presence, Access.READ, Access.WRITE
_wire_classes: dict[str, type[QubesException]] = {}


def _wire(err: PolicyAdminError) -> QubesException:
    """Carry a policy-admin error to the caller under its upstream class name."""
    name = type(err).__name__
    cls = _wire_classes.get(name)
    if cls is None:
        cls = _wire_classes[name] = type(name, (QubesException,), {})
    return cls(str(err))


def _policy_admin(call: Call) -> PolicyAdmin:
    return PolicyAdmin(call.daemon.config_dir / "policy.d")


def _reload(call: Call) -> None:
    call.daemon.gate.rebuild(f"{call.method.name}+{call.arg}", call.src.name)


def _files_method(name: str, arg: Presence, payload: Presence, access: Access) -> None:
    async def handler(call: Call) -> str:
        call.fire_permission()
        try:
            reply = _policy_admin(call).call(name, call.arg, call.payload)
        except PolicyAdminError as err:
            raise _wire(err) from None
        if access is not _R:
            _reload(call)
        return reply.decode("utf-8", "surrogateescape")
    api(name, dest=Dest.ADMINVM, arg=arg, payload=payload, scope=Scope.GLOBAL,
        access=access)(handler)


for _name, _arg, _payload, _access in (
        ("policy.List", _P.NONE, _P.NONE, _R),
        ("policy.Get", _P.REQUIRED, _P.NONE, _R),
        ("policy.Replace", _P.REQUIRED, _P.REQUIRED, _W),
        ("policy.Remove", _P.REQUIRED, _P.REQUIRED, _W),
        ("policy.GetFiles", _P.REQUIRED, _P.NONE, _R),
        ("policy.include.List", _P.NONE, _P.NONE, _R),
        ("policy.include.Get", _P.REQUIRED, _P.NONE, _R),
        ("policy.include.Replace", _P.REQUIRED, _P.REQUIRED, _W),
        ("policy.include.Remove", _P.REQUIRED, _P.REQUIRED, _W)):
    _files_method(_name, _arg, _payload, _access)


# -- userdomains.yaml, with the same token protocol --------------------------------------

def _token(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@api("policy.acl.Get", dest=Dest.ADMINVM, scope=Scope.GLOBAL, access=_R)
async def acl_get(call: Call) -> str:
    call.fire_permission()
    path = call.daemon.gate.users_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _wire(PolicyAdminFileNotFoundException(f"Not found: {path}")) from None
    return f"{_token(data)}\n" + data.decode("utf-8", "surrogateescape")


@api("policy.acl.Replace", dest=Dest.ADMINVM, payload=_P.REQUIRED, scope=Scope.GLOBAL,
     access=_W)
async def acl_replace(call: Call) -> None:
    untrusted_token, newline, untrusted_content = call.payload.partition(b"\n")
    if not newline:
        raise _wire(PolicyAdminProtocolException(
            "Payload needs to include first line with token"))
    gate = call.daemon.gate
    path: Path = gate.users_path
    current = path.read_bytes() if path.exists() else None
    if untrusted_token == b"new":
        if current is not None:
            raise _wire(PolicyAdminTokenException("File exists but token is 'new'"))
    elif untrusted_token.startswith(b"sha256:"):
        if current is None:
            raise _wire(PolicyAdminTokenException("File doesn't exist, but token isn't 'new'"))
        if untrusted_token.decode("ascii", "replace") != _token(current):
            raise _wire(PolicyAdminTokenException("Token mismatch"))
    elif untrusted_token != b"any":
        raise _wire(PolicyAdminTokenException("Unrecognized token"))
    call.fire_permission()
    try:  # validate the whole new snapshot before anything is written
        state = build_state(gate.policy_dirs, path, users_text=untrusted_content)
    except UserDomainsError as err:
        raise _wire(PolicyAdminSyntaxException(f"Policy change validation failed: {err}")) \
            from None
    replace_file(path, untrusted_content, 0o640)
    gate.swap(state, "policy.acl.Replace", call.src.name)


# -- explain, audit, and the officer's reports -----------------------------------------------

@api("policy.Explain", dest=Dest.ADMINVM, payload=_P.REQUIRED, scope=Scope.GLOBAL, access=_R)
async def explain(call: Call) -> str:
    """Payload ``SOURCE TARGET SERVICE[+ARG] [VALUE]``: each layer's verdict, as a real
    call would get it; VALUE is the payload of that call (e.g. the new netvm), which the
    value constraints judge."""
    try:
        untrusted_fields = call.payload.decode("ascii").split(" ", 3)
    except UnicodeDecodeError:
        raise _wire(PolicyAdminProtocolException("Payload must be ASCII")) from None
    if len(untrusted_fields) not in (3, 4):
        raise _wire(PolicyAdminProtocolException(
            "Payload must be: SOURCE TARGET SERVICE[+ARG] [VALUE]"))
    untrusted_value = untrusted_fields[3].encode() if len(untrusted_fields) == 4 else b""
    call.fire_permission()
    app = call.app
    src = app.lookup(untrusted_fields[0])
    dest = app.lookup("dom0" if untrusted_fields[1] in ("@adminvm", "dom0")
                      else untrusted_fields[1])
    method_name, _, arg = untrusted_fields[2].partition("+")
    method = call.daemon.registry.get(method_name)
    if method is None:
        raise _wire(PolicyAdminProtocolException(f"no such method: {method_name!r}"))
    if src.name == "dom0":
        result = {"result": "allow", "reason": "dom0 is trusted and bypasses the gate",
                  "layers": {}}
    else:
        result = call.daemon.gate.explain(src, method, dest, arg, untrusted_value).to_dict()
    result.update(source=src.name, target=dest.name, method=method_name, argument=arg,
                  value=untrusted_value.decode())
    return json.dumps(result, indent=1, sort_keys=True) + "\n"


_AUDIT_FILTERS = ("user", "domain", "source", "method", "result", "since", "limit")


@api("policy.Audit", dest=Dest.ADMINVM, payload=_P.OPTIONAL, scope=Scope.GLOBAL, access=_R)
async def audit(call: Call) -> str:
    """Payload: ``key=value`` filters (user, domain, source, method, result, since,
    limit); reply: the matching audit records as JSON lines, oldest first."""
    filters: dict = {}
    try:
        untrusted_items = call.payload.decode("ascii").split()
    except UnicodeDecodeError:
        raise _wire(PolicyAdminProtocolException("Payload must be ASCII")) from None
    for untrusted_item in untrusted_items:
        key, sep, value = untrusted_item.partition("=")
        if not sep or key not in _AUDIT_FILTERS:
            raise _wire(PolicyAdminProtocolException(
                f"Invalid filter {untrusted_item!r}; known: {', '.join(_AUDIT_FILTERS)}"))
        if key == "limit":
            if not value.isdigit():
                raise _wire(PolicyAdminProtocolException("limit must be a number"))
            filters[key] = int(value)
        else:
            filters[key] = value
    call.fire_permission()
    records = read_audit(call.daemon.gate.audit.path, **filters)
    return "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records)


def _authorizer(call: Call):
    state = call.daemon.gate.state
    if state.users is None:
        raise QubesException("no userdomains.yaml: the qrexec policy alone decides")
    return state


def _domains(call: Call):
    return [(vm.name, vm.tags) for vm in call.app.sorted_domains() if vm.name != "dom0"]


@api("policy.acl.Report", dest=Dest.ADMINVM, scope=Scope.GLOBAL, access=_R)
async def report(call: Call) -> str:
    """Users, their VMs and grants, the sets with their current members, and overlaps."""
    call.fire_permission()
    state = _authorizer(call)
    users, domains = state.users, _domains(call)
    out = {
        "snapshot": state.id,
        "users": {name: {"management": list(u.management), "gui": list(u.gui),
                         "officer": u.officer, "create_into": u.create_into,
                         "grants": [{"role": g.role, "sets": list(g.sets),
                                     "effect": g.effect} for g in u.grants]}
                  for name, u in users.users.items()},
        "sets": {name: users.members(name, domains) for name in users.sets},
        "overlap": [o._asdict() | {"users": list(o.users), "sets": list(o.sets)}
                    for o in state.authorizer.overlap_report(domains)],
    }
    return json.dumps(out, indent=1, sort_keys=True, default=list) + "\n"


@api("policy.acl.WhoCan", dest=Dest.ADMINVM, arg=_P.REQUIRED, scope=Scope.GLOBAL, access=_R)
async def who_can(call: Call) -> str:
    """Who may do what to the domain named by the argument (Casbin layer)."""
    call.fire_permission()
    state = _authorizer(call)
    vm = call.app.lookup(call.arg)
    rows = [a._asdict() for a in state.authorizer.who_can(vm.name, vm.tags)]
    return json.dumps(rows, indent=1, sort_keys=True, default=list) + "\n"


@api("policy.acl.CanI", dest=Dest.ADMINVM, arg=_P.REQUIRED, scope=Scope.GLOBAL, access=_R)
async def can_i(call: Call) -> str:
    """What the VM named by the argument may do, and on which domains (both layers)."""
    call.fire_permission()
    state = _authorizer(call)
    vm = call.app.lookup(call.arg)
    if vm.name == "dom0":
        return json.dumps({"vm": "dom0", "snapshot": state.id, "note": "dom0 is trusted: "
                           "its calls bypass the gate"}, indent=1) + "\n"
    summary = state.authorizer.can_i(vm.name)
    summary["snapshot"] = state.id  # the id of the whole snapshot, as Explain and audit
    gate = call.daemon.gate
    summary["visible_domains"] = sorted(gate.visible_names(vm, "admin.vm.List", state))
    return json.dumps(summary, indent=1, sort_keys=True, default=list) + "\n"
