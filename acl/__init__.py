"""The Casbin layer: model, adapter, compiled decision index and audit log.

Imports nothing of ``qubesd``; reads users and sets through ``userdomains``.
"""

from .adapter import (
    GLOBAL,
    MODEL_PATH,
    SnapshotAdapter,
    load_model,
    membership_lines,
    new_enforcer,
    policy_lines,
)
from .audit import AuditLog, read_audit
from .authorizer import (
    Access,
    Authorizer,
    Decision,
    FailClosedAuthorizer,
    Overlap,
    glob_to_regex,
)

__all__ = [
    "GLOBAL",
    "MODEL_PATH",
    "Access",
    "AuditLog",
    "Authorizer",
    "Decision",
    "FailClosedAuthorizer",
    "Overlap",
    "SnapshotAdapter",
    "glob_to_regex",
    "load_model",
    "membership_lines",
    "new_enforcer",
    "policy_lines",
    "read_audit",
]
