"""One snapshot of everything that decides a call: qrexec policy, users and Casbin.

The three parts are loaded, validated and swapped together; a snapshot id (a hash of
all three) goes into every audit record, so a decision can be traced to the exact
policy that made it.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from acl import Authorizer, FailClosedAuthorizer
from qrexec.policy import PolicySnapshot, load_policy
from userdomains import Snapshot, UserDomainsError
from userdomains import parse as parse_userdomains

log = logging.getLogger("qubesd.policy")

USERDOMAINS_FILE = "userdomains.yaml"


@dataclass(frozen=True)
class PolicyState:
    qrexec: PolicySnapshot
    #: None without a userdomains.yaml: the qrexec policy alone decides (upstream mode)
    users: Snapshot | None
    authorizer: Authorizer | FailClosedAuthorizer | None
    #: why the users file failed at start-up (then every non-dom0 call is denied)
    users_error: str | None
    id: str

    @property
    def multi_user(self) -> bool:
        return self.authorizer is not None


def _combined_id(qrexec: PolicySnapshot, users_id: str) -> str:
    return hashlib.sha256(f"{qrexec.id}\0{users_id}".encode()).hexdigest()[:16]


def build_state(policy_dirs: list[Path], users_path: Path,
                users_text: bytes | None = None,
                policy_overrides: dict | None = None) -> PolicyState:
    """Load all three parts. Raises UserDomainsError only when ``users_text`` is given
    (an API change being validated); a broken file on disk fails closed instead."""
    qrexec = load_policy(policy_dirs, overrides=policy_overrides)
    if users_text is not None:
        users = parse_userdomains(users_text, source=str(users_path))
        return PolicyState(qrexec, users, Authorizer(users), None,
                           _combined_id(qrexec, users.id))
    if not users_path.exists():
        return PolicyState(qrexec, None, None, None, _combined_id(qrexec, "none"))
    try:
        with open(users_path, "rb") as f:
            users = parse_userdomains(f.read(), source=str(users_path))
    except (OSError, UserDomainsError) as err:
        reason = f"userdomains file unusable, denying every call from domains: {err}"
        log.error("%s", reason)
        return PolicyState(qrexec, None, FailClosedAuthorizer(reason), reason,
                           _combined_id(qrexec, "error:" + str(err)))
    return PolicyState(qrexec, users, Authorizer(users), None,
                       _combined_id(qrexec, users.id))


def fingerprint(paths: list[Path]) -> tuple:
    """Cheap change detection: (path, mtime_ns, size, inode) of every policy file."""
    out = []
    for root in paths:
        if root.is_file() or not root.exists():
            try:
                st = os.stat(root)
                out.append((str(root), st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append((str(root), None))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)
