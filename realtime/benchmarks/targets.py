"""``avatar bench targets``: cost of computing training targets (they are made for every window).

Times :func:`realtime.targets.mouth_targets` and :func:`realtime.targets.motion_targets` on
synthetic utterances (random phones, noise audio) of a given length, and prints the median and
p95 time per call and the ratio to real time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from realtime.phones import PHONES
from realtime.targets import motion_targets, mouth_targets


def _utterance(rng: np.random.Generator, seconds: float) -> list[list[object]]:
    t, out = 0.0, []
    while t < seconds:
        p = PHONES[int(rng.integers(len(PHONES)))]
        d = float(rng.uniform(0.04, 0.2))
        out.append([p, t, min(t + d, seconds)])
        t += d
    return out


def cli_main(argv: list[str]) -> int:
    """Run the benchmark; prints one line per function."""
    parser = argparse.ArgumentParser(prog="avatar bench targets", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.56, help="utterance/window length")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats <= 0:
        parser.error("--seconds and --repeats must be positive")
    rng = np.random.default_rng(0)
    n = int(np.ceil(args.seconds * args.fps))
    cases = [
        (_utterance(rng, args.seconds), rng.standard_normal(int(args.seconds * 16000)) * 0.1)
        for _ in range(8)
    ]
    funcs = {
        "mouth_targets": lambda ph, pcm, i: mouth_targets(ph, n, args.fps),
        "motion_targets": lambda ph, pcm, i: motion_targets(ph, pcm, 16000, n, args.fps, i),
    }
    print(f"{args.seconds:.2f} s utterances at {args.fps} fps, {args.repeats} calls each")
    for name, fn in funcs.items():
        times = []
        for i in range(args.repeats):
            ph, pcm = cases[i % len(cases)]
            t0 = time.perf_counter()
            fn(ph, pcm, i)
            times.append(time.perf_counter() - t0)
        med, p95 = np.median(times) * 1e3, np.quantile(times, 0.95) * 1e3
        print(
            f"{name:<15} median {med:6.2f} ms  p95 {p95:6.2f} ms  ({args.seconds * 1e3 / med:,.0f}x real time)"
        )
    return 0
