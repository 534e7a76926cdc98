"""Users, the VMs acting for them, domain sets and the ``userdomains.yaml`` file.

Imports nothing of ``qubesd`` or ``acl``: it is pure data and validation.
"""

from .loader import MAX_BYTES, UserDomainsError, load, parse
from .model import (
    CREATED_BY_PREFIX,
    GUI_ROLE,
    GUIVM_TAG_PREFIX,
    DomainSet,
    Grant,
    Issue,
    Principal,
    Role,
    Snapshot,
    User,
)
from .names import glob_error, ident_error, tag_error, vm_name_error

__all__ = [
    "CREATED_BY_PREFIX",
    "GUIVM_TAG_PREFIX",
    "GUI_ROLE",
    "MAX_BYTES",
    "DomainSet",
    "Grant",
    "Issue",
    "Principal",
    "Role",
    "Snapshot",
    "User",
    "UserDomainsError",
    "glob_error",
    "ident_error",
    "load",
    "parse",
    "tag_error",
    "vm_name_error",
]
