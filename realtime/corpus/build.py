"""``avatar data build``: plan utterances from a seed, synthesise/load them in parallel, write the corpus.

The plan (which text each voice speaks, with which rate/pitch, which split, which augmentations) is a
pure function of the seed and size, and each job carries its own seed, so the output does not depend
on the number of worker processes or their scheduling. The corpus is written to a temporary folder
and swapped in only when complete (see :func:`publish`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime.corpus import engines, text
from realtime.corpus.align import Aligner, AlignmentError, Phones, compare_timings
from realtime.phones import SILENCE, UnknownPhoneError, normalize_phone

log = logging.getLogger("realtime.corpus")

SOURCES = ("flite", "festival", "mbrola", "pico", "allison", "festvox_ru")

# Whole voices held out as the TTS test set (plus Allison, the real-speech test set).
TEST_VOICES = frozenset({("flite", "kal16"), ("festival", "ked"), ("mbrola", "us3"), ("pico", "en-GB")})

# Voices whose own timings are biased: MBROLA us3's diphone cut points put its audio 16-30 ms behind its
# .pho boundaries (proportional to phone length; measured with `avatar bench corpus`, other voices are
# within 8 ms). Their utterances are still checked, but the aligner's timings are the ones kept.
ALIGNER_TIMED_VOICES = frozenset({("mbrola", "us3")})

MAX_BOUNDARY_ERROR_S = 0.040  # drop a TTS utterance whose median boundary error vs the aligner is above
MIN_MATCH_RATIO = 0.5  # ... or whose phone sequence the aligner matches this poorly


@dataclass(frozen=True)
class SizeSpec:
    """How much of each source a size builds."""

    per_tts_voice: int  # utterances per TTS voice
    festvox_ru: int  # recordings (620 available)
    allison: int  # prompts (~560 with speech)
    augment_fraction: float  # augmented copies per train/val utterance (expected)
    val_fraction: float
    # More utterances for each *training* TTS voice, planned from their own random stream after the rest, so
    # the held-out test set and the val split (which picks the evaluation thresholds) stay exactly as without them.
    extra_train_per_tts_voice: int = 0


SIZES = {
    "tiny": SizeSpec(per_tts_voice=1, festvox_ru=2, allison=2, augment_fraction=0.5, val_fraction=0.2),
    "small": SizeSpec(per_tts_voice=12, festvox_ru=60, allison=40, augment_fraction=0.3, val_fraction=0.1),
    # full: ~1.2 h of clean TTS (15 voices x 90 x ~3.2 s; 4 voices held out), all of festvox-ru (1.66 h),
    # Allison (0.35 h, test), plus augmented copies of 30% of train/val; then 110 more training utterances per
    # training voice (+1.1 h), so English TTS outweighs the Russian real speech in training.
    # full-base: full without the extra training utterances (the corpus of the first training stage of the
    # shipped weights, see models/motion/MODEL_CARD.md); test and val are identical to full's.
    "full-base": SizeSpec(
        per_tts_voice=90, festvox_ru=620, allison=1000, augment_fraction=0.3, val_fraction=0.05
    ),
    "full": SizeSpec(
        per_tts_voice=90,
        festvox_ru=620,
        allison=1000,
        augment_fraction=0.3,
        val_fraction=0.05,
        extra_train_per_tts_voice=110,
    ),
}


@dataclass
class Job:
    """One utterance to produce (plus its augmented copies)."""

    id: str
    source: str
    voice: str
    speaker: str
    lang: str
    split: str
    text: str
    item: str = ""  # recording id for real-speech sources
    params: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    augments: list[list[str]] = field(default_factory=list)
    check: bool = True  # compare the engine's timings with the aligner


@dataclass
class Result:
    """What a job produced: manifest rows, or the reason it was dropped."""

    job_id: str
    source: str
    rows: list[dict] = field(default_factory=list)
    dropped: str | None = None
    boundary_error_s: float | None = None


def _voices(source: str) -> list[str]:
    if source == "flite":
        return list(engines.FLITE_VOICES)
    if source == "festival":
        return list(engines.FESTIVAL_VOICES)
    if source == "mbrola":
        return list(engines.MBROLA_VOICES)
    if source == "pico":
        return list(engines.PICO_VOICES)
    return []


def plan(seed: int, size: str, sources: Iterable[str] = SOURCES) -> list[Job]:
    """All jobs for a build, deterministic in ``seed`` and ``size``."""
    spec = SIZES[size]
    rng = np.random.default_rng(seed)
    words = text.load_cmudict_words()
    allison_texts = text.load_allison_transcripts()
    vocabulary = text.load_vocabulary()
    # TTS lines must be alignable (all words in the aligner's dictionary) so their timings can be checked.
    allison_lines = sorted(t for t in set(allison_texts.values()) if text.in_vocabulary(t, vocabulary))
    jobs: list[Job] = []
    for source in SOURCES:
        if source not in sources or not engines.available(source):
            continue
        if source == "allison":
            names = sorted(allison_texts)
            if engines.allison_dir() is None:
                continue
            names = [n for n in names if (engines.allison_dir() / f"{n}.g722").exists()]  # type: ignore[operator]
            pick = (
                sorted(rng.permutation(len(names))[: spec.allison])
                if spec.allison < len(names)
                else range(len(names))
            )
            for i in pick:
                n = names[int(i)]
                jobs.append(
                    Job(
                        f"allison-{n.replace('/', '_')}",
                        "allison",
                        "allison",
                        "allison",
                        "en",
                        "test",
                        allison_texts[n],
                        item=n,
                    )
                )
            continue
        if source == "festvox_ru":
            ids = engines.festvox_ru_ids()
            texts = engines.festvox_ru_texts()
            pick = sorted(rng.permutation(len(ids))[: spec.festvox_ru])
            for i in pick:
                uid = ids[int(i)]
                jobs.append(
                    Job(
                        f"festvox_ru-{uid}",
                        "festvox_ru",
                        "msu_ru_nsh",
                        "msu_ru_nsh",
                        "ru",
                        "train",
                        texts.get(uid, ""),
                        item=uid,
                        check=False,
                    )
                )
            continue
        for voice in _voices(source):
            if not engines.voice_available(source, voice):
                log.warning("skipping %s voice %s: not installed", source, voice)
                continue
            split = "test" if (source, voice) in TEST_VOICES else "train"
            # Allison's prompt texts go only to held-out voices, so no training text overlaps the real test set.
            lines = allison_lines if split == "test" else []
            for k in range(spec.per_tts_voice):
                line = _tts_line(rng, words, lines, vocabulary)
                jobs.append(
                    Job(
                        f"{source}-{voice}-{k:04d}",
                        source,
                        voice,
                        f"{source}-{voice}",
                        "en",
                        split,
                        line,
                        params=_tts_params(source, rng),
                    )
                )
    for job in jobs:
        job.seed = int(rng.integers(2**31))
        if job.split == "train" and rng.random() < spec.val_fraction:
            job.split = "val"
        if job.split != "test":
            n_aug = int(spec.augment_fraction) + int(rng.random() < spec.augment_fraction % 1.0)
            job.augments = [_augment_kinds(rng) for _ in range(n_aug)]
    return jobs + _extra_train_jobs(seed, spec, sources, words, vocabulary)


def _extra_train_jobs(
    seed: int, spec: SizeSpec, sources: Iterable[str], words: list[str], vocabulary: frozenset[str]
) -> list[Job]:
    """``spec.extra_train_per_tts_voice`` more train-split utterances per training TTS voice.

    They draw from their own stream (seeded by ``seed`` and a tag) and are appended, so every other job of
    the plan -- above all the held-out test voices and the val split -- is identical with or without them.
    """
    rng = np.random.default_rng([seed, 0x7E57])
    jobs: list[Job] = []
    for source in ("flite", "festival", "mbrola", "pico"):
        if spec.extra_train_per_tts_voice <= 0 or source not in sources or not engines.available(source):
            continue
        for voice in _voices(source):
            if (source, voice) in TEST_VOICES or not engines.voice_available(source, voice):
                continue
            for k in range(spec.per_tts_voice, spec.per_tts_voice + spec.extra_train_per_tts_voice):
                line = _tts_line(rng, words, [], vocabulary)
                job = Job(
                    f"{source}-{voice}-{k:04d}",
                    source,
                    voice,
                    f"{source}-{voice}",
                    "en",
                    "train",
                    line,
                    params=_tts_params(source, rng),
                )
                job.seed = int(rng.integers(2**31))
                n_aug = int(spec.augment_fraction) + int(rng.random() < spec.augment_fraction % 1.0)
                job.augments = [_augment_kinds(rng) for _ in range(n_aug)]
                jobs.append(job)
    return jobs


def _tts_line(
    rng: np.random.Generator, words: list[str], allison_lines: list[str], vocabulary: frozenset[str]
) -> str:
    """55% generated sentences, 25% cmudict word strings, 20% Allison transcripts (if given; text only)."""
    for _ in range(50):
        r = rng.random()
        if r < 0.55:
            line = text.generated_sentence(rng)
        elif r < 0.8 or not allison_lines:
            line = text.word_string(rng, words)
        else:
            line = allison_lines[int(rng.integers(len(allison_lines)))]
        if text.in_vocabulary(line, vocabulary):
            return line
    return text.word_string(rng, words)


def _tts_params(source: str, rng: np.random.Generator) -> dict[str, float]:
    """Rate and pitch variety per engine."""
    if source == "flite":
        return {
            "stretch": round(float(rng.uniform(0.8, 1.35)), 3),
            "f0_mean": round(float(rng.uniform(80, 200)), 1),
        }
    if source == "festival":
        return {"stretch": round(float(rng.uniform(0.8, 1.3)), 3)}
    if source == "mbrola":
        return {"speed": int(rng.integers(130, 215)), "pitch": int(rng.integers(25, 75))}
    if source == "pico":
        return {"speed": int(rng.integers(80, 125)), "pitch": int(rng.integers(85, 120))}
    return {}


def _augment_kinds(rng: np.random.Generator) -> list[str]:
    from realtime.augment import KINDS

    n = int(rng.integers(1, 4))
    return sorted(str(k) for k in rng.choice(KINDS, size=n, replace=False))


def clean_phones(phones: Phones, duration: float) -> Phones:
    """Make segments contiguous from 0 to ``duration``: merge silences, drop empty ones, clamp the end."""
    out: list[list] = []
    t = 0.0
    for phone, start, end in phones:
        start, end = max(start, t), min(end, duration)
        if start > t + 1e-6:
            out.append([SILENCE, t, start])
        if end - start <= 1e-6:
            continue
        out.append([phone, start, end])
        t = end
        if t >= duration:
            break
    if t < duration - 1e-6:
        if out and duration - t < 0.02:
            out[-1][2] = duration
        else:
            out.append([SILENCE, t, duration])
    merged: list[list] = []
    for seg in out:
        if merged and seg[0] == SILENCE and merged[-1][0] == SILENCE:
            merged[-1][2] = seg[2]
        else:
            merged.append(seg)
    return [(p, round(float(s), 4), round(float(e), 4)) for p, s, e in merged]


_NO_TRIM = frozenset({"p", "b", "t", "d", "k", "g", "ch", "jh"})  # stop closures are silent by nature


def trim_silent_edges(
    phones: Phones, pcm: np.ndarray, floor_db: float = -35.0, keep_s: float = 0.03
) -> Phones:
    """Give a phone's near-silent edge frames next to a pause back to the pause.

    The forced aligner often absorbs a pause (or a phrase-final decay into silence) into the neighbouring
    phone. Edge 10 ms frames quieter than ``floor_db`` relative to the utterance's RMS become ``sil`` when
    that edge touches a pause or the utterance boundary; stops are left alone (their closure is silent).
    """
    x = pcm.astype(np.float32)
    ref = float(np.sqrt(np.mean(x**2))) + 1e-9
    hop = 160

    def quiet(t: float) -> bool:
        i = int(round(t * engines.SAMPLE_RATE))
        frame = x[i : i + hop]
        return frame.size == 0 or 20 * np.log10(float(np.sqrt(np.mean(frame**2))) / ref + 1e-9) < floor_db

    out = [list(seg) for seg in phones]
    for k, seg in enumerate(out):
        phone, start, end = seg
        if phone == SILENCE or phone in _NO_TRIM:
            continue
        if k + 1 == len(out) or out[k + 1][0] == SILENCE:
            new_end = end
            while new_end - 0.01 - start >= keep_s and quiet(new_end - 0.01):
                new_end -= 0.01
            seg[2] = round(new_end, 4)
        if k == 0 or out[k - 1][0] == SILENCE:
            new_start = start
            while seg[2] - (new_start + 0.01) >= keep_s and quiet(new_start):
                new_start += 0.01
            seg[1] = round(new_start, 4)
    # clean_phones() fills the gaps this opens with silence.
    return [(p, s, e) for p, s, e in out]


def _normalize(raw: list[tuple[str, float, float]], source: str) -> Phones:
    return [(normalize_phone(label, "mbrola" if source == "mbrola" else source), s, e) for label, s, e in raw]


def _synthesize(job: Job, workdir: Path) -> engines.Speech:
    p = job.params
    if job.source == "flite":
        return engines.flite(
            job.text, job.voice, workdir, stretch=p.get("stretch", 1.0), f0_mean=p.get("f0_mean")
        )
    if job.source == "festival":
        return engines.festival(job.text, job.voice, workdir, stretch=p.get("stretch", 1.0))
    if job.source == "mbrola":
        return engines.mbrola(
            job.text, job.voice, workdir, speed=int(p.get("speed", 175)), pitch=int(p.get("pitch", 50))
        )
    if job.source == "pico":
        return engines.pico(
            job.text, job.voice, workdir, speed=int(p.get("speed", 100)), pitch=int(p.get("pitch", 100))
        )
    if job.source == "allison":
        return engines.allison(job.item)
    if job.source == "festvox_ru":
        return engines.festvox_ru(job.item)
    raise ValueError(f"unknown source {job.source!r}")


class _LazyAligner:
    """Creates the pocketsphinx decoder only when a job in this batch needs one."""

    def __init__(self) -> None:
        self._aligner: Aligner | None = None
        self.available = importlib.util.find_spec("pocketsphinx") is not None

    def get(self) -> Aligner:
        if self._aligner is None:
            self._aligner = Aligner()
        return self._aligner


def run_job(job: Job, out_dir: Path, aligner: _LazyAligner) -> Result:
    """Produce one job's WAVs (original + augmented copies) under ``out_dir``; never raises for bad data."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        try:
            speech = _synthesize(job, Path(tmp))
        except engines.SynthesisError as exc:
            return Result(job.id, job.source, dropped=f"synthesis failed: {exc}")
    return process(job, speech, out_dir, aligner)


