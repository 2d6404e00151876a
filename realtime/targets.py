"""Training targets: phone timings (and the audio) -> motion frames.

Mouth (deterministic)
    Each phone has a viseme: target values for the 14 ARKit mouth channels (:data:`VISEMES`).
    Targets are blended over time with Cohen–Massaro dominance functions (Cohen & Massaro 1993,
    "Modeling coarticulation in synthetic visual speech"): phone *i* has, per channel, a dominance
    ``D_i(t) = alpha_i * exp(-(x_i(t))**c_i)`` where ``x_i`` is the distance of ``t`` from the
    phone's segment (zero inside it), divided by ``tau_before`` before the onset and ``tau_after``
    after the offset; alpha and the taus are per channel group (lip closure, jaw, rounding,
    spreading). The channel value is the dominance-weighted mean of the targets.

    ``tau_before`` is the anticipation: the dominance of a phone rises before its acoustic onset,
    so the lips move before the sound (rounding starts 100-200 ms ahead, bilabial closure
    30-60 ms ahead). Bilabials (p/b/m) are highly dominant on the lip-closure channels, so their
    closure is always reached, even in fast speech (a 25 ms /p/ between vowels still closes at the
    nearest 25 fps frame), while a sharp (Gaussian) cut-off keeps them from swallowing short
    neighbouring vowels. Diphthongs are two targets (first half, second half). Values are
    evaluated analytically at the frame times ``n / fps``, so any fps gives the same curve.

Non-verbal (stochastic, deterministic given ``rng``)
    * Blinks: a renewal process with gamma-distributed intervals (shape 3, mean ~3.6 s, clipped
      to 1.2..8 s), plus a blink with probability 0.6 at each pause (phrase boundary) of at least
      0.25 s; blinks closer than 0.8 s are merged. Each blink lasts 150-250 ms (fast close, short
      hold, slower open), peaks at 0.9-1.0, and is on both eyes 90% of the time (otherwise
      one eye at 30-60%). Generation runs the same process causally (:class:`BlinkTrack`).
    * Head pose: a smoothed Ornstein–Uhlenbeck process per axis (OU low-passed once more, so it
      has no jitter), mean-reverting to neutral (time constant 1.2-2 s, stationary std 1.0-1.8
      degrees, 1.6x wider while speaking), plus nods: each stressed vowel gets a raised-cosine
      pitch bump of 0.5-1.6 degrees (positive pitch = chin down) starting ~80 ms before its onset,
      lasting 300-420 ms. A vowel counts as stressed when its score (peak energy in dB plus a
      bonus for duration; duration alone without audio) is in the utterance's upper 40%; without
      phone timings, energy peaks during speech stand in for vowels. Pitch accents (a stressed
      vowel with high F0 from a cheap FFT-autocorrelation tracker, z > 0.8 within the utterance)
      tilt the head up slightly and turn it a little.
    * Brows: a small OU baseline (0..0.08) plus raises of 0.15-0.4 (browInnerUp, both outer) on
      pitch accents and emphasised vowels, onset ~60 ms before the vowel.
    * Silence still blinks and moves slightly (the OU process never stops), mouth channels are 0.

All random draws come from child generators spawned from ``rng`` (one per component), and the
noise is drawn on a fixed 100 Hz grid, so the same seed gives the same motion at 25 and 30 fps.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from realtime.motion import CHANNEL_INDEX, MAX_POSE_DEG, MOUTH_CHANNELS, N_CHANNELS, clip_motion
from realtime.phones import ARPABET, CLASSES, SILENCE, VOWELS

PhoneSeq = Sequence[Sequence[object]]  # [[phone, start_s, end_s], ...] as in the corpus manifest

N_MOUTH = len(MOUTH_CHANNELS)
_REST_DOMINANCE = 1e-3  # a weak rest target everywhere, so far from any phone the mouth rests
_BLOCK = 64  # times per block in mouth_curves

# --------------------------------------------------------------------------------------------------
# Viseme table. Values per channel pair; left/right get the same value.


def _viseme(
    jaw: float = 0.0,
    close: float = 0.0,
    funnel: float = 0.0,
    pucker: float = 0.0,
    smile: float = 0.0,
    stretch: float = 0.0,
    upper: float = 0.0,
    lower: float = 0.0,
    press: float = 0.0,
) -> tuple[float, ...]:
    pairs = (smile, smile, stretch, stretch, upper, upper, lower, lower, press, press)
    return (jaw, close, funnel, pucker, *pairs)


VISEMES: dict[str, tuple[float, ...]] = {
    SILENCE: _viseme(),
    # bilabials: lips pressed together, jaw nearly closed
    "p": _viseme(jaw=0.06, close=0.08, press=0.6),
    "b": _viseme(jaw=0.06, close=0.08, press=0.45),
    "m": _viseme(jaw=0.05, close=0.07, press=0.35),
    # labiodentals: lower lip tucked to the upper teeth (upper lip raised, lower lip not lowered)
    "f": _viseme(jaw=0.1, close=0.03, funnel=0.05, stretch=0.1, upper=0.25),
    "v": _viseme(jaw=0.1, close=0.03, funnel=0.05, stretch=0.08, upper=0.22),
    "th": _viseme(jaw=0.18, upper=0.1, lower=0.15, stretch=0.05),
    "dh": _viseme(jaw=0.16, upper=0.1, lower=0.14, stretch=0.05),
    "s": _viseme(jaw=0.08, smile=0.2, stretch=0.22, upper=0.15, lower=0.15),
    "z": _viseme(jaw=0.08, smile=0.18, stretch=0.2, upper=0.14, lower=0.14),
    "sh": _viseme(jaw=0.12, funnel=0.45, pucker=0.25, upper=0.25, lower=0.2),
    "zh": _viseme(jaw=0.12, funnel=0.42, pucker=0.22, upper=0.22, lower=0.2),
    "ch": _viseme(jaw=0.12, funnel=0.4, pucker=0.25, upper=0.2, lower=0.18),
    "jh": _viseme(jaw=0.12, funnel=0.4, pucker=0.22, upper=0.2, lower=0.18),
    "t": _viseme(jaw=0.14, stretch=0.1, upper=0.1, lower=0.12),
    "d": _viseme(jaw=0.15, stretch=0.1, upper=0.1, lower=0.12),
    "n": _viseme(jaw=0.13, stretch=0.08, upper=0.08, lower=0.1),
    "l": _viseme(jaw=0.22, lower=0.12, upper=0.05),
    "k": _viseme(jaw=0.2, lower=0.1, stretch=0.05),
    "g": _viseme(jaw=0.2, lower=0.1, stretch=0.05),
    "ng": _viseme(jaw=0.16, lower=0.08),
    "hh": _viseme(jaw=0.3, lower=0.12),
    "r": _viseme(jaw=0.15, funnel=0.3, pucker=0.3, upper=0.05),
    "w": _viseme(jaw=0.08, funnel=0.35, pucker=0.85),
    "y": _viseme(jaw=0.1, smile=0.3, stretch=0.25, lower=0.05),
    # vowels: even close vowels part the lips visibly (aperture >= ~0.23), so that /i/ and /u/ never
    # look like a bilabial closure
    "aa": _viseme(jaw=0.65, lower=0.35, upper=0.15),
    "ae": _viseme(jaw=0.5, smile=0.15, stretch=0.3, lower=0.35, upper=0.2),
    "ah": _viseme(jaw=0.45, lower=0.25, upper=0.1),
    "ao": _viseme(jaw=0.5, funnel=0.45, pucker=0.2, lower=0.25),
    "eh": _viseme(jaw=0.35, smile=0.1, stretch=0.2, lower=0.25, upper=0.1),
    "er": _viseme(jaw=0.24, funnel=0.35, pucker=0.3, lower=0.12),
    "ih": _viseme(jaw=0.25, smile=0.25, stretch=0.2, lower=0.2),
    "iy": _viseme(jaw=0.18, smile=0.45, stretch=0.35, lower=0.2, upper=0.15),
    "uh": _viseme(jaw=0.25, funnel=0.35, pucker=0.4, lower=0.15),
    "uw": _viseme(jaw=0.2, funnel=0.4, pucker=0.8, lower=0.1),
    "ow": _viseme(jaw=0.35, funnel=0.55, pucker=0.5, lower=0.15),
}
# Diphthongs: (first target, second target), each held for half of the segment.
DIPHTHONGS: dict[str, tuple[str, str]] = {
    "aw": ("aa", "uh"),
    "ay": ("aa", "iy"),
    "ey": ("eh", "iy"),
    "ow": ("ao", "uw"),
    "oy": ("ao", "iy"),
}
_DEFAULT_PHONE = "t"  # an unknown label gets a neutral, weakly dominant consonant shape

# Channel groups for dominance: closure (lip aperture), jaw, rounding, spreading.
_GROUP_OF_CHANNEL = np.array([1, 0, 2, 2, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0])  # 0=lips 1=jaw 2=round 3=spread


class _Dominance(NamedTuple):
    """Cohen–Massaro parameters of one phone class, per channel group (lips, jaw, round, spread)."""

    alpha: tuple[float, float, float, float]  # magnitude: who wins where phones overlap
    tau_before: tuple[float, float, float, float]  # seconds: anticipation (rise before onset)
    tau_after: tuple[float, float, float, float]  # seconds: carry-over (decay after offset)
    power: float = 1.5  # >1: zero slope at the segment edge (smooth); larger = sharper cut-off


def _dom(
    alpha: tuple[float, float, float, float],
    tau_b: float,
    tau_a: float,
    lips: tuple[float, float] | None = None,
    rnd: tuple[float, float] | None = None,
    power: float = 1.5,
) -> _Dominance:
    lb, la = lips or (tau_b, tau_a)
    rb, ra = rnd or (tau_b, tau_a)
    return _Dominance(alpha, (lb, tau_b, rb, tau_b), (la, tau_a, ra, tau_a), power)


# Anticipation lives in tau_before: rounding starts ~100+ ms ahead, closure ~30-60 ms ahead.
# Bilabials are strong on the closure channels with a sharp (power 2) cut-off, so they always close
# but do not swallow a short neighbouring vowel; vowels hold the lip channels only loosely (short taus).
_CLASS_DOMINANCE: dict[str, _Dominance] = {
    "silence": _dom((0.6, 0.6, 0.6, 0.6), 0.03, 0.05),
    "bilabial": _dom((12.0, 5.0, 0.3, 0.4), 0.022, 0.015, power=2.0),
    "labiodental": _dom((5.0, 3.0, 0.5, 0.5), 0.025, 0.02, power=2.0),
    "dental": _dom((1.5, 1.5, 0.3, 0.4), 0.025, 0.02),
    "alveolar": _dom((0.5, 1.2, 0.2, 0.4), 0.025, 0.02),
    "postalveolar": _dom((1.0, 1.0, 2.0, 0.5), 0.04, 0.03, rnd=(0.06, 0.04)),
    "velar": _dom((0.3, 0.8, 0.2, 0.3), 0.025, 0.02),
    "glottal": _dom((0.1, 0.1, 0.1, 0.1), 0.02, 0.02),
    "r": _dom((0.6, 0.6, 1.5, 0.5), 0.04, 0.03, rnd=(0.06, 0.04)),
    "w": _dom((1.2, 0.8, 4.0, 2.0), 0.04, 0.03, rnd=(0.08, 0.04)),
    "y": _dom((0.6, 0.6, 0.5, 1.5), 0.03, 0.03),
    "vowel": _dom((1.0, 1.0, 1.0, 1.0), 0.04, 0.04, lips=(0.02, 0.02)),
    "rounded_vowel": _dom((1.0, 1.0, 3.0, 1.5), 0.04, 0.04, lips=(0.02, 0.02), rnd=(0.08, 0.05)),
}


def _dominance_class(phone: str) -> str:
    if phone == SILENCE:
        return "silence"
    if phone in ("r", "w", "y"):
        return phone
    if phone in CLASSES["vowel"]:
        return "rounded_vowel" if phone in ("uw", "uh", "ow", "ao", "oy", "er") else "vowel"
    for name in ("bilabial", "labiodental", "dental", "alveolar", "postalveolar", "velar", "glottal"):
        if phone in CLASSES[name]:
            return name
    return "alveolar"


def normalize(label: object) -> str:
    """An inventory phone for a label: stress digits and case dropped, aliases mapped, unknown -> 't'."""
    key = str(label).strip().lower().rstrip("0123456789")
    if key in VISEMES or key in DIPHTHONGS:
        return key
    return ARPABET.get(key, SILENCE if key == "" else _DEFAULT_PHONE)


# --------------------------------------------------------------------------------------------------
# Mouth targets


def _parse_phones(phones: PhoneSeq | None) -> list[tuple[str, float, float]]:
    """Validated ``(phone, start, end)`` triples, sorted by start."""
    if phones is None:
        return []
    out: list[tuple[str, float, float]] = []
    for i, item in enumerate(phones):
        try:
            label, start, end = item[0], float(item[1]), float(item[2])  # type: ignore[arg-type]
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"phone {i} must be [phone, start_s, end_s], got {item!r}") from exc
        if not (np.isfinite(start) and np.isfinite(end)):
            raise ValueError(f"phone {i} has a non-finite time: {item!r}")
        if end < start:
            raise ValueError(f"phone {i} ends before it starts: {item!r}")
        out.append((normalize(label), start, end))
    out.sort(key=lambda p: p[1])
    return out


def _check_frames(n_frames: int, fps: float) -> None:
    if int(n_frames) != n_frames or n_frames < 0:
        raise ValueError(f"n_frames must be a non-negative integer, got {n_frames!r}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")


def _segments(parsed: list[tuple[str, float, float]]) -> tuple[np.ndarray, ...]:
    """Per target segment: start, end, targets, alpha, tau_before, tau_after (all (m, 14)), power (m,)."""
    starts, ends, targets, alphas, tbs, tas, powers = [], [], [], [], [], [], []
    for phone, start, end in parsed:
        cls = _dominance_class(phone)
        dom = _CLASS_DOMINANCE[cls]
        parts = [(phone, start, end)]
        if phone in DIPHTHONGS:
            mid = 0.5 * (start + end)
            first, second = DIPHTHONGS[phone]
            parts = [(first, start, mid), (second, mid, end)]
        for target, s, e in parts:
            starts.append(s)
            ends.append(e)
            targets.append(VISEMES[target])
            alphas.append(np.asarray(dom.alpha)[_GROUP_OF_CHANNEL])
            tbs.append(np.asarray(dom.tau_before)[_GROUP_OF_CHANNEL])
            tas.append(np.asarray(dom.tau_after)[_GROUP_OF_CHANNEL])
            powers.append(dom.power)
    if not starts:
        empty = np.zeros((0, N_MOUTH))
        return np.zeros(0), np.zeros(0), empty, empty, empty, empty, np.zeros(0)
    return (
        np.asarray(starts),
        np.asarray(ends),
        np.asarray(targets, dtype=np.float64),
        np.asarray(alphas, dtype=np.float64),
        np.asarray(tbs),
        np.asarray(tas),
        np.asarray(powers),
    )


def mouth_curves(phones: PhoneSeq | None, times: np.ndarray) -> np.ndarray:
    """The 14 mouth channels at arbitrary times (seconds) -> (len(times), 14) float64."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.zeros((times.size, N_MOUTH))
    segs = _segments(_parse_phones(phones))
    starts, ends = segs[0], segs[1]
    if times.size == 0 or starts.size == 0:
        return out
    # Only segments near the requested times matter (dominance is < 1e-6 beyond 0.6 s), so work in
    # blocks of times against their nearby segments: cost grows linearly with the length.
    for lo in range(0, times.size, _BLOCK):
        tb = times[lo : lo + _BLOCK]
        keep = (ends > tb.min() - 0.6) & (starts < tb.max() + 0.6)
        if keep.any():
            out[lo : lo + _BLOCK] = _blend(tb, *(a[keep] for a in segs))
    return out


