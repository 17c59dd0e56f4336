"""`make bench`: run every benchmark module in bench/ that defines `main()`.

`python -m bench NAME ...` runs only those (`bench_NAME`, the prefix optional).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    # `python -m bench shadow` and `python -m bench bench_shadow` run the same module.
    names = [
        name if name.startswith("bench_") else f"bench_{name}" for name in sys.argv[1:]
    ] or sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.name.startswith("bench_")
    )
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
