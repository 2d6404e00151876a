"""The training speech corpus: ``avatar data build`` (see :mod:`realtime.corpus.build`).

Manifest rows (``data/corpus/manifest.jsonl``) are documented in ``docs/bench/corpus.md`` and the team
brief: 16 kHz mono int16 WAVs with phone timings in the :mod:`realtime.phones` inventory.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def cli_main(argv: list[str]) -> int:
    """``avatar data build [--out DIR] [--seed N] [--size tiny|small|full] [--jobs N]``."""
    from realtime.corpus.build import SIZES, SOURCES, build, summary_json

    parser = argparse.ArgumentParser(
        prog="avatar data", description="Build the speech corpus used for training."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="synthesise/load speech with phone timings into a manifest")
    p.add_argument(
        "--out", type=Path, default=Path("data/corpus"), help="corpus folder (default data/corpus)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument(
        "--sources", default=",".join(SOURCES), help=f"comma-separated subset of {','.join(SOURCES)}"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log every dropped utterance")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        print(f"avatar data build: unknown source(s) {unknown}; choose from {list(SOURCES)}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("avatar data build: --jobs must be >= 1", file=sys.stderr)
        return 2
    try:
        summary = build(args.out, seed=args.seed, size=args.size, jobs=args.jobs, sources=sources,
                        progress=not args.quiet)  # fmt: skip
    except (RuntimeError, OSError) as exc:
        print(f"avatar data build: {exc}", file=sys.stderr)
        return 1
    print(summary_json(summary))
    return 0
