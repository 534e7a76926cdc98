"""Shared plumbing of the ``qvm-*`` tools: argument parsing, error reporting, tables."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

from qubesd import exc
from qubesd.client import VM, Qubes, QubesDaemonCommunicationError, error_message

EPILOG_TRANSPORT = (
    "The daemon is reached at $QUBESD_SOCKET (default <checkout>/var/run/qubesd.sock, "
    "as started by `make run`), or through qrexec-client-vm when $QREXEC_VM_SOCKET is set.")


class ToolError(Exception):
    """A user-facing error: printed as ``<tool>: error: <msg>``, exit code 1."""


class ToolParser(argparse.ArgumentParser):
    """ArgumentParser with upstream-like ``<prog>: error: <msg>`` runtime errors."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("epilog", EPILOG_TRANSPORT)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error_runtime(self, message: str) -> NoReturn:
        raise ToolError(message)


def report(prog: str, message: str) -> None:
    """Print one error line; never more than one line per error."""
    text = " ".join(message.splitlines()) or "unknown error"
    print(f"{prog}: error: {text}", file=sys.stderr)


def describe_error(err: BaseException) -> str:
    msg = error_message(err)
    if isinstance(err, exc.PermissionDenied) and not isinstance(err, QubesDaemonCommunicationError):
        return f"permission denied: {msg}" if msg and msg != "PermissionDenied" else \
            "permission denied"
    return msg


def run(prog: str, body: Callable[[], int]) -> int:
    """Run a tool body; turn every expected failure into one error line and exit 1."""
    try:
        return body()
    except ToolError as err:
        report(prog, str(err))
    except (exc.QubesException, exc.ProtocolError, exc.PermissionDenied) as err:
        report(prog, describe_error(err))
    except KeyboardInterrupt:
        report(prog, "interrupted")
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth reporting
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 1
    except OSError as err:
        report(prog, str(err))
    return 1


def make_app() -> Qubes:
    return Qubes()


def resolve_vms(app: Qubes, names: Iterable[str]) -> list[VM]:
    """Look names up in ``admin.vm.List`` like upstream tools (one List, then lookups)."""
    vms = []
    for name in names:
        if name not in app.domains:
            raise ToolError(f"no such domain: {name!r}")
        vms.append(app.domains[name])
    return vms


def print_table(rows: Sequence[Sequence[str]], out: object = None) -> None:
    """Left-aligned columns separated by two spaces (like ``column -t``)."""
    stream = out or sys.stdout
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip(), file=stream)  # type: ignore[call-overload]


def add_vm_selection(parser: argparse.ArgumentParser, nargs: str = "*") -> None:
    """``--all``, ``--exclude`` and VMNAME arguments, as upstream's multi-VM tools."""
    parser.add_argument("--all", action="store_true",
                        help="act on all qubes (except dom0)")
    parser.add_argument("--exclude", action="append", default=[], metavar="EXCLUDE",
                        help="exclude the qube from --all (may be repeated)")
    parser.add_argument("domains", nargs=nargs, metavar="VMNAME", help="name of the qube")


def selected_vms(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 app: Qubes) -> list[VM]:
    if args.exclude and not args.all:
        parser.error("--exclude can only be used with --all")
    if args.all:
        if args.domains:
            parser.error("--all and VMNAME are mutually exclusive")
        names = [n for n in app.domains if n != "dom0" and n not in args.exclude]
        return [app.domains[n] for n in names]
    if not args.domains:
        parser.error("one of the arguments --all VMNAME is required")
    return resolve_vms(app, dict.fromkeys(args.domains))
