"""qvm-start, qvm-shutdown, qvm-pause, qvm-unpause, qvm-kill."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from qubesd import exc
from qubesd.client import VM, Qubes
from qubesd.tools import _common

_ERRORS = (exc.QubesException, exc.ProtocolError, exc.PermissionDenied)


def _parser(prog: str, description: str) -> _common.ToolParser:
    parser = _common.ToolParser(prog=prog, description=description)
    _common.add_vm_selection(parser)
    return parser


def _each(prog: str, vms: list[VM], action: Callable[[VM], None],
          ignore: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``action`` on every qube (in parallel); report failures; 1 if any failed."""
    def one(vm: VM) -> str | None:
        try:
            action(vm)
        except ignore:
            return None
        except _ERRORS as err:
            return _common.describe_error(err)
        return None

    if len(vms) <= 1:
        results = [one(vm) for vm in vms]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(vms))) as pool:
            results = list(pool.map(one, vms))
    failed = False
    for vm, error in zip(vms, results):
        if error is not None:
            failed = True
            _common.report(prog, error if len(vms) == 1 else f"{vm.name}: {error}")
    return 1 if failed else 0


def _simple(prog: str, description: str, argv: list[str] | None,
            action: Callable[[VM], None],
            ignore: tuple[type[BaseException], ...] = ()) -> int:
    parser = _parser(prog, description)
    args = parser.parse_args(argv)

    def body() -> int:
        app = Qubes()
        vms = _common.selected_vms(parser, args, app)
        return _each(prog, vms, action, ignore)

    return _common.run(prog, body)


def _start(vm: VM) -> None:
    state = vm.get_power_state()
    if state == "Paused":
        raise _common_error(f"domain is paused, use qvm-unpause: {vm.name!r}")
    if state != "Halted":
        return  # already running: nothing to do, as upstream
    try:
        vm.start()
    except exc.QubesVMNotHaltedError:
        pass


def _common_error(msg: str) -> exc.QubesException:
    return exc.QubesException(msg)


def start_main(argv: list[str] | None = None) -> int:
    return _simple("qvm-start", "Start qubes (admin.vm.Start); running ones are left alone.",
                   argv, _start)


def pause_main(argv: list[str] | None = None) -> int:
    return _simple("qvm-pause", "Pause running qubes (admin.vm.Pause).", argv,
                   lambda vm: vm.pause())


def _unpause(vm: VM) -> None:
    if vm.get_power_state() != "Paused":
        raise _common_error(f"domain is not paused: {vm.name!r}")
    vm.unpause()


def unpause_main(argv: list[str] | None = None) -> int:
    return _simple("qvm-unpause", "Unpause paused qubes (admin.vm.Unpause).", argv, _unpause)


def kill_main(argv: list[str] | None = None) -> int:
    return _simple("qvm-kill", "Kill qubes at once, without a clean shutdown "
                   "(admin.vm.Kill); halted qubes are ignored.", argv,
                   lambda vm: vm.kill(), ignore=(exc.QubesVMNotStartedError,))


def shutdown_main(argv: list[str] | None = None) -> int:
    prog = "qvm-shutdown"
    parser = _parser(prog, "Shut qubes down gracefully (admin.vm.Shutdown). Halted qubes "
                           "are ignored.")
    parser.add_argument("--wait", action="store_true",
                        help="wait until the qubes are halted (the daemon waits up to each "
                             "qube's shutdown_timeout)")
    parser.add_argument("--force", action="store_true",
                        help="shut down even if other running qubes depend on it (e.g. a "
                             "netvm in use)")
    args = parser.parse_args(argv)

    def body() -> int:
        app = Qubes()
        vms = _common.selected_vms(parser, args, app)
        if args.all:
            vms = [vm for vm in vms if vm.state != "Halted"]
        remaining = list(vms)
        errors: dict[str, str] = {}

        def one(vm: VM) -> str | None:
            try:
                vm.shutdown(force=args.force, wait=args.wait)
            except exc.QubesVMNotStartedError:
                pass
            except _ERRORS as err:
                return _common.describe_error(err)
            return None

        while remaining:
            if len(remaining) == 1:
                results = [one(remaining[0])]
            else:
                with ThreadPoolExecutor(max_workers=min(8, len(remaining))) as pool:
                    results = list(pool.map(one, remaining))
            round_errors = {vm.name: err for vm, err in zip(remaining, results)
                            if err is not None}
            progressed = len(round_errors) < len(remaining)
            errors = round_errors
            # With --wait, a qube refused because others still used it (e.g. a netvm)
            # is retried once the others are down, as upstream qvm-shutdown --all does.
            if not args.wait or not round_errors or not progressed:
                break
            remaining = [vm for vm in remaining if vm.name in round_errors]
        for vm in vms:
            if vm.name in errors:
                msg = errors[vm.name]
                _common.report(prog, msg if len(vms) == 1 else f"{vm.name}: {msg}")
        return 1 if errors else 0

    return _common.run(prog, body)


def _main_for(name: str) -> Callable[[list[str] | None], int]:
    return {"qvm-start": start_main, "qvm-shutdown": shutdown_main, "qvm-pause": pause_main,
            "qvm-unpause": unpause_main, "qvm-kill": kill_main}[name]


if __name__ == "__main__":
    # python -m qubesd.tools.lifecycle qvm-start VM...
    if len(sys.argv) < 2 or sys.argv[1] not in ("qvm-start", "qvm-shutdown", "qvm-pause",
                                                 "qvm-unpause", "qvm-kill"):
        print("usage: python -m qubesd.tools.lifecycle "
              "{qvm-start,qvm-shutdown,qvm-pause,qvm-unpause,qvm-kill} ARGS...",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(_main_for(sys.argv[1])(sys.argv[2:]))
