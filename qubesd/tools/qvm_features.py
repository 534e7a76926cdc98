"""qvm-features: list, get, set or unset the features of a qube."""

from __future__ import annotations

import sys

from qubesd import exc
from qubesd.client import Qubes
from qubesd.tools import _common


def get_parser() -> _common.ToolParser:
    parser = _common.ToolParser(
        prog="qvm-features",
        description="Manage qube features. 'qvm-features VM' lists them as 'name  value'; "
                    "'qvm-features VM FEATURE' prints its value (exit 1, no output, if it "
                    "is not set); 'qvm-features VM FEATURE VALUE' sets it; --unset removes it.")
    parser.add_argument("domain", metavar="VMNAME", help="name of the qube")
    parser.add_argument("feature", metavar="FEATURE", nargs="?", help="name of the feature")
    parser.add_argument("value", metavar="VALUE", nargs="?", help="new value of the feature")
    parser.add_argument("--unset", "--default", "--delete", "-D", dest="delete",
                        action="store_true", help="remove FEATURE (no error if it is not set)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_intermixed_args(argv)
    if args.feature is None and (args.delete or args.value is not None):
        parser.error("--unset and VALUE need a FEATURE")
    if args.delete and args.value is not None:
        parser.error("--unset cannot be combined with VALUE")

    def body() -> int:
        app = Qubes()
        vm = _common.resolve_vms(app, [args.domain])[0]
        if args.feature is None:
            items = vm.features.items()
            _common.print_table([[name, value] for name, value in items])
            return 0
        if args.delete:
            try:
                del vm.features[args.feature]
            except exc.QubesFeatureNotFoundError:
                pass
            return 0
        if args.value is not None:
            vm.features[args.feature] = args.value
            return 0
        try:
            print(vm.features[args.feature])
        except exc.QubesFeatureNotFoundError:
            return 1
        return 0

    return _common.run("qvm-features", body)


if __name__ == "__main__":
    sys.exit(main())
