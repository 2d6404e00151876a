"""Lip-sync evaluation: ``avatar eval lipsync`` scores a motion model against phone timings.

Per 40 ms frame (25 fps; frame n shows audio time n / fps), on held-out utterances:

* **balanced accuracy** of mouth open vs closed, on vowel frames (should be open) vs p/b/m frames
  (should be closed); frames within :data:`LABEL_GUARD_S` of a segment edge are transitions and
  are not scored. The open/closed threshold on the predicted aperture is chosen on the
  ``val`` split (the threshold maximising balanced accuracy there), never on the test split; if
  there is no val split, a fixed rule is used (:data:`FIXED_THRESHOLD`, halfway between a
  bilabial's target aperture ~0 and a close vowel's ~0.15-0.2).
* **ROC AUC** of the aperture as a score for "open" on the same frames (threshold-free).
* **closure hits**: the fraction of p/b/m phone segments in which the predicted aperture drops to
  the closed side of the threshold within the segment (widened by :data:`CLOSURE_TOLERANCE_S`).
* **lag** in ms: the peak of the cross-correlation of predicted vs target aperture (targets from
  :func:`realtime.targets.mouth_targets`), pooled over utterances, searched within +-200 ms and
  refined below one frame by parabolic interpolation. Positive = the prediction is late.
* **Pearson correlation** of predicted and target aperture, over all frames.
* For the model and the oracle, per mouth channel: Pearson r against its target, and **rounding
  AUC**: lip rounding (mean of funnel and pucker) as a score for frames of rounded phones (/uw uh
  ow ao oy w/) against front vowels (/iy ih ey eh ae/), guarded like the open/closed labels.

The same figures are computed for a plain loudness baseline (the RMS envelope, normalised per
utterance, used as the aperture) and for the oracle (the targets fed back in), which checks the
metrics themselves. Groups: real speech (source ``allison``) and TTS (all other sources).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
import wave
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime.motion import MOUTH_CHANNELS, N_CHANNELS
from realtime.phones import CLASSES, VOWELS
from realtime.targets import mouth_aperture, mouth_targets, normalize

FPS = 25
FIXED_THRESHOLD = 0.08
CLOSURE_TOLERANCE_S = 0.04
LABEL_GUARD_S = 0.02  # frames this close to a segment edge are transitions, not scored
MAX_LAG_MS = 200.0
BILABIALS = frozenset(CLASSES["bilabial"])
REAL_SOURCES = frozenset({"allison"})
SYSTEMS = ("model", "baseline", "oracle")

# --------------------------------------------------------------------------------------------------
# Pure metric functions


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates; NaN when a class is absent."""
    t = np.asarray(y_true, dtype=bool).reshape(-1)
    p = np.asarray(y_pred, dtype=bool).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return 0.5 * (float((p & t).sum()) / n_pos + float((~p & ~t).sum()) / n_neg)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties share their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    avg = 0.5 * (starts + ends - 1) + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties count half); NaN when a class is absent."""
    t = np.asarray(y_true, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if t.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length: {t.size} vs {s.size}")
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.nan_to_num(s, nan=0.0))
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def best_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (score >= thr means "open") that maximises balanced accuracy."""
    t = np.asarray(y_true, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if t.all() or not t.any():
        raise ValueError("best_threshold needs both open and closed frames")
    cand = np.unique(s)
    # Midpoints between distinct values, plus the ends, cover every distinct decision.
    cand = np.r_[cand[0] - 1e-6, 0.5 * (cand[1:] + cand[:-1]), cand[-1] + 1e-6]
    if cand.size > 2000:
        cand = np.quantile(s, np.linspace(0.0, 1.0, 2001))
    order = np.argsort(s)
    ss, ts = s[order], t[order]
    # For each candidate, count positives/negatives at or above it with one cumulative pass.
    pos_below = np.r_[0, np.cumsum(ts)]
    neg_below = np.r_[0, np.cumsum(~ts)]
    k = np.searchsorted(ss, cand, side="left")
    tpr = (pos_below[-1] - pos_below[k]) / pos_below[-1]
    tnr = neg_below[k] / neg_below[-1]
    return float(cand[int(np.argmax(0.5 * (tpr + tnr)))])


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation; NaN when either signal is constant."""
    a = np.asarray(pred, dtype=np.float64).reshape(-1)
    b = np.asarray(target, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"pred and target differ in length: {a.size} vs {b.size}")
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _as_list(x: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return [x]
    return [np.asarray(v, dtype=np.float64).reshape(-1) for v in x]


def estimate_lag_ms(
    pred: np.ndarray | Sequence[np.ndarray],
    target: np.ndarray | Sequence[np.ndarray],
    fps: float,
    max_lag_ms: float = MAX_LAG_MS,
) -> float:
    """Lag of ``pred`` behind ``target`` in ms (positive = late), by cross-correlation.

    Accepts one signal pair or lists of pairs (utterances, pooled: each is z-scored, and the
    correlation at each lag sums over all overlapping frames). The integer-frame peak within
    +-``max_lag_ms`` is refined by a parabola through it and its neighbours. NaN if undefined.
    """
    return lag_and_peak(pred, target, fps, max_lag_ms)[0]


def lag_and_peak(
    pred: np.ndarray | Sequence[np.ndarray],
    target: np.ndarray | Sequence[np.ndarray],
    fps: float,
    max_lag_ms: float = MAX_LAG_MS,
) -> tuple[float, float]:
    """(lag in ms, correlation at the peak) as in :func:`estimate_lag_ms`; a lag at the edge of the
    search range or a weak peak means there is no clear alignment."""
    preds, targets = _as_list(pred), _as_list(target)
    if len(preds) != len(targets):
        raise ValueError("pred and target must hold the same number of signals")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    k_max = max(1, int(math.floor(max_lag_ms / 1000.0 * fps)))
    lags = np.arange(-k_max, k_max + 1)
    num = np.zeros(lags.size)
    cnt = np.zeros(lags.size)
    for p, t in zip(preds, targets, strict=True):
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        n = min(p.size, t.size)
        if n < 3 or p[:n].std() == 0 or t[:n].std() == 0:
            continue
        pz = (p[:n] - p[:n].mean()) / p[:n].std()
        tz = (t[:n] - t[:n].mean()) / t[:n].std()
        for i, k in enumerate(lags):
            # pred[n + k] against target[n]: a late prediction matches at positive k.
            if k >= 0:
                a, b = pz[k:], tz[: n - k]
            else:
                a, b = pz[: n + k], tz[-k:]
            if a.size:
                num[i] += float(np.dot(a, b))
                cnt[i] += a.size
    if not cnt.any():
        return float("nan"), float("nan")
    r = np.where(cnt > 0, num / np.maximum(cnt, 1), -np.inf)
    i = int(np.argmax(r))
    offset = 0.0
    if 0 < i < lags.size - 1 and np.isfinite(r[i - 1]) and np.isfinite(r[i + 1]):
        den = r[i - 1] - 2 * r[i] + r[i + 1]
        if den < 0:
            offset = float(np.clip(0.5 * (r[i - 1] - r[i + 1]) / den, -0.5, 0.5))
    return float((lags[i] + offset) / fps * 1000.0), float(r[i])


def frame_labels(
    phones: Sequence[Sequence[object]], n_frames: int, fps: float, guard_s: float = LABEL_GUARD_S
) -> np.ndarray:
    """Per frame: 1 on vowel frames (open), 0 on p/b/m frames (closed), -1 elsewhere.

    Frames closer than ``guard_s`` to either edge of their segment are transitions (the lips are
    still closing or releasing) and are left out (-1), whatever the system scored.
    """
    return _class_labels(phones, n_frames, fps, VOWELS, BILABIALS, guard_s)


def _class_labels(
    phones: Sequence[Sequence[object]],
    n_frames: int,
    fps: float,
    positive: Collection[str],
    negative: Collection[str],
    guard_s: float,
) -> np.ndarray:
    """Per frame: 1 inside a ``positive`` phone, 0 inside a ``negative`` one, -1 elsewhere and
    within ``guard_s`` of a segment's edges."""
    labels = np.full(int(n_frames), -1, dtype=np.int8)
    t = np.arange(int(n_frames)) / float(fps)
    for item in phones:
        phone, s, e = normalize(item[0]), float(item[1]), float(item[2])  # type: ignore[arg-type]
        cls = 1 if phone in positive else 0 if phone in negative else -1
        if cls >= 0:
            labels[(t >= s + guard_s) & (t < e - guard_s)] = cls
    return labels


def closure_hits(
    aperture: np.ndarray,
    phones: Sequence[Sequence[object]],
    fps: float,
    threshold: float,
    tolerance_s: float = CLOSURE_TOLERANCE_S,
) -> tuple[int, int]:
    """(hits, segments): p/b/m segments where the aperture drops below ``threshold`` within the
    segment widened by ``tolerance_s`` on each side."""
    ap = np.asarray(aperture, dtype=np.float64).reshape(-1)
    t = np.arange(ap.size) / float(fps)
    hits = total = 0
    for item in phones:
        phone, s, e = normalize(item[0]), float(item[1]), float(item[2])  # type: ignore[arg-type]
        if phone not in BILABIALS:
            continue
        window = (t >= s - tolerance_s) & (t <= e + tolerance_s)
        if not window.any():
            continue
        total += 1
        hits += int(ap[window].min() < threshold)
    return hits, total


def loudness_aperture(pcm: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> np.ndarray:
    """Baseline: RMS envelope (40 ms window centred on each frame time) mapped to 0..1.

    dB relative to the utterance's 95th percentile, over a 40 dB range: the loudest frames are
    fully open, frames 40 dB down are closed.
    """
    x = np.nan_to_num(np.asarray(pcm, dtype=np.float64).reshape(-1))
    n = int(n_frames)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    half = int(0.02 * sample_rate)
    centres = np.round(np.arange(n) / float(fps) * sample_rate).astype(np.int64)
    c2 = np.r_[0.0, np.cumsum(x * x)]
    lo = np.clip(centres - half, 0, x.size)
    hi = np.clip(centres + half, 0, x.size)
    energy = (c2[hi] - c2[lo]) / max(2 * half, 1)
    db = 10 * np.log10(energy + 1e-10)
    ref = max(float(np.quantile(db, 0.95)), -45.0)  # near-silent files stay closed
    return np.clip((db - (ref - 40.0)) / 40.0, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Corpus and scoring


@dataclass(frozen=True)
class Utterance:
    """One manifest entry, as far as evaluation needs it."""

    id: str
    split: str
    source: str
    wav: Path
    duration: float
    phones: list[list[object]]

    @property
    def real(self) -> bool:
        return self.source in REAL_SOURCES


def load_manifest(corpus: Path, split: str | None = None) -> list[Utterance]:
    """Utterances of ``corpus/manifest.jsonl`` (optionally one split); clear errors on bad lines."""
    path = Path(corpus) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path} (build the corpus with 'avatar data build')")
    out: list[Utterance] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                utt = Utterance(
                    id=str(rec["id"]),
                    split=str(rec["split"]),
                    source=str(rec["source"]),
                    wav=Path(corpus) / str(rec["wav"]),
                    duration=float(rec["duration"]),
                    phones=[list(p) for p in rec["phones"]],
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: bad manifest line ({exc})") from exc
            if split is None or utt.split == split:
                out.append(utt)
    return out


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in -1..1 and the sample rate of a 16-bit PCM WAV."""
    try:
        with wave.open(str(path), "rb") as wf:
            rate, channels, width = wf.getframerate(), wf.getnchannels(), wf.getsampwidth()
            raw = wf.readframes(wf.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise ValueError(f"cannot read WAV {path}: {exc}") from exc
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit PCM, got {8 * width}-bit")
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels).mean(axis=1), rate


@dataclass
class _Collected:
    """Per-utterance signals of one system and group, kept to score them together."""

    preds: list[np.ndarray]
    targets: list[np.ndarray]
    labels: list[np.ndarray]
    phones: list[list[list[object]]]
    sources: list[str]
    # the model's 14 mouth channels and their targets, per utterance (the aperture leaves out rounding)
    mouth: list[np.ndarray] = field(default_factory=list)
    mouth_targets: list[np.ndarray] = field(default_factory=list)

    def subset(self, source: str) -> _Collected:
        keep = [i for i, s in enumerate(self.sources) if s == source]
        return _Collected(
            [self.preds[i] for i in keep],
            [self.targets[i] for i in keep],
            [self.labels[i] for i in keep],
            [self.phones[i] for i in keep],
            [source] * len(keep),
        )


def score(
    preds: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    phones: Sequence[Sequence[Sequence[object]]],
    fps: float,
    threshold: float,
) -> dict[str, float]:
    """All metrics for one system on a group of utterances (per-utterance aperture arrays)."""
    lab = np.concatenate([np.asarray(x) for x in labels]) if labels else np.zeros(0, np.int8)
    pr = np.concatenate([np.asarray(x) for x in preds]) if preds else np.zeros(0)
    tg = np.concatenate([np.asarray(x) for x in targets]) if targets else np.zeros(0)
    sel = lab >= 0
    lag, peak = lag_and_peak(list(preds), list(targets), fps)
    hits = total = 0
    for p, ph in zip(preds, phones, strict=True):
        h, t = closure_hits(p, ph, fps, threshold)
        hits, total = hits + h, total + t
    return {
        "utterances": len(preds),
        "frames": int(lab.size),
        "vowel_frames": int((lab == 1).sum()),
        "bilabial_frames": int((lab == 0).sum()),
        "threshold": float(threshold),
        "balanced_accuracy": balanced_accuracy(lab[sel] == 1, pr[sel] >= threshold),
        "auc": roc_auc(lab[sel] == 1, pr[sel]),
        "closure_hits": hits / total if total else float("nan"),
        "bilabial_segments": total,
        "lag_ms": lag,
        "lag_peak_r": peak,
        "pearson": pearson(pr, tg) if pr.size else float("nan"),
    }


ROUNDING = ("mouthFunnel", "mouthPucker")
ROUNDED = CLASSES["rounded"]  # uw uh ow ao oy and w: the lips should round
SPREAD = CLASSES["front"]  # iy ih ey eh ae: they should not


def rounding_labels(
    phones: Sequence[Sequence[object]], n_frames: int, fps: float, guard_s: float = LABEL_GUARD_S
) -> np.ndarray:
    """Per frame: 1 inside a rounded phone, 0 inside a front (spread) vowel, -1 elsewhere (and near edges)."""
    return _class_labels(phones, n_frames, fps, ROUNDED, SPREAD, guard_s)


def channel_scores(
    mouth: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    phones: Sequence[Sequence[Sequence[object]]] | None = None,
    fps: float = 25.0,
) -> dict[str, object]:
    """Pearson r of each mouth channel against its target over all frames, their mean, and the
    rounding channels' mean (lip rounding, which the aperture does not see). With ``phones``, also
    ``rounding_auc``: the rounding channels' mean as a score for rounded against front-vowel frames
    (does the mouth round on /uw/ /ow/ /w/ and not on /iy/ /eh/; 0.5 is chance)."""
    pred, tg = np.concatenate(list(mouth)), np.concatenate(list(targets))
    r = {name: pearson(pred[:, i], tg[:, i]) for i, name in enumerate(MOUTH_CHANNELS)}
    out: dict[str, object] = {
        "channel_r": {k: round(v, 4) for k, v in r.items()},
        "mouth_r_mean": float(np.nanmean(list(r.values()))),
        "rounding_r": float(np.nanmean([r[k] for k in ROUNDING])),
    }
    if phones is not None:
        lab = np.concatenate([rounding_labels(ph, len(m), fps) for m, ph in zip(mouth, phones, strict=True)])
        rounding = pred[:, [MOUTH_CHANNELS.index(c) for c in ROUNDING]].mean(axis=1)
        sel = lab >= 0
        out["rounding_auc"] = roc_auc(lab[sel] == 1, rounding[sel])
        out["rounding_frames"] = {"rounded": int((lab == 1).sum()), "spread": int((lab == 0).sum())}
    return out


def _load_generator(model_dir: Path, backend: str) -> tuple[object, object, object]:
    try:
        from realtime.generator import MotionControls, MotionModel, generate_motion
    except ImportError as exc:
        raise RuntimeError(f"realtime.generator is not available ({exc})") from exc
    if not Path(model_dir).exists():
        raise RuntimeError(f"no model at {model_dir} (train one with 'avatar train')")
    try:
        model = MotionModel.load(model_dir, backend=backend)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot load the model from {model_dir}: {exc}") from exc
    return model, MotionControls, generate_motion


def _predict_all(
    utts: Sequence[Utterance],
    fps: int,
    model: object | None,
    controls: object | None,
    generate: object | None,
    label: str,
    timing: dict[str, float] | None = None,
) -> dict[str, dict[str, _Collected]]:
    """Run every system on every utterance -> {group: {system: signals}}; adds model time to ``timing``."""
    out: dict[str, dict[str, _Collected]] = {}
    t0 = time.perf_counter()
    timing = timing if timing is not None else {}
    for i, utt in enumerate(utts):
        pcm, rate = read_audio(utt.wav)
        n = int(math.ceil(len(pcm) / rate * fps))
        full_target = mouth_targets(utt.phones, n, fps)
        target = mouth_aperture(full_target)
        labels = frame_labels(utt.phones, n, fps)
        systems = {"oracle": target, "baseline": loudness_aperture(pcm, rate, n, fps)}
        if model is not None:
            g0 = time.perf_counter()
            motion = generate(model, pcm, rate, fps=fps, controls=controls)  # type: ignore[operator]
            timing["model_s"] = timing.get("model_s", 0.0) + time.perf_counter() - g0
            timing["audio_s"] = timing.get("audio_s", 0.0) + len(pcm) / rate
            motion = np.asarray(motion, dtype=np.float32)
            if motion.ndim != 2 or motion.shape[1] != N_CHANNELS:
                raise RuntimeError(f"generate_motion returned shape {motion.shape} for {utt.id}")
            pred = mouth_aperture(motion)
            pred = np.pad(pred[:n], (0, max(0, n - len(pred))), mode="edge") if len(pred) else np.zeros(n)
            systems["model"] = pred
            nm = len(MOUTH_CHANNELS)
            mouth = motion[:n, :nm] if len(motion) else np.zeros((n, nm), np.float32)
            mouth = np.pad(mouth, ((0, n - len(mouth)), (0, 0)), mode="edge")
        group = "real" if utt.real else "tts"
        for name, pred in systems.items():
            col = out.setdefault(group, {}).setdefault(name, _Collected([], [], [], [], []))
            col.preds.append(np.asarray(pred, dtype=np.float32))
            col.targets.append(target)
            col.labels.append(labels)
            col.phones.append(utt.phones)
            col.sources.append(utt.source)
            if name in ("model", "oracle"):  # the oracle's channels are the targets': checks the metric
                col.mouth.append(mouth if name == "model" else full_target[:, : len(MOUTH_CHANNELS)])
                col.mouth_targets.append(full_target[:, : len(MOUTH_CHANNELS)])
        if (i + 1) % 25 == 0 or i + 1 == len(utts):
            print(
                f"  {label}: {i + 1}/{len(utts)} utterances, {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
    return out


def phone_means(col: _Collected, fps: float, guard_s: float = LABEL_GUARD_S) -> dict[str, float]:
    """Mean aperture per phone (segment interiors, as in :func:`frame_labels`): where a system errs."""
    sums: dict[str, list[float]] = {}
    for pred, phones in zip(col.preds, col.phones, strict=True):
        t = np.arange(len(pred)) / float(fps)
        for item in phones:
            phone, s, e = normalize(item[0]), float(item[1]), float(item[2])  # type: ignore[arg-type]
            inside = (t >= s + guard_s) & (t < e - guard_s)
            if inside.any():
                acc = sums.setdefault(phone, [0.0, 0.0])
                acc[0] += float(pred[inside].sum())
                acc[1] += float(inside.sum())
    return {p: round(v[0] / v[1], 4) for p, v in sorted(sums.items())}


def _spread(utts: list[Utterance], limit: int | None) -> list[Utterance]:
    """At most ``limit`` utterances, evenly spaced through the manifest order (covers every source)."""
    if not limit or len(utts) <= limit:
        return utts
    return [utts[i] for i in np.unique(np.linspace(0, len(utts) - 1, limit).round().astype(int))]


def _thresholds(val: dict[str, dict[str, _Collected]]) -> dict[str, float]:
    """Per system: the val-split threshold maximising balanced accuracy (all groups pooled)."""
    out: dict[str, float] = {}
    for system in SYSTEMS:
        cols = [g[system] for g in val.values() if system in g]
        if not cols:
            continue
        lab = np.concatenate([x for c in cols for x in c.labels])
        pr = np.concatenate([x for c in cols for x in c.preds])
        sel = lab >= 0
        if (lab[sel] == 1).any() and (lab[sel] == 0).any():
            out[system] = best_threshold(lab[sel] == 1, pr[sel])
    return out


def evaluate(
    corpus: Path,
    split: str = "test",
    model_dir: Path | None = Path("models/motion"),
    fps: int = FPS,
    limit: int | None = None,
    val_limit: int | None = 200,
    backend: str = "auto",
    seed: int = 0,
    model: object | None = None,
    dynamic_scale: float = 1.0,
    steps: int | None = None,
    stream: bool = False,
) -> tuple[dict, dict[str, dict[str, _Collected]]]:
    """Score model, loudness baseline and oracle on ``split``; returns (report, signals).

    ``model`` (a loaded :class:`realtime.generator.MotionModel`) takes precedence over ``model_dir``;
    with neither, only the baseline and the oracle are scored. ``stream``: the model hears each
    file as a live session does (:func:`realtime.generator.stream_motion`, 10 ms pushes).
    """
    utts = load_manifest(corpus, split)
    if not utts:
        raise ValueError(f"no utterances in split {split!r} of {corpus}")
    if limit:
        # Both groups stay represented, each by an even (deterministic) spread over its sources.
        utts = _spread([u for u in utts if u.real], limit) + _spread([u for u in utts if not u.real], limit)
    val = _spread(load_manifest(corpus, "val"), val_limit) if split != "val" else []
    controls = generate = None
    model_info: dict[str, object] = {"path": None}
    if model is not None or model_dir is not None:
        if model is None:
            model, controls_cls, generate = _load_generator(model_dir, backend)  # type: ignore[arg-type]
        else:
            from realtime.generator import MotionControls as controls_cls
            from realtime.generator import generate_motion as generate
        controls = controls_cls(  # type: ignore[operator]
            seed=seed, dynamic_scale=dynamic_scale, inference_steps=steps
        ).validated()
        if stream:
            from realtime.generator import stream_motion as generate
        model_info = {
            "path": str(model_dir) if model_dir is not None else None,
            "mode": "stream (10 ms pushes)" if stream else "whole file",
            "backend": getattr(model, "backend_name", None),
            "default_steps": getattr(model, "default_steps", None),
            "lookahead_ms": getattr(model, "lookahead_ms", None),
            "dynamic_scale": dynamic_scale,
            "inference_steps": steps,
        }
    thresholds: dict[str, float] = {}
    rule = "fixed"
    if val:
        thresholds = _thresholds(_predict_all(val, fps, model, controls, generate, "val"))
        rule = f"val split ({len(val)} utterances), max balanced accuracy"
    timing: dict[str, float] = {}
    test = _predict_all(utts, fps, model, controls, generate, split, timing)
    groups: dict[str, dict[str, dict[str, float]]] = {}
    by_source: dict[str, dict[str, dict[str, float]]] = {}
    for group, systems in sorted(test.items()):
        for system, col in systems.items():
            thr = thresholds.get(system, FIXED_THRESHOLD)
            groups.setdefault(group, {})[system] = score(
                col.preds, col.targets, col.labels, col.phones, fps, thr
            )
            if col.mouth:
                groups[group][system].update(channel_scores(col.mouth, col.mouth_targets, col.phones, fps))
            if system == "oracle":
                continue
            for source in sorted(set(col.sources)):
                sub = col.subset(source)
                by_source.setdefault(source, {})[system] = score(
                    sub.preds, sub.targets, sub.labels, sub.phones, fps, thr
                )
    per_phone = {
        group: {system: phone_means(col, fps) for system, col in systems.items()}
        for group, systems in sorted(test.items())
    }
    if timing.get("model_s"):
        model_info["real_time_factor"] = timing["audio_s"] / timing["model_s"]
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "corpus": str(corpus),
        "split": split,
        "fps": fps,
        "model": model_info,
        "threshold_rule": rule,
        "thresholds": thresholds,
        "groups": groups,
        "by_source": by_source,
        "phone_mean_aperture": per_phone,
        "targets": {"balanced_accuracy": 0.85, "auc": 0.90, "abs_lag_ms": 20.0},
    }
    return report, test


def format_table(report: dict) -> str:
    """A plain-text table: one row per group and system."""
    head = f"{'group':<6} {'system':<9} {'utts':>5} {'bal.acc':>8} {'AUC':>6} {'closure':>8} {'lag ms':>7} {'r':>6}"
    lines = [head, "-" * len(head)]
    for group, systems in report["groups"].items():
        for system in SYSTEMS:
            if system not in systems:
                continue
            m = systems[system]
            lines.append(
                f"{group:<6} {system:<9} {m['utterances']:>5} {m['balanced_accuracy']:>8.3f} {m['auc']:>6.3f}"
                f" {m['closure_hits']:>8.3f} {m['lag_ms']:>7.1f} {m['pearson']:>6.3f}"
            )
    rows = [(g, s["model"]) for g, s in report["groups"].items() if "mouth_r_mean" in s.get("model", {})]
    if rows:
        lines.append(
            "model, r of the 14 mouth channels against their targets (mean / lip rounding), and lip rounding's"
            " AUC on rounded against front-vowel frames:"
        )
        lines += [
            f"  {g}: {m['mouth_r_mean']:.3f} / {m['rounding_r']:.3f}, AUC {m.get('rounding_auc', float('nan')):.3f}"
            for g, m in rows
        ]
    return "\n".join(lines)


def plot_report(report: dict, signals: dict[str, dict[str, _Collected]], path: Path, fps: int) -> None:
    """Aperture traces over one real (else TTS) utterance with p/b/m and vowel spans, plus the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = "real" if "real" in signals else next(iter(signals))
    systems = signals[group]
    oracle = systems["oracle"]
    # The utterance (2-6 s) with the most p/b/m segments shows closures best.
    best, best_count = 0, -1
    for i, ph in enumerate(oracle.phones):
        dur = len(oracle.preds[i]) / fps
        count = sum(normalize(p[0]) in BILABIALS for p in ph)
        if 2.0 <= dur <= 6.0 and count > best_count:
            best, best_count = i, count
    fig, (ax, tab) = plt.subplots(2, 1, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    t = np.arange(len(oracle.preds[best])) / fps
    for item in oracle.phones[best]:
        phone, s, e = normalize(item[0]), float(item[1]), float(item[2])  # type: ignore[arg-type]
        if phone in BILABIALS:
            ax.axvspan(s, e, color="tab:red", alpha=0.25, lw=0)
            ax.text(0.5 * (s + e), 1.02, phone, ha="center", fontsize=8, color="tab:red")
        elif phone in VOWELS:
            ax.axvspan(s, e, color="tab:green", alpha=0.1, lw=0)
    ax.plot(t, oracle.preds[best], "k-", lw=2, label="target (phones → visemes)")
    styles = {"model": ("tab:blue", "model"), "baseline": ("tab:orange", "loudness baseline")}
    for name, (color, label) in styles.items():
        if name in systems:
            ax.plot(t, systems[name].preds[best], color=color, lw=1.5, label=label)
            thr = report["groups"][group][name]["threshold"]
            ax.axhline(thr, color=color, ls=":", lw=1)
    ax.set_xlim(0, t[-1] if t.size else 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mouth aperture")
    ax.set_title(f"Lip sync on held-out {group} speech (red: p/b/m, green: vowels; dotted: thresholds)")
    ax.legend(loc="upper right", fontsize=8)
    rows, cells = [], []
    for g, sysm in report["groups"].items():
        for system in SYSTEMS:
            if system in sysm:
                m = sysm[system]
                rows.append(f"{g} / {system}")
                cells.append(
                    [
                        f"{m['utterances']}",
                        f"{m['balanced_accuracy']:.3f}",
                        f"{m['auc']:.3f}",
                        f"{m['closure_hits']:.3f}",
                        f"{m['lag_ms']:.1f}",
                        f"{m['pearson']:.3f}",
                    ]
                )
    tab.axis("off")
    cols = ["utterances", "balanced acc.", "AUC", "closure hits", "lag (ms)", "Pearson r"]
    table = tab.table(cellText=cells, rowLabels=rows, colLabels=cols, loc="center")
    table.scale(1, 1.3)
    tab.set_title(f"{report['split']} split, {report['fps']} fps, {report['date']}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_safe(x: object) -> object:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def cli_main(argv: list[str]) -> int:
    """``avatar eval lipsync [--corpus DIR] [--split test] [--model DIR] [--plot PNG] [--json OUT]``."""
    parser = argparse.ArgumentParser(prog="avatar eval", description="Evaluate lip sync on held-out speech.")
    parser.add_argument("task", choices=["lipsync"], help="what to evaluate")
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", type=Path, default=Path("models/motion"))
    parser.add_argument("--no-model", action="store_true", help="score only the baseline and the oracle")
    parser.add_argument("--backend", default="auto", help="model backend (auto, onnx, torch)")
    parser.add_argument("--fps", type=int, default=FPS, choices=[25, 30])
    parser.add_argument("--limit", type=int, default=None, help="at most N utterances per group")
    parser.add_argument("--val-limit", type=int, default=200, help="val utterances for the threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic-scale", type=float, default=1.0, help="model control (0..2)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument(
        "--stream", action="store_true", help="feed the model as a live session does (10 ms pushes)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the figure here (PNG)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    try:
        report, signals = evaluate(
            args.corpus,
            split=args.split,
            model_dir=None if args.no_model else args.model,
            fps=args.fps,
            limit=args.limit,
            val_limit=args.val_limit,
            backend=args.backend,
            seed=args.seed,
            dynamic_scale=args.dynamic_scale,
            steps=args.steps,
            stream=args.stream,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"avatar eval: {exc}", file=sys.stderr)
        return 2
    report["command"] = "avatar eval " + " ".join(argv)
    print(format_table(report))
    print(f"thresholds: {report['threshold_rule']}: {report['thresholds'] or FIXED_THRESHOLD}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    if args.plot:
        plot_report(report, signals, args.plot, args.fps)
    return 0
