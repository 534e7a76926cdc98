"""Default locations shared by the daemon, the qrexec daemon and the clients.

`make run` keeps all state under ``<checkout>/var``; the clients find the daemon there
unless ``$QUBESD_SOCKET`` (or ``$QUBESD_RUN_DIR``) says otherwise.
"""

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_VAR = CHECKOUT / "var"
DEFAULT_STATE_DIR = DEFAULT_VAR / "lib"
DEFAULT_RUN_DIR = DEFAULT_VAR / "run"
DEFAULT_CONFIG_DIR = DEFAULT_VAR / "etc"
DEFAULT_LIBVIRT_URI = "test:///default"

SOCKET_NAME = "qubesd.sock"
INTERNAL_SOCKET_NAME = "qubesd.internal.sock"


def run_dir() -> Path:
    return Path(os.environ.get("QUBESD_RUN_DIR", DEFAULT_RUN_DIR))


def qubesd_socket() -> Path:
    """The admin socket a dom0 client talks to."""
    env = os.environ.get("QUBESD_SOCKET")
    return Path(env) if env else run_dir() / SOCKET_NAME


def qubesd_internal_socket() -> Path:
    env = os.environ.get("QUBESD_INTERNAL_SOCKET")
    return Path(env) if env else run_dir() / INTERNAL_SOCKET_NAME
