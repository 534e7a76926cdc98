"""qvm-prefs: list, get, set or reset the properties of a qube."""

from __future__ import annotations

import sys

from qubesd.tools import _prefs


def main(argv: list[str] | None = None) -> int:
    return _prefs.prefs_main("qvm-prefs", argv, with_vm=True)


if __name__ == "__main__":
    sys.exit(main())