def process(job: Job, speech: engines.Speech, out_dir: Path, aligner: _LazyAligner) -> Result:
    """Check/align one utterance's phones, then write it and its augmented copies (or say why it is dropped)."""
    from realtime.augment import apply as apply_augment

    result = Result(job.id, job.source)
    pcm = speech.pcm
    duration = len(pcm) / engines.SAMPLE_RATE
    if duration < 0.3 or int(np.abs(pcm.astype(np.int32)).max(initial=0)) < 100:
        result.dropped = "empty or too short audio"
        return result
    try:
        phones = _normalize(speech.phones, job.source) if speech.phones is not None else None
    except UnknownPhoneError as exc:
        result.dropped = f"unknown phone: {exc.label!r} ({exc.source})"
        return result
    # Without pocketsphinx an engine's own timings are kept unchecked (utterances without timings can't be used).
    if phones is None or (job.check and job.lang == "en" and aligner.available):
        words = text.words_for_alignment(job.text)
        try:
            aligned = aligner.get().align(pcm, words)
        except AlignmentError as exc:
            result.dropped = f"alignment failed: {exc}"
            return result
        if phones is None:
            phones = trim_silent_edges(aligned, pcm)
        else:
            check = compare_timings(phones, aligned)
            result.boundary_error_s = check.median_error_s
            if check.match_ratio < MIN_MATCH_RATIO:
                result.dropped = f"timing check: aligner matched only {check.match_ratio:.0%} of phones"
                return result
            if check.median_error_s > MAX_BOUNDARY_ERROR_S:
                ms = 1000 * check.median_error_s
                result.dropped = f"timing check: median boundary error {ms:.0f} ms > 40 ms"
                return result
            if (job.source, job.voice) in ALIGNER_TIMED_VOICES:
                phones = trim_silent_edges(aligned, pcm)
    phones = clean_phones(phones, duration)
    if not any(p != SILENCE for p, _, _ in phones):
        result.dropped = "no speech phones"
        return result
    rel_dir = Path("wavs") / job.source / job.voice
    (out_dir / rel_dir).mkdir(parents=True, exist_ok=True)
    base = {
        "split": job.split,
        "source": job.source,
        "voice": job.voice,
        "speaker": job.speaker,
        "lang": job.lang,
        "text": job.text,
    }
    rel = rel_dir / f"{job.id}.wav"
    engines.write_wav(out_dir / rel, pcm)
    result.rows.append(
        {
            "id": job.id,
            **base,
            "wav": rel.as_posix(),
            "duration": round(duration, 4),
            "phones": [list(p) for p in phones],
            "augment": None,
        }
    )
    rng = np.random.default_rng(job.seed)
    for k, kinds in enumerate(job.augments):
        aug = apply_augment(pcm, engines.SAMPLE_RATE, rng, kinds=kinds)
        aug_pcm = aug.pcm
        aug_duration = len(aug_pcm) / engines.SAMPLE_RATE
        scaled = clean_phones(
            [(p, s * aug.time_scale, e * aug.time_scale) for p, s, e in phones], aug_duration
        )
        aug_id = f"{job.id}-aug{k}"
        aug_rel = rel_dir / f"{aug_id}.wav"
        engines.write_wav(out_dir / aug_rel, aug_pcm)
        result.rows.append(
            {
                "id": aug_id,
                **base,
                "wav": aug_rel.as_posix(),
                "duration": round(aug_duration, 4),
                "phones": [list(p) for p in scaled],
                "augment": aug.description,
            }
        )
    return result


