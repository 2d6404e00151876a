"""``avatar bench corpus``: cost of each corpus stage and agreement of engine timings with the aligner.

Measures, over ``--n`` utterances per engine voice (seeded texts): synthesis real-time factor, the
pocketsphinx aligner's real-time factor, each engine's median boundary error against the aligner, and
the real-time factor of each augmentation kind. Prints JSON (median and p95 of each).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _stats(values: list[float], digits: int = 4) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(float(np.median(values)), digits),
        "p95": round(float(np.percentile(values, 95)), digits),
    }


def run(n: int = 6, seed: int = 0) -> dict:
    """Run the measurements; returns the report dict."""
    from realtime.augment import KINDS, apply
    from realtime.corpus import build, engines, text
    from realtime.corpus.align import Aligner, AlignmentError, compare_timings

    rng = np.random.default_rng(seed)
    vocabulary = text.load_vocabulary()
    words = text.load_cmudict_words()
    aligner = Aligner()
    report: dict = {
        "seed": seed,
        "n_per_voice": n,
        "synthesis_rtf": {},
        "boundary_error_ms": {},
        "signed_offset_ms": {},
    }
    align_rtf: list[float] = []
    clips: list[np.ndarray] = []
    voices = [("flite", v) for v in engines.FLITE_VOICES] + [("festival", v) for v in engines.FESTIVAL_VOICES]
    voices += [("mbrola", v) for v in engines.MBROLA_VOICES] + [("pico", v) for v in engines.PICO_VOICES]
    for source, voice in voices:
        if not engines.voice_available(source, voice):
            continue
        synth_rtf, errors, offsets = [], [], []
        for k in range(n):
            line = build._tts_line(rng, words, [], vocabulary)
            job = build.Job(f"{source}-{voice}-{k}", source, voice, "", "en", "train", line)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                try:
                    speech = build._synthesize(job, Path(tmp))
                except engines.SynthesisError:
                    continue
                synth_rtf.append((time.perf_counter() - t0) / (len(speech.pcm) / 16000))
            clips.append(speech.pcm)
            t0 = time.perf_counter()
            try:
                aligned = aligner.align(speech.pcm, text.words_for_alignment(line))
            except AlignmentError:
                continue
            align_rtf.append((time.perf_counter() - t0) / (len(speech.pcm) / 16000))
            if speech.phones is not None:
                check = compare_timings(build._normalize(speech.phones, source), aligned)
                errors.append(1000 * check.median_error_s)
                offsets.append(1000 * check.offset_s)
        report["synthesis_rtf"][f"{source}/{voice}"] = _stats(synth_rtf)
        if errors:
            report["boundary_error_ms"][f"{source}/{voice}"] = _stats(errors, 1)
            report["signed_offset_ms"][f"{source}/{voice}"] = _stats(offsets, 1)
    report["aligner_rtf"] = _stats(align_rtf)
    augment_rtf: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        rtf = []
        for pcm in clips[: 4 * n]:
            t0 = time.perf_counter()
            apply(pcm, 16000, rng, [kind])
            rtf.append((time.perf_counter() - t0) / (len(pcm) / 16000))
        augment_rtf[kind] = _stats(rtf, 5)
    report["augment_rtf"] = augment_rtf
    return report


def cli_main(argv: list[str]) -> int:
    """``avatar bench corpus [--n 6] [--seed 0] [--json OUT]``."""
    parser = argparse.ArgumentParser(prog="avatar bench corpus", description=__doc__)
    parser.add_argument("--n", type=int, default=6, help="utterances per engine voice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.n < 1:
        print("avatar bench corpus: --n must be >= 1")
        return 2
    report = run(args.n, args.seed)
    out = json.dumps(report, indent=2)
    print(out)
    if args.json:
        args.json.write_text(out + "\n", encoding="utf-8")
    return 0
