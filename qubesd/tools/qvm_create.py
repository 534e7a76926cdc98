"""qvm-create: create a new qube (``admin.vm.Create.<Class>`` / ``CreateInPool``)."""

from __future__ import annotations

import argparse
import sys

from qubesd import exc
from qubesd.client import Qubes, error_message
from qubesd.tools import _common

VOLUMES = ("root", "private", "volatile", "kernel")


def _property(untrusted_text: str) -> tuple[str, str]:
    name, sep, value = untrusted_text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {untrusted_text!r}")
    return name.replace("-", "_"), value


def get_parser() -> _common.ToolParser:
    parser = _common.ToolParser(
        prog="qvm-create",
        description="Create a new qube. Example: qvm-create --class AppVM --template "
                    "fedora --label red work")
    parser.add_argument("--class", "-C", dest="cls", default="AppVM", metavar="CLASS",
                        help="class of the new qube (default: %(default)s)")
    parser.add_argument("--template", "-t", metavar="TEMPLATE",
                        help="template the qube is based on (default: the global "
                             "default_template, or default_dispvm for DispVM)")
    parser.add_argument("--label", "-l", required=True, metavar="LABEL",
                        help="colour label of the qube (see admin.label.List: red, orange, "
                             "yellow, green, gray, blue, purple, black, ...)")
    parser.add_argument("--property", "--prop", "-p", dest="properties", action="append",
                        type=_property, default=[], metavar="NAME=VALUE",
                        help="set a property of the new qube (may be repeated)")
    parser.add_argument("--pool", "-P", action="append", default=[], metavar="POOL",
                        help="storage pool for the qube's volumes, or VOLUME:POOL for one "
                             "volume (may be repeated)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    parser.add_argument("name", metavar="VMNAME", help="name of the new qube")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    pool: str | None = None
    pools: dict[str, str] = {}
    for untrusted_spec in args.pool:
        volume, sep, pool_name = untrusted_spec.partition(":")
        if sep:
            if volume not in VOLUMES:
                parser.error(f"--pool: unknown volume {volume!r} (one of {', '.join(VOLUMES)})")
            pools[volume] = pool_name
        elif pool is not None:
            parser.error("--pool POOL given twice")
        else:
            pool = untrusted_spec
    if pool and pools:
        parser.error("--pool POOL and --pool VOLUME:POOL cannot be combined")

    def body() -> int:
        app = Qubes()
        labels = app.labels()
        if args.label not in labels:
            raise _common.ToolError(
                f"unknown label {args.label!r} (one of: {', '.join(labels)})")
        # the template is not checked here: a management VM may be allowed to base
        # domains on a template it cannot list; qubesd answers for a wrong one
        if args.name in app.domains:
            raise _common.ToolError(f"qube already exists: {args.name!r}")
        vm = app.create_vm(args.cls, args.name, args.label, template=args.template,
                           pool=pool, pools=pools or None)
        for name, value in args.properties:
            try:
                vm.set_property(name, value)
            except (exc.QubesException, exc.ProtocolError, exc.PermissionDenied) as err:
                why = error_message(err)
                if isinstance(err, exc.QubesNoSuchPropertyError):
                    why = f"no such property: {name!r}"
                try:
                    vm.remove()
                    undone = "the qube was removed again"
                except (exc.QubesException, exc.ProtocolError, exc.PermissionDenied) as err2:
                    undone = f"the qube was created but could not be removed: " \
                             f"{error_message(err2)}"
                raise _common.ToolError(
                    f"failed to set property {name!r}: {why}; {undone}") from None
        return 0

    return _common.run("qvm-create", body)


if __name__ == "__main__":
    sys.exit(main())