def run_batch(jobs: list[Job], out_dir: str) -> list[Result]:
    """Worker entry point: a batch shares one aligner."""
    aligner = _LazyAligner()
    results = []
    for job in jobs:
        try:
            results.append(run_job(job, Path(out_dir), aligner))
        except Exception as exc:  # one bad utterance must not kill the build; it is logged as a drop
            log.exception("job %s failed", job.id)
            results.append(Result(job.id, job.source, dropped=f"error: {type(exc).__name__}: {exc}"))
    return results


def publish(tmp_dir: Path, out: Path) -> None:
    """Swap a finished build into place, keeping the previous corpus readable until the swap.

    ``out`` becomes a symlink to a timestamped build folder next to it; the symlink is replaced with one
    ``rename`` (atomic), so readers see either the old or the new corpus, never half of one. The
    previous build is kept (one generation) so readers that resolved it keep working.
    """
    builds = out.parent / f".{out.name}.builds"
    builds.mkdir(parents=True, exist_ok=True)
    final = builds / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    tmp_dir.rename(final)
    if out.exists() and not out.is_symlink():
        # First build after a plain-folder corpus: move it aside under builds so it stays readable.
        out.rename(builds / f"legacy-{time.strftime('%Y%m%dT%H%M%S')}")
    previous = out.resolve() if out.is_symlink() else None
    link = out.parent / f".{out.name}.link-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(final, out.parent))
    os.replace(link, out)
    keep = {final.resolve(), previous}
    for old in builds.iterdir():
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


