"""Benchmarks: ``avatar bench NAME [args]`` runs ``realtime.benchmarks.NAME.cli_main(args)``.

Each area owns its own module here (``live``, ``motion``, ``render``, ``offline``,
``load``, ...). A module is found by name, imported only when it runs, and writes
its measured numbers to stdout (and, where it says so, to ``docs/bench/``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def _usage() -> str:
    names = available()
    lines = ["usage: avatar bench NAME [options]", "", "benchmarks:"]
    lines += [f"  {name}" for name in names] or ["  (none installed)"]
    lines += ["", "Run 'avatar bench NAME --help' for a benchmark's options."]
    return "\n".join(lines)


def cli_main(argv: list[str]) -> int:
    """Dispatch ``avatar bench NAME [args]`` to ``realtime.benchmarks.NAME.cli_main(args)``."""
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in available():
        print(f"avatar bench: unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{name}")
    return int(module.cli_main(rest) or 0)