def _blend(
    times: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    targets: np.ndarray,
    alphas: np.ndarray,
    tbs: np.ndarray,
    tas: np.ndarray,
    powers: np.ndarray,
) -> np.ndarray:
    """Dominance-weighted mean of the segments' targets at ``times`` -> (n, 14)."""
    t = times[:, None, None]
    before = np.maximum(starts[None, :, None] - t, 0.0) / tbs[None]  # (n, m, 14)
    after = np.maximum(t - ends[None, :, None], 0.0) / tas[None]
    dom = alphas[None] * np.exp(-((before + after) ** powers[None, :, None]))  # (n, m, 14)
    num = np.einsum("nmc,mc->nc", dom, targets)
    den = dom.sum(axis=1) + _REST_DOMINANCE
    return num / den


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """Audio time shown by each frame: frame n shows t = n / fps."""
    return np.arange(int(n_frames), dtype=np.float64) / float(fps)


def mouth_targets(phones: PhoneSeq | None, n_frames: int, fps: float) -> np.ndarray:
    """Mouth channels from phone timings -> (n_frames, N_CHANNELS) float32; non-mouth channels 0."""
    _check_frames(n_frames, fps)
    out = np.zeros((int(n_frames), N_CHANNELS), dtype=np.float32)
    out[:, :N_MOUTH] = np.clip(mouth_curves(phones, frame_times(n_frames, fps)), 0.0, 1.0)
    return out