def build(
    out: Path,
    seed: int = 0,
    size: str = "small",
    jobs: int = 2,
    sources: Iterable[str] = SOURCES,
    progress: bool = True,
) -> dict:
    """Build the corpus into ``out`` (atomically) and return the build summary."""
    from tqdm import tqdm

    started = time.monotonic()
    job_list = plan(seed, size, sources)
    if not job_list:
        raise RuntimeError(
            "no corpus source is installed (flite, festival, espeak-ng+mbrola, pico2wave, ...)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp_dir.chmod(0o755)  # mkdtemp makes it private; the published corpus is shared
    batches = _batches(job_list)
    results: list[Result] = []
    try:
        bar = tqdm(total=len(job_list), desc=f"corpus {size}", unit="utt", disable=not progress)
        if jobs <= 1:
            for batch in batches:
                results += run_batch(batch, str(tmp_dir))
                bar.update(len(batch))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(run_batch, batch, str(tmp_dir)) for batch in batches]
                for fut in futures:
                    res = fut.result()
                    results += res
                    bar.update(len(res))
        bar.close()
        summary = _write_manifest(tmp_dir, job_list, results, seed, size, time.monotonic() - started)
        publish(tmp_dir, out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return summary


def _batches(jobs: list[Job]) -> list[list[Job]]:
    # Small batches keep every worker busy to the end; the aligner (0.3 s to load) is shared per batch.
    size = 6
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _write_manifest(
    out_dir: Path, jobs: list[Job], results: list[Result], seed: int, size: str, elapsed: float
) -> dict:
    rows = sorted((row for r in results for row in r.rows), key=lambda row: row["id"])
    with open(out_dir / "manifest.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    drops = Counter(_reason_key(r.dropped) for r in results if r.dropped)
    dropped_by_source = Counter(r.source for r in results if r.dropped)
    for r in sorted(results, key=lambda r: r.job_id):
        if r.dropped:
            log.info("dropped %s: %s", r.job_id, r.dropped)
    hours: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        key = f"{row['source']}/{row['split']}/{'aug' if row['augment'] else 'clean'}"
        hours[key] += row["duration"] / 3600
        counts[key] += 1
    errors = [
        r.boundary_error_s
        for r in results
        if r.boundary_error_s is not None and np.isfinite(r.boundary_error_s)
    ]
    summary = {
        "seed": seed,
        "size": size,
        "jobs_planned": len(jobs),
        "rows": len(rows),
        "hours_total": round(sum(hours.values()), 4),
        "hours": {k: round(v, 4) for k, v in sorted(hours.items())},
        "counts": dict(sorted(counts.items())),
        "dropped": dict(sorted(drops.items())),
        "dropped_by_source": dict(sorted(dropped_by_source.items())),
        "timing_check_median_error_ms": round(1000 * float(np.median(errors)), 2) if errors else None,
        "timing_checked": len(errors),
        "timing_check_by_source_ms": _error_stats(results),
        "build_seconds": round(elapsed, 1),
        "test_voices": sorted(f"{s}/{v}" for s, v in TEST_VOICES) + ["allison/allison"],
    }
    # Summary and drop log live beside the manifest; the manifest itself is byte-identical per seed.
    (out_dir / "build.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "dropped.jsonl", "w", encoding="utf-8") as handle:
        for r in sorted(results, key=lambda r: r.job_id):
            if r.dropped:
                handle.write(json.dumps({"id": r.job_id, "source": r.source, "reason": r.dropped}) + "\n")
    return summary


def _error_stats(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per source: checked utterances and the median / p95 over utterances of the median boundary error."""
    by_source: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r.boundary_error_s is not None and np.isfinite(r.boundary_error_s):
            by_source[r.source].append(1000 * r.boundary_error_s)
    return {
        source: {
            "n": len(v),
            "median": round(float(np.median(v)), 2),
            "p95": round(float(np.percentile(v, 95)), 2),
        }
        for source, v in sorted(by_source.items())
    }


def _reason_key(reason: str | None) -> str:
    """Group drop reasons (strip per-utterance details)."""
    if reason is None:
        return ""
    head = reason.split(":")[0]
    if head in ("alignment failed", "timing check", "unknown phone"):
        detail = reason.split(":", 2)[1].strip()
        if head == "alignment failed" and detail.startswith("out-of-vocabulary"):
            return "alignment failed: out-of-vocabulary words"
        if head == "timing check":
            return "timing check: " + (
                "phone mismatch" if "matched only" in reason else "boundary error > 40 ms"
            )
        return f"{head}: {detail}"
    return head


def summary_json(summary: dict) -> str:
    """Pretty JSON for the CLI."""
    return json.dumps(summary, indent=2)


__all__ = [
    "ALIGNER_TIMED_VOICES",
    "SIZES",
    "SOURCES",
    "TEST_VOICES",
    "Job",
    "Result",
    "build",
    "clean_phones",
    "plan",
    "process",
    "publish",
]
