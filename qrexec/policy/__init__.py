"""qrexec policy engine: parsing, evaluation, reloading, administration.

Public interface::

    from qrexec.policy import SystemInfo, PolicySnapshot, load_policy, PolicyWatcher
    sysinfo = SystemInfo.from_json(d)          # upstream internal.GetSystemInfo dict
    snap = load_policy([runtime_dir, persistent_dir])   # never raises
    snap.error                                 # None or "file:line: reason"
    res = snap.evaluate(service, arg, source, target, sysinfo)  # arg WITHOUT '+'
    snap.allowed_targets(service, arg, source, candidates, sysinfo)
"""

from .engine import PolicySnapshot, default_legacy_dir, failed_snapshot, load_policy
from .errors import AccessDenied, PolicyError, PolicyLoadError, PolicySyntaxError
from .parser import Rule
from .request import Request, Resolution, split_service_arg
from .sysinfo import DOM0_UUID, DomainInfo, SystemInfo
from .watcher import PolicyWatcher

__all__ = [
    "DOM0_UUID",
    "AccessDenied",
    "DomainInfo",
    "PolicyError",
    "PolicyLoadError",
    "PolicySnapshot",
    "PolicySyntaxError",
    "PolicyWatcher",
    "Request",
    "Resolution",
    "Rule",
    "SystemInfo",
    "default_legacy_dir",
    "failed_snapshot",
    "load_policy",
    "split_service_arg",
]
