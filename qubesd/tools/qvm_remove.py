"""qvm-remove: remove qubes (``admin.vm.Remove``)."""

from __future__ import annotations

import sys

from qubesd import exc
from qubesd.client import VM, Qubes, error_message
from qubesd.tools import _common


def vm_dependencies(app: Qubes, vm: VM) -> list[tuple[str | None, str]]:
    """(holder, property) pairs whose explicit value names ``vm``; holder None is global."""
    found: list[tuple[str | None, str]] = []
    for name, prop in app.get_all_properties().items():
        if prop.type == "vm" and prop.raw == vm.name:
            found.append((None, name))
    for other in app.domains.vms():
        if other.name == vm.name:
            continue
        try:
            props = other.get_all_properties()
        except (exc.QubesException, exc.PermissionDenied):
            continue
        for name, prop in props.items():
            if prop.type == "vm" and prop.raw == vm.name and not prop.is_default:
                found.append((other.name, name))
    return found


def get_parser() -> _common.ToolParser:
    parser = _common.ToolParser(
        prog="qvm-remove",
        description="Remove qubes. Asks for confirmation unless --force is given.")
    parser.add_argument("--force", "-f", action="store_true",
                        help="do not ask for confirmation")
    _common.add_vm_selection(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        app = Qubes()
        vms = _common.selected_vms(parser, args, app)
        if not args.force:
            print("This will completely remove the selected qube(s)...")
            for vm in vms:
                print(" ", vm.name)
            try:
                answer = input("Are you sure? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().upper() != "Y":
                print("Remove cancelled.")
                return 1
        failed = False

        def label(vm: VM, msg: str) -> str:
            return msg if len(vms) == 1 else f"{vm.name}: {msg}"

        for vm in vms:
            try:
                vm.remove()
            except exc.QubesVMInUseError as err:
                failed = True
                _common.report("qvm-remove", label(vm, error_message(err)))
                try:
                    deps = vm_dependencies(app, vm)
                except (exc.QubesException, exc.PermissionDenied):
                    deps = []
                for holder, prop in deps:
                    where = "global property" if holder is None else f"qube {holder}:"
                    print(f"  used by {where} {prop}", file=sys.stderr)
            except (exc.QubesException, exc.ProtocolError, exc.PermissionDenied) as err:
                failed = True
                _common.report("qvm-remove", label(vm, _common.describe_error(err)))
        return 1 if failed else 0

    return _common.run("qvm-remove", body)


if __name__ == "__main__":
    sys.exit(main())
