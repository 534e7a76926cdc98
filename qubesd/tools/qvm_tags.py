"""qvm-tags: list, add or remove the tags of a qube."""

from __future__ import annotations

import sys

from qubesd import exc
from qubesd.client import Qubes
from qubesd.tools import _common

COMMANDS = {"list": "list", "ls": "list", "l": "list",
            "add": "add", "a": "add", "set": "add",
            "del": "del", "d": "del", "unset": "del", "u": "del", "remove": "del"}


def get_parser() -> _common.ToolParser:
    parser = _common.ToolParser(
        prog="qvm-tags",
        description="Manage the tags of a qube. 'qvm-tags VM' and 'qvm-tags VM list' list "
                    "them (with TAGs, print those that are set and exit 1 if any is not); "
                    "'add TAG...' sets tags; 'del TAG...' removes them.")
    parser.add_argument("domain", metavar="VMNAME", help="name of the qube")
    parser.add_argument("command", metavar="COMMAND", nargs="?", default="list",
                        help="list (default), add or del; aliases: ls, set, unset, remove")
    parser.add_argument("tags", metavar="TAG", nargs="*", help="tag names")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_intermixed_args(argv)
    command = COMMANDS.get(args.command)
    if command is None:
        parser.error(f"unknown command {args.command!r} (list, add or del)")
    if command in ("add", "del") and not args.tags:
        parser.error(f"{args.command} needs at least one TAG")

    def body() -> int:
        app = Qubes()
        vm = _common.resolve_vms(app, [args.domain])[0]
        if command == "list":
            if not args.tags:
                for tag in sorted(vm.tags):
                    print(tag)
                return 0
            missing = False
            for tag in args.tags:
                if tag in vm.tags:
                    print(tag)
                else:
                    missing = True
            return 1 if missing else 0
        if command == "add":
            for tag in args.tags:
                vm.tags.add(tag)
            return 0
        for tag in args.tags:
            try:
                vm.tags.remove(tag)
            except exc.QubesTagNotFoundError:
                raise _common.ToolError(f"tag not set: {tag!r}") from None
        return 0

    return _common.run("qvm-tags", body)


if __name__ == "__main__":
    sys.exit(main())