def mouth_aperture(motion: np.ndarray) -> np.ndarray:
    """Scalar lip opening (0 closed .. ~1 wide) per frame from the mouth channels -> (n,) float32.

    Jaw opening minus the lip-closing compensation (ARKit ``mouthClose``), plus the lip raisers and
    lowerers, minus lip press. Bilabials give ~0, open vowels ~0.7.
    """
    m = np.asarray(motion, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] < N_MOUTH:
        raise ValueError(f"motion must be (n, {N_CHANNELS}) or ({N_CHANNELS},), got shape {m.shape}")
    c = CHANNEL_INDEX
    jaw = m[:, c["jawOpen"]]
    close = m[:, c["mouthClose"]]
    upper = 0.5 * (m[:, c["mouthUpperUpLeft"]] + m[:, c["mouthUpperUpRight"]])
    lower = 0.5 * (m[:, c["mouthLowerDownLeft"]] + m[:, c["mouthLowerDownRight"]])
    press = 0.5 * (m[:, c["mouthPressLeft"]] + m[:, c["mouthPressRight"]])
    ap = jaw - close + 0.3 * lower + 0.2 * upper - 0.3 * press
    return np.clip(np.nan_to_num(ap), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Non-verbal motion

_GRID_HZ = 100.0  # noise and audio features live on this fixed grid, independent of fps
_HOP = 160  # 10 ms at 16 kHz


def _raised_cosine(t: np.ndarray, onset: float, length: float) -> np.ndarray:
    u = (t - onset) / length
    return np.where((u > 0) & (u < 1), 0.5 - 0.5 * np.cos(2 * np.pi * np.clip(u, 0, 1)), 0.0)


# The blink model, shared by the training targets and the causal :class:`BlinkTrack` of generation.
BLINK_GAMMA = (3.0, 1.2)  # shape, scale (s) of the interval between spontaneous blinks: mean 3.6 s
BLINK_INTERVAL_S = (1.2, 8.0)  # intervals clipped to this range
BLINK_PHASE_S = 3.0  # the renewal clock starts up to this far before time 0 (random phase)
BLINK_PAUSE_P = 0.6  # probability of a blink at a pause (phrase boundary)
BLINK_PAUSE_MIN_S = 0.25  # a pause is a non-speech stretch of at least this after speech
BLINK_PAUSE_DELAY_S = (0.03, 0.15)  # the pause blink starts this long after its reference time
BLINK_MERGE_S = 0.8  # an onset this close after the previous kept one is dropped


def _blink_draw(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """One blink's (length s, peak, left gain, right gain); the draw order is part of the targets."""
    length = float(rng.uniform(0.15, 0.25))
    amp = float(rng.uniform(0.9, 1.0))
    if rng.uniform() < 0.9:
        return length, amp, 1.0, 1.0
    weak = float(rng.uniform(0.3, 0.6))  # a one-sided (or uneven) blink
    return (length, amp, 1.0, weak) if rng.uniform() < 0.5 else (length, amp, weak, 1.0)


def _blink_interval(rng: np.random.Generator) -> float:
    return float(np.clip(rng.gamma(*BLINK_GAMMA), *BLINK_INTERVAL_S))


def _blink_shape(t: np.ndarray, onset: float, length: float) -> np.ndarray:
    """Fast close (30%), hold (15%), slower open (55%); peak 1."""
    u = (t - onset) / length
    close = np.clip(u / 0.3, 0, 1)
    opening = np.clip((1.0 - u) / 0.55, 0, 1)
    y = np.minimum(close, opening)
    y = np.where((u > 0) & (u < 1), y, 0.0)
    return 0.5 - 0.5 * np.cos(np.pi * y)  # smooth ease in/out


def _audio_features(
    pcm: np.ndarray | None, sample_rate: int, n_grid: int, need_pitch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RMS energy (dB, on the 100 Hz grid) and a cheap F0 proxy (Hz, 0 = unvoiced).

    Both work at 8 kHz (pairs averaged: a crude low-pass is enough for a pitch proxy) on 40 ms
    windows centred on each grid point; pitch is the autocorrelation peak in 70..400 Hz, computed
    only on every other grid point with enough energy (held for the next one), and only where
    ``need_pitch`` (a grid mask, e.g. vowels) is set, to stay cheap.
    """
    energy = np.full(n_grid, -100.0)
    f0 = np.zeros(n_grid)
    if pcm is None:
        return energy, f0
    x = np.nan_to_num(np.asarray(pcm, dtype=np.float32).reshape(-1))
    if x.size == 0:
        return energy, f0
    if sample_rate != 16000:
        n_out = int(round(x.size * 16000 / sample_rate))
        x = np.interp(np.linspace(0, x.size - 1, max(n_out, 1)), np.arange(x.size), x).astype(np.float32)
    x = x[: x.size // 2 * 2].reshape(-1, 2).mean(axis=1)  # 8 kHz
    rate, hop, win = 8000, _HOP // 2, 320
    pad = np.pad(x, (win // 2, win))
    n = min(n_grid, max(0, (pad.size - win) // hop + 1))
    if n == 0:
        return energy, f0
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    frames = pad[idx] * np.hanning(win).astype(np.float32)
    rms = np.sqrt((frames**2).mean(axis=1) + 1e-12)
    energy[:n] = 20 * np.log10(rms + 1e-9)
    want = (energy[:n] > energy[:n].max() - 35) & (np.arange(n) % 2 == 0)
    if need_pitch is not None:
        want &= need_pitch[:n] | np.r_[need_pitch[1:n], False]
    sel = np.flatnonzero(want)
    if sel.size == 0:
        return energy, f0
    spec = np.fft.rfft(frames[sel], n=512, axis=1)  # 512 >= win + max lag: no circular wrap-around
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :win]
    lo, hi = rate // 400, rate // 70
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    peak = ac[np.arange(sel.size), lag] / (ac[:, 0] + 1e-12)
    pitch = np.where(peak > 0.45, rate / lag, 0.0)
    f0[sel] = pitch
    f0[np.minimum(sel + 1, n - 1)] = np.where(sel + 1 < n, pitch, f0[np.minimum(sel + 1, n - 1)])
    return energy, f0


def _ou_response(a: np.ndarray | float, b: np.ndarray | float, k: np.ndarray) -> np.ndarray:
    """Impulse response at steps ``k`` of the smoothed OU cascade: poles ``a`` (OU) and ``b`` (low-pass)."""
    return (1 - b) * (a ** (k + 1) - b ** (k + 1)) / (a - b)


def _ou(rng: np.random.Generator, n: int, dt: float, tau: float, std: np.ndarray) -> np.ndarray:
    """Smooth Ornstein–Uhlenbeck path anchored at 0: time constant tau, stationary std ``std``.

    A plain OU path is as rough as Brownian motion at short scales (head jitter); it is low-passed
    once more (time constant ``tau / 5``) and renormalised, which keeps the mean reversion.
    """
    a, b = np.exp(-dt / tau), np.exp(-dt / (0.2 * tau))
    # Impulse response of the two cascaded first-order filters, truncated at ~4 tau (e^-4).
    warm = int(4 * tau / dt)
    h = _ou_response(a, b, np.arange(warm + 1))
    # Noise starts ``warm`` steps early, so the path is stationary from its first sample.
    noise = rng.standard_normal(n + warm)
    x = np.convolve(noise, h)[warm : warm + n]
    return x * std / np.sqrt((h * h).sum())


def _speech_mask(parsed: list[tuple[str, float, float]], grid: np.ndarray, energy: np.ndarray) -> np.ndarray:
    if parsed:
        mask = np.zeros(grid.size, dtype=bool)
        for phone, s, e in parsed:
            if phone != SILENCE:
                mask |= (grid >= s) & (grid < e)
        return mask
    if energy.max() <= -99:
        return np.zeros(grid.size, dtype=bool)
    return energy > max(energy.max() - 30.0, -55.0)


def _pauses(speech: np.ndarray, grid: np.ndarray, min_len: float = BLINK_PAUSE_MIN_S) -> list[float]:
    """Start times of non-speech stretches of at least ``min_len`` that follow speech."""
    out: list[float] = []
    edges = np.flatnonzero(np.diff(speech.astype(np.int8)) == -1) + 1  # speech -> silence
    for i in edges:
        j = i
        while j < speech.size and not speech[j]:
            j += 1
        if grid[min(j, grid.size - 1)] - grid[i] >= min_len or j >= speech.size:
            out.append(float(grid[i]))
    return out


def _stress_events(
    parsed: list[tuple[str, float, float]],
    no_audio: bool,
    grid: np.ndarray,
    energy: np.ndarray,
    f0: np.ndarray,
    speech: np.ndarray,
) -> list[tuple[float, float, float]]:
    """Stressed vowels as (onset s, strength 0..1, pitch z): the events that drive nods and brows."""
    n_grid, dt = len(grid), 1.0 / _GRID_HZ
    voiced_f0 = f0[f0 > 0]
    f0_z = np.zeros(n_grid)
    if voiced_f0.size > 10:
        logf = np.log(np.maximum(f0, 1.0))
        mu, sd = np.log(voiced_f0).mean(), np.log(voiced_f0).std() + 1e-3
        f0_z = np.where(f0 > 0, (logf - mu) / sd, 0.0)
    vowels = [(s, e) for p, s, e in parsed if p in VOWELS and e > s]
    if not vowels and speech.any():
        # No phone timings: energy peaks during speech stand in for vowel nuclei.
        sm = np.convolve(energy, np.ones(9) / 9, mode="same")
        peaks = np.flatnonzero((sm[1:-1] > sm[:-2]) & (sm[1:-1] >= sm[2:]) & speech[1:-1]) + 1
        last = -1.0
        for p in peaks:
            if grid[p] - last > 0.2:
                vowels.append((float(grid[p]) - 0.05, float(grid[p]) + 0.05))
                last = float(grid[p])
    stress: list[tuple[float, float, float]] = []  # (onset, strength 0..1, pitch z)
    if vowels:
        e_vals = np.array(
            [energy[(grid >= s) & (grid < max(e, s + dt))].max(initial=-100.0) for s, e in vowels]
        )
        z_vals = np.array([f0_z[(grid >= s) & (grid < max(e, s + dt))].max(initial=0.0) for s, e in vowels])
        durs = np.array([e - s for s, e in vowels])
        if no_audio:  # no audio: duration is the only stress cue
            e_vals = durs * 100
        score = e_vals + 20.0 * np.clip(durs - 0.08, 0.0, 0.2)
        thresh = np.quantile(score, 0.6)
        for (s, _), sc, z in zip(vowels, score, z_vals, strict=True):
            if sc >= thresh:
                strength = float(np.clip((sc - thresh) / 6.0 + 0.5, 0.3, 1.0))
                stress.append((s, strength, float(z)))
    return stress


def stressed_onsets(phones: PhoneSeq | None, pcm: np.ndarray, sample_rate: int) -> list[float]:
    """When the targets' stressed vowels start (s): where the targets nod (evaluation of HeadTrack)."""
    parsed = _parse_phones(phones)
    duration = len(pcm) / float(sample_rate)
    n_grid = int(np.ceil(duration * _GRID_HZ)) + 2
    grid = np.arange(n_grid) / _GRID_HZ
    energy, f0 = _audio_features(pcm, int(sample_rate), n_grid)
    speech = _speech_mask(parsed, grid, energy)
    return [onset for onset, _, _ in _stress_events(parsed, False, grid, energy, f0, speech)]


def nonverbal_targets(
    phones: PhoneSeq | None,
    pcm: np.ndarray | None,
    sample_rate: int,
    n_frames: int,
    fps: float,
    rng: np.random.Generator | int | None,
) -> np.ndarray:
    """Blinks, brows and head pose -> (n_frames, N_CHANNELS) float32; mouth channels 0.

    See the module docstring for the stochastic model. ``pcm`` may be None (no audio features).
    """
    _check_frames(n_frames, fps)
    if pcm is not None and (not isinstance(sample_rate, int | np.integer) or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    # One child stream per component, so how much one draws never shifts another (fps-independence).
    r_blink, r_pause, r_shape, r_pitch, r_yaw, r_roll, r_nod, r_brow, r_brow_ev = gen.spawn(9)
    parsed = _parse_phones(phones)
    n = int(n_frames)
    out = np.zeros((n, N_CHANNELS), dtype=np.float32)
    if n == 0:
        return out
    duration = n / float(fps)
    dt = 1.0 / _GRID_HZ
    n_grid = int(np.ceil(duration * _GRID_HZ)) + 2
    grid = np.arange(n_grid) * dt
    t = frame_times(n, fps)
    vowel_mask = None
    if parsed:  # pitch is only read inside vowels: skip the rest
        vowel_mask = np.zeros(n_grid, dtype=bool)
        for p, s, e in parsed:
            if p in VOWELS:
                vowel_mask |= (grid >= s) & (grid < e)
    energy, f0 = _audio_features(pcm, int(sample_rate), n_grid, vowel_mask)
    speech = _speech_mask(parsed, grid, energy)

    # --- blinks: gamma renewal process + blinks at pauses
    onsets: list[float] = []
    clock = -float(r_blink.uniform(0.0, BLINK_PHASE_S))  # random phase: the first blink is not always at 3 s
    while True:
        clock += _blink_interval(r_blink)
        if clock > duration:
            break
        onsets.append(clock)
    for start in _pauses(speech, grid):
        if r_pause.uniform() < BLINK_PAUSE_P:
            onsets.append(start + float(r_pause.uniform(*BLINK_PAUSE_DELAY_S)))
    onsets.sort()
    merged: list[float] = []
    for o in onsets:
        if not merged or o - merged[-1] >= BLINK_MERGE_S:
            merged.append(o)
    left = np.zeros(n)
    right = np.zeros(n)
    for o in merged:
        length, amp, left_amp, right_amp = _blink_draw(r_shape)
        shape = _blink_shape(t, o, length) * amp
        left = np.maximum(left, shape * left_amp)
        right = np.maximum(right, shape * right_amp)
    out[:, CHANNEL_INDEX["eyeBlinkLeft"]] = left
    out[:, CHANNEL_INDEX["eyeBlinkRight"]] = right

    # --- stressed vowels and pitch accents (events that drive nods and brows)
    stress = _stress_events(parsed, pcm is None, grid, energy, f0, speech)

    # --- head: OU anchored to neutral + nods on stressed vowels + up-tilt on pitch accents
    # Ease the speaking gain over 0.5 s; edge padding keeps the start independent of the length.
    speaking = np.convolve(np.pad(speech.astype(np.float64), 25, mode="edge"), np.ones(51) / 51, "valid")
    gain = 1.0 + 0.6 * speaking
    pitch = _ou(r_pitch, n_grid, dt, 1.5, 1.2 * gain)
    yaw = _ou(r_yaw, n_grid, dt, 2.0, 1.8 * gain)
    roll = _ou(r_roll, n_grid, dt, 1.2, 1.0 * gain)
    for onset, strength, z in stress:
        amp_u, length_u, turn = r_nod.uniform(size=3)  # fixed draws per event
        amp = (0.5 + 1.1 * amp_u) * strength
        pitch += amp * _raised_cosine(grid, onset - 0.08, 0.3 + 0.12 * length_u)
        if z > 0.8:  # pitch accent: head up a little, slight turn
            pitch -= 0.6 * amp * _raised_cosine(grid, onset - 0.05, 0.5)
            yaw += 1.2 * (turn - 0.5) * _raised_cosine(grid, onset - 0.05, 0.5)
    out[:, CHANNEL_INDEX["headPitch"]] = np.interp(t, grid, pitch)
    out[:, CHANNEL_INDEX["headYaw"]] = np.interp(t, grid, yaw)
    out[:, CHANNEL_INDEX["headRoll"]] = np.interp(t, grid, roll)

    # --- brows: small slow baseline + raises on pitch accents / emphasis
    base = np.clip(0.03 + _ou(r_brow, n_grid, dt, 2.5, np.full(n_grid, 0.025)), 0.0, 0.08)
    inner = base.copy()
    outer = base.copy()
    for onset, strength, z in stress:
        u, amp, length, outer_share = r_brow_ev.uniform(size=4)  # fixed draws per event
        if z > 0.8 or (strength > 0.8 and u < 0.5):
            amp = (0.15 + 0.25 * amp) * min(1.0, 0.6 + 0.3 * max(z, 0.0))
            bump = amp * _raised_cosine(grid, onset - 0.06, 0.35 + 0.25 * length)
            inner += bump
            outer += bump * (0.6 + 0.4 * outer_share)
    out[:, CHANNEL_INDEX["browInnerUp"]] = np.interp(t, grid, inner)
    out[:, CHANNEL_INDEX["browOuterUpLeft"]] = np.interp(t, grid, outer)
    out[:, CHANNEL_INDEX["browOuterUpRight"]] = np.interp(t, grid, outer)
    return clip_motion(out)


class BlinkTrack:
    """The targets' blink model, run causally frame by frame for generation (one per stream).

    Why: the denoiser learns blinks from these targets, but few-step sampling averages their rare,
    randomly timed events away (at 3 steps it blinked 1.3 times a minute against the targets' 17).
    The process needs no audio beyond a speech flag per frame, so generation runs the targets' own
    model instead: gamma renewal intervals with a random phase, a blink with probability 0.6 at a
    pause of at least 0.25 s, onsets closer than 0.8 s merged, the same shapes and eye gains.

    Causal: a pause is known to last 0.25 s only once 0.25 s of it have passed, so a pause blink
    starts 0.03-0.15 s after that moment (the targets time it from the pause start). Every onset is
    decided, in time order, by the first frame at or after it, so frame values depend only on the
    seed, the frame times and the speech flags so far: never on chunking, and no frame changes later.
    Draws come from their own streams (``SeedSequence(seed, spawn_key=(0xB1,))``), apart from the
    denoiser's per-frame noise.
    """

    def __init__(self, seed: int, fps: float) -> None:
        root = np.random.SeedSequence(int(seed), spawn_key=(0xB1,))
        self._r_blink, self._r_pause, self._r_shape = (np.random.default_rng(s) for s in root.spawn(3))
        self.fps = float(fps)
        self._clock = -float(self._r_blink.uniform(0.0, BLINK_PHASE_S)) + _blink_interval(self._r_blink)
        self._pending: list[float] = []  # pause-blink onsets not decided yet (a heap; at most a few)
        self._last_onset = -np.inf
        self._active: list[tuple[float, float, float, float, float]] = []  # onset, length, amp, gains
        self._was_speech = False
        self._pause_start: float | None = None  # first non-speech frame after speech, until checked
        self.onsets: int = 0  # blinks started so far

    def step(self, index: int, speech: bool) -> tuple[float, float]:
        """(eyeBlinkLeft, eyeBlinkRight) of frame ``index``; call once per frame, in order."""
        t = index / self.fps
        if speech:
            self._pause_start = None
        elif self._was_speech:
            self._pause_start = t
        self._was_speech = bool(speech)
        if self._pause_start is not None and t - self._pause_start >= BLINK_PAUSE_MIN_S - 1e-9:
            self._pause_start = None  # one chance per pause
            if self._r_pause.uniform() < BLINK_PAUSE_P:
                heapq.heappush(self._pending, t + float(self._r_pause.uniform(*BLINK_PAUSE_DELAY_S)))
        while True:  # decide every onset up to t, in time order
            pause = self._pending[0] if self._pending else np.inf
            onset = min(self._clock, pause)
            if onset > t:
                break
            if pause <= self._clock:
                heapq.heappop(self._pending)
            else:
                self._clock += _blink_interval(self._r_blink)
            if onset - self._last_onset >= BLINK_MERGE_S:
                self._last_onset = onset
                self._active.append((onset, *_blink_draw(self._r_shape)))
                self.onsets += 1
        left = right = 0.0
        for onset, length, amp, gain_l, gain_r in self._active:
            y = amp * float(_blink_shape(np.asarray(t), onset, length))
            left, right = max(left, y * gain_l), max(right, y * gain_r)
        self._active = [b for b in self._active if t < b[0] + b[1]]
        return left, right

    def values(self, first: int, speech: Sequence[bool] | np.ndarray) -> np.ndarray:
        """Frames first..first+len(speech)-1 -> (n, 2) float32 (left, right)."""
        out = np.zeros((len(speech), 2), np.float32)
        for i, s in enumerate(speech):
            out[i] = self.step(first + i, bool(s))
        return out


# HeadTrack: the targets' head model (a smoothed OU process per axis: time constant, stationary std in
# degrees) and its nods, without pitch accents (they need F0 contours). Scaled so the head moves as
# much as the network's own whole-file head pose (std 0.91 deg on 60 held-out prompts), not the
# targets' 2.0 deg: the renderer's look at that amplitude is the reviewed one.
HEAD_AXES = (("headPitch", 1.5, 1.2), ("headYaw", 2.0, 1.8), ("headRoll", 1.2, 1.0))
HEAD_SCALE = 0.5
HEAD_SPEAKING_GAIN = 0.6  # 1.6x wider while speaking, as in the targets
HEAD_SPEAKING_TAU_S = 0.25  # causal easing of that gain (the targets use a centred 0.5 s window)
# Nods, as the targets make them without phone timings: energy peaks in speech at least NOD_GAP_S
# apart stand in for vowel nuclei, and those in the upper 40 % of the recent ones are stressed.
NOD_GAP_S = 0.2
NOD_DIP_DB = 3.0  # a peak is confirmed once the level falls this far from it, and needs a dip before it
NOD_STRESS_QUANTILE = 0.6
NOD_HISTORY = 24  # recent peaks the stress threshold is taken over (about 5 s of speech)
NOD_MIN_HISTORY = 4  # no nods before this many peaks: the first syllables have nothing to compare to
DB_PER_NEPER_POWER = 10.0 / np.log(10.0)  # a natural-log power ratio in dB


class HeadTrack:
    """The targets' head-pose model, run causally frame by frame for streams and whole files.

    Why: a network fine-tuned on its own streamed mouth as context (``avatar train --rollout``) lets
    its streamed head motion shrink to a quarter (docs/bench/eval.md); the head is stochastic, and
    its streamed amplitude is an emergent property of the feedback loop. This process keeps the head
    alive whatever the network does: per axis, white noise through two cascaded one-pole filters (the
    targets' smoothed Ornstein-Uhlenbeck path, no jitter, mean-reverting to neutral), its std eased
    to 1.6x while speaking. With each frame's loudness (``levels``: its energy against the running
    speech level, natural-log power) it also nods on stressed syllables as the targets do without
    phone timings (:meth:`_nod`). Frame values depend only on the seed, the fps and the speech flags
    and levels so far (one call per frame, in order), so streams and whole files move alike and
    nothing drifts.
    """

    def __init__(self, seed: int, fps: float, scale: float = HEAD_SCALE) -> None:
        root = np.random.SeedSequence(int(seed), spawn_key=(0x4EAD,))
        *axes, nods = root.spawn(len(HEAD_AXES) + 1)
        self._rngs = [np.random.default_rng(s) for s in axes]
        self._r_nod = np.random.default_rng(nods)
        self.fps = float(fps)
        self.scale = scale
        self._frame = 0
        self._rising = False  # after a dip, looking for the next peak
        self._top = (-np.inf, 0.0, False)  # the highest level since the dip: dB, time, speech
        self._low = np.inf  # the lowest level since the last peak (dB)
        self._nodding: tuple[list[float], float] | None = None  # this rise's nod and its size draw
        self._last_peak = -np.inf
        self._peaks: deque[float] = deque(maxlen=NOD_HISTORY)
        self._thresh = np.inf  # the stress threshold over the recent peaks (none before enough of them)
        self._nods: list[list[float]] = []  # onset (s), amplitude (deg), length (s)
        self.nods = 0  # nods started so far
        dt = 1.0 / float(fps)
        self._a = np.array([np.exp(-dt / tau) for _, tau, _ in HEAD_AXES])
        self._b = np.array([np.exp(-dt / (0.2 * tau)) for _, tau, _ in HEAD_AXES])
        # stationary std of the cascade's output for unit white noise (its impulse response's norm)
        k = np.arange(int(12 * max(tau for _, tau, _ in HEAD_AXES) / dt))[:, None]
        h = _ou_response(self._a[None], self._b[None], k)
        self._std = np.array([std for _, _, std in HEAD_AXES]) * scale / np.sqrt((h * h).sum(axis=0))
        self._ease = 1.0 - np.exp(-dt / HEAD_SPEAKING_TAU_S)
        self._x1 = np.zeros(len(HEAD_AXES))
        self._x2 = np.zeros(len(HEAD_AXES))
        self._speaking = 0.0
        for _ in range(k.shape[0]):  # start stationary, not at exactly neutral
            self._advance()

    def _advance(self) -> None:
        w = np.array([r.standard_normal() for r in self._rngs])
        self._x1 = self._a * self._x1 + w
        self._x2 = self._b * self._x2 + (1 - self._b) * self._x1

    def step(self, speech: bool, level: float | None = None) -> np.ndarray:
        """(headPitch, headYaw, headRoll) in degrees of the next frame; call once per frame, in order.

        ``level``: the frame's loudness against the running speech level (natural-log power); None
        gives no nods.
        """
        self._advance()
        self._speaking += (float(speech) - self._speaking) * self._ease
        out = self._x2 * self._std * (1.0 + HEAD_SPEAKING_GAIN * self._speaking)
        t = self._frame / self.fps
        if level is not None:
            self._nod(t, bool(speech), float(level) * DB_PER_NEPER_POWER)
        self._frame += 1
        if self._nods:
            out[0] += self.scale * sum(
                amp * float(_raised_cosine(np.asarray(t), on, n)) for on, amp, n in self._nods
            )
            self._nods = [nod for nod in self._nods if t < nod[0] + nod[2]]
        return out

    def _nod(self, t: float, speech: bool, db: float) -> None:
        """Nod on a stressed syllable, starting as its level rises past the stress threshold.

        The targets' rule on energy peaks: a peak in speech, NOD_GAP_S after the last one, stressed
        when in the upper 40 % of the recent peaks; strength from how far above, the nod's size and
        length drawn per event. Causal: the nod starts in the frame whose level first reaches the
        threshold (the peak itself is known only once the level has fallen from it), and grows with
        the level until the peak. A peak joins the recent ones once the level has dipped NOD_DIP_DB
        below it, after rising that much from the dip before it.
        """
        if not self._rising:
            self._low = min(self._low, db)
            if db - self._low >= NOD_DIP_DB:
                self._rising, self._top, self._nodding = True, (db, t, speech), None
                self._start(t, speech, db)
            return
        if db > self._top[0]:
            self._top = (db, t, speech)
            if self._nodding is None:
                self._start(t, speech, db)
            else:  # still rising: the nod grows with the peak
                nod, amp_u = self._nodding
                nod[1] = (0.5 + 1.1 * amp_u) * self._strength(db)
            return
        if self._top[0] - db < NOD_DIP_DB:
            return
        peak, t_peak, was_speech = self._top
        self._rising, self._low, self._nodding = False, db, None
        if was_speech and t_peak - self._last_peak >= NOD_GAP_S - 1e-9:
            self._last_peak = t_peak
            self._peaks.append(peak)
            if len(self._peaks) > NOD_MIN_HISTORY:
                self._thresh = float(np.quantile(np.asarray(self._peaks), NOD_STRESS_QUANTILE))

    def _strength(self, db: float) -> float:
        return float(np.clip((db - self._thresh) / 6.0 + 0.5, 0.3, 1.0))

    def _start(self, t: float, speech: bool, db: float) -> None:
        """Start this rise's nod if its level is already a stressed peak's."""
        if not speech or db < self._thresh or t - self._last_peak < NOD_GAP_S - 1e-9:
            return
        amp_u, length_u = self._r_nod.uniform(size=2)  # fixed draws per event
        nod = [t, (0.5 + 1.1 * amp_u) * self._strength(db), 0.3 + 0.12 * length_u]
        self._nods.append(nod)
        self._nodding = (nod, float(amp_u))
        self.nods += 1

    def values(
        self, speech: Sequence[bool] | np.ndarray, levels: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """The next len(speech) frames -> (n, 3) float32 (``levels``: see :meth:`step`)."""
        out = np.zeros((len(speech), len(HEAD_AXES)), np.float32)
        for i, s in enumerate(speech):
            out[i] = self.step(bool(s), None if levels is None else float(levels[i]))
        return np.clip(out, -MAX_POSE_DEG, MAX_POSE_DEG)  # 8 stds at the widest: a guard, not a shape


def motion_targets(
    phones: PhoneSeq | None,
    pcm: np.ndarray | None,
    sample_rate: int,
    n_frames: int,
    fps: float,
    rng: np.random.Generator | int | None,
) -> np.ndarray:
    """Full motion targets: :func:`mouth_targets` plus :func:`nonverbal_targets` -> (n_frames, N_CHANNELS)."""
    out = nonverbal_targets(phones, pcm, sample_rate, n_frames, fps, rng)
    out[:, :N_MOUTH] = mouth_targets(phones, n_frames, fps)[:, :N_MOUTH]
    return out
