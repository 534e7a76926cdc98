"""qubes-prefs: list, get, set or reset global properties (``admin.property.*``)."""

from __future__ import annotations

import sys

from qubesd.tools import _prefs


def main(argv: list[str] | None = None) -> int:
    return _prefs.prefs_main("qubes-prefs", argv, with_vm=False)


if __name__ == "__main__":
    sys.exit(main())
