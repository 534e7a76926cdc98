"""qvm-ls: list qubes and their properties."""

from __future__ import annotations

import sys

from qubesd.client import VM, PropertyValue, Qubes
from qubesd.tools import _common

#: Preset formats, as upstream.
FORMATS = {
    "simple": ("name", "state", "class", "label", "template", "netvm"),
    "network": ("name", "state", "netvm", "ip", "gateway"),
    "full": ("name", "state", "class", "label", "qid", "xid", "uuid"),
}

#: Columns that come from ``admin.vm.List`` rather than from properties.
LIST_COLUMNS = {"name", "state", "class"}


def get_parser() -> _common.ToolParser:
    parser = _common.ToolParser(
        prog="qvm-ls",
        description="List qubes and their parameters. Without VMNAME, lists every qube the "
                    "caller can see (dom0 included). Columns other than NAME, STATE and "
                    "CLASS are qube properties (any property name may be used as a field).")
    parser.add_argument("--all", action="store_true",
                        help="list all qubes (the default when no VMNAME is given)")
    parser.add_argument("--exclude", action="append", default=[], metavar="EXCLUDE",
                        help="leave this qube out (may be repeated)")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--format", "-o", choices=sorted(FORMATS), default="simple",
                     help="preset format (default: simple = NAME STATE CLASS LABEL TEMPLATE "
                          "NETVM)")
    fmt.add_argument("--fields", "-O", metavar="FIELD,...",
                     help="comma-separated columns, e.g. name,state,memory")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--raw-list", action="store_true",
                     help="print only the names, one per line")
    out.add_argument("--raw-data", action="store_true",
                     help="no header, cells separated by '|' (for scripts)")
    state = parser.add_argument_group("filter by power state")
    state.add_argument("--running", action="store_true", help="only running qubes")
    state.add_argument("--paused", action="store_true", help="only paused qubes")
    state.add_argument("--halted", action="store_true", help="only halted qubes")
    parser.add_argument("--no-spinner", "--spinner", action="store_true",
                        help="accepted for compatibility; there is no spinner")
    parser.add_argument("domains", nargs="*", metavar="VMNAME", help="qubes to list")
    return parser


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value)
    return str(value)


class _Row:
    """Lazily fetched properties of one VM (one GetAll, with upstream's fallback)."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self._props: dict[str, PropertyValue] | None = None

    def props(self) -> dict[str, PropertyValue]:
        if self._props is None:
            self._props = self.vm.get_all_properties()
        return self._props

    def cell(self, column: str) -> str:
        if column == "name":
            return self.vm.name
        if column == "state":
            return self.vm.state or "NA"
        if column == "class":
            return self.vm.klass or "-"
        prop = self.props().get(column)
        if prop is None:
            return "-"
        return _cell(prop.value)


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        if args.fields:
            columns = [c.strip().lower().replace("-", "_") for c in args.fields.split(",")
                       if c.strip()]
            if not columns:
                parser.error("--fields needs at least one column")
        else:
            columns = list(FORMATS[args.format])
        if args.all and args.domains:
            parser.error("--all and VMNAME are mutually exclusive")
        if args.exclude and args.domains:
            parser.error("--exclude cannot be used with VMNAME")
        app = Qubes()
        if args.domains:
            vms = _common.resolve_vms(app, dict.fromkeys(args.domains))
        else:
            vms = [app.domains[n] for n in app.domains if n not in args.exclude]
        wanted_states = {s for s, on in (("Running", args.running), ("Paused", args.paused),
                                         ("Halted", args.halted)) if on}
        if wanted_states:
            vms = [vm for vm in vms if vm.state in wanted_states]
        vms = sorted(vms)
        if args.raw_list:
            for vm in vms:
                sys.stdout.write(vm.name + "\n")
            return 0
        rows = [_Row(vm) for vm in vms]
        data = [[row.cell(col) for col in columns] for row in rows]
        if args.raw_data:
            for cells in data:
                sys.stdout.write("|".join(cells) + "\n")
            return 0
        header = [col.upper().replace("_", "-") for col in columns]
        _common.print_table([header, *data])
        return 0

    return _common.run("qvm-ls", body)


if __name__ == "__main__":
    sys.exit(main())
