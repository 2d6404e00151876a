"""Robustness augmentation for speech: noise, room reverb, gain, band limits, Opus round trip, rate, pitch.

Used by the corpus builder (augmented copies as extra manifest rows) and by training on the fly. Only
``rate`` changes the timeline; it returns ``time_scale`` (multiply phone times by it). All other kinds keep
the length exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, resample_poly, sosfiltfilt

KINDS: tuple[str, ...] = ("noise", "reverb", "gain", "bandlimit", "opus", "rate", "pitch")
# Order kinds are applied in: timeline first, then the room, then the channel (codec last, as in a call).
_ORDER = ("rate", "pitch", "reverb", "noise", "bandlimit", "gain", "opus")


@dataclass(frozen=True)
class Augmented:
    """Augmented float32 audio in [-1, 1], the timeline scale, and a description for the manifest."""

    pcm: np.ndarray
    time_scale: float
    description: str


def augment(
    pcm: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    kinds: tuple[str, ...] | list[str] | None = None,
) -> tuple[np.ndarray, float]:
    """Augment ``pcm`` (int16 or float in [-1, 1]); returns ``(pcm, time_scale)`` in the input's dtype kind.

    ``kinds=None`` picks one to three kinds at random. Multiply phone times by ``time_scale``.
    """
    result = apply(pcm, sample_rate, rng, kinds)
    return result.pcm, result.time_scale


def apply(
    pcm: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    kinds: tuple[str, ...] | list[str] | None = None,
) -> Augmented:
    """Like :func:`augment` but also returns a description such as ``"noise(snr=12dB,pink);opus(16kbps)"``."""
    pcm = np.asarray(pcm)
    is_int = np.issubdtype(pcm.dtype, np.integer)
    if pcm.ndim != 1:
        raise ValueError(f"augment expects mono 1-D audio, got shape {pcm.shape}")
    if sample_rate <= 0:
        raise ValueError("sample_rate must be positive")
    x = pcm.astype(np.float32) / 32768.0 if is_int else np.nan_to_num(pcm.astype(np.float32))
    if kinds is None:
        n = int(rng.integers(1, 4))
        kinds = [str(k) for k in rng.choice(KINDS, size=n, replace=False)]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown augmentation kind(s) {unknown}; expected some of {list(KINDS)}")
    time_scale = 1.0
    parts: list[str] = []
    for kind in _ORDER:
        if kind not in kinds or len(x) == 0:
            continue
        if kind == "rate":
            factor = float(rng.uniform(0.85, 1.18))
            x = _resample(x, factor)
            time_scale = len(x) / max(1, len(pcm))
            parts.append(f"rate(x{factor:.3f})")
        elif kind == "pitch":
            semitones = float(rng.uniform(-3.0, 3.0))
            x = pitch_shift(x, sample_rate, semitones)
            parts.append(f"pitch({semitones:+.1f}st)")
        elif kind == "reverb":
            rt60 = float(rng.uniform(0.15, 0.7))
            wet = float(rng.uniform(0.2, 0.6))
            x = reverb(x, sample_rate, rt60, wet, rng)
            parts.append(f"reverb(rt60={rt60:.2f}s,wet={wet:.2f})")
        elif kind == "noise":
            snr = float(rng.uniform(5.0, 30.0))
            color = str(rng.choice(["white", "pink", "brown"]))
            x = add_noise(x, snr, color, rng)
            parts.append(f"noise(snr={snr:.0f}dB,{color})")
        elif kind == "bandlimit":
            low, high = [(300.0, 3400.0), (100.0, 4000.0), (50.0, 6000.0), (200.0, 7000.0)][
                int(rng.integers(4))
            ]
            x = band_limit(x, sample_rate, low, high)
            parts.append(f"bandlimit({low:.0f}-{high:.0f}Hz)")
        elif kind == "gain":
            db = float(rng.uniform(-18.0, 6.0))
            x = x * 10 ** (db / 20)
            parts.append(f"gain({db:+.1f}dB)")
        elif kind == "opus":
            kbps = int(rng.choice([8, 12, 16, 24, 32]))
            x = opus_round_trip(x, sample_rate, kbps * 1000)
            parts.append(f"opus({kbps}kbps)")
    x = np.clip(x, -1.0, 1.0).astype(np.float32)
    out = np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16) if is_int else x
    return Augmented(out, float(time_scale), ";".join(parts))


def _resample(x: np.ndarray, speed: float) -> np.ndarray:
    """Play ``speed`` times faster (pitch and tempo together)."""
    up = 1000
    down = int(round(up * speed))
    return resample_poly(x.astype(np.float64), up, down).astype(np.float32)


def pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch, keep duration: resample, then time-stretch back by overlap-add with alignment (WSOLA)."""
    factor = 2.0 ** (semitones / 12.0)
    shifted = _resample(x, factor)  # higher pitch, shorter
    return wsola(shifted, len(x), sample_rate)


def wsola(x: np.ndarray, out_len: int, sample_rate: int) -> np.ndarray:
    """Waveform-similarity overlap-add time stretch of ``x`` to exactly ``out_len`` samples."""
    if len(x) == 0 or out_len == 0:
        return np.zeros(out_len, dtype=np.float32)
    win = int(0.03 * sample_rate)
    hop = win // 2
    tol = int(0.008 * sample_rate)
    window = np.hanning(win).astype(np.float32)
    padded = np.concatenate(
        [np.zeros(tol, np.float32), x.astype(np.float32), np.zeros(win + 2 * tol, np.float32)]
    )
    ratio = len(x) / out_len
    n_frames = out_len // hop + 2
    out = np.zeros(n_frames * hop + win, np.float32)
    norm = np.zeros_like(out)
    prev = None
    for k in range(n_frames):
        centre = int(k * hop * ratio) + tol
        if prev is None:
            pos = centre
        else:
            # Choose the frame whose start best continues the previous frame's natural continuation.
            lo, hi = max(0, centre - tol), min(len(padded) - win, centre + tol)
            target = padded[prev + hop : prev + hop + win]
            if hi <= lo or len(target) < win:
                pos = min(max(centre, 0), len(padded) - win)
            else:
                seg = padded[lo : hi + win]
                corr = np.correlate(seg, target, mode="valid")
                pos = lo + int(np.argmax(corr))
        frame = padded[pos : pos + win]
        if len(frame) < win:
            frame = np.pad(frame, (0, win - len(frame)))
        out[k * hop : k * hop + win] += frame * window
        norm[k * hop : k * hop + win] += window
        prev = pos
    out = out / np.maximum(norm, 1e-3)
    return out[:out_len].astype(np.float32)


def reverb(x: np.ndarray, sample_rate: int, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room impulse response: sparse early reflections + exponential noise tail."""
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    ir = np.zeros(n)
    ir[0] = 1.0
    for _ in range(6):
        d = int(rng.uniform(0.002, 0.03) * sample_rate)
        if d < n:
            ir[d] += rng.uniform(-0.6, 0.6)
    onset = int(0.005 * sample_rate)
    ir[onset:] += 0.25 * tail[: n - onset]
    y = fftconvolve(x, ir)[: len(x)]
    y *= np.sqrt(np.sum(x**2) / max(np.sum(y**2), 1e-12))
    return ((1 - wet) * x + wet * y).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    """Add white, pink or brown noise at ``snr_db`` relative to the signal's power."""
    n = len(x)
    noise = rng.standard_normal(n)
    if color in ("pink", "brown"):
        spectrum = np.fft.rfft(noise)
        f = np.maximum(np.arange(len(spectrum)), 1)
        spectrum /= f ** (0.5 if color == "pink" else 1.0)
        noise = np.fft.irfft(spectrum, n)
    power = float(np.mean(x.astype(np.float64) ** 2))
    if power <= 1e-10:
        power = 1e-4  # silent input: a quiet noise floor
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / max(float(np.mean(noise**2)), 1e-12))
    return (x + noise).astype(np.float32)


def band_limit(x: np.ndarray, sample_rate: int, low: float, high: float) -> np.ndarray:
    """Zero-phase Butterworth band-pass (telephone-like channels); zero phase keeps phone timings."""
    high = min(high, 0.45 * sample_rate)
    sos = butter(4, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    if len(x) <= 3 * (2 * len(sos) + 1):
        return x.astype(np.float32)
    return sosfiltfilt(sos, x).astype(np.float32)


def opus_round_trip(x: np.ndarray, sample_rate: int, bitrate: int = 24000) -> np.ndarray:
    """Encode with libopus at 48 kHz through PyAV and decode back; same length and rate as the input."""
    import av

    pcm48 = resample_poly(x.astype(np.float64), 48000, sample_rate).astype(np.float32)
    samples = np.clip(np.rint(pcm48 * 32767), -32768, 32767).astype(np.int16)
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bitrate
    encoder.open()
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = 48000
    decoder.layout = "mono"
    decoder.open()
    frame_size = 960  # 20 ms, what WebRTC sends
    padded = np.concatenate([samples, np.zeros((-len(samples)) % frame_size + frame_size, np.int16)])
    decoded: list[np.ndarray] = []
    packets = []
    for i in range(0, len(padded), frame_size):
        frame = av.AudioFrame.from_ndarray(padded[None, i : i + frame_size], format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    for packet in packets:
        for out in decoder.decode(packet):
            decoded.append(
                out.to_ndarray().reshape(-1).astype(np.float32)
                / (32768.0 if out.format.name.startswith("s16") else 1.0)
            )
    y = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    # libopus adds a fixed pre-skip delay; remove it so timings stay aligned.
    delay = int(getattr(encoder, "delay", 0) or 312)
    y = y[delay : delay + len(pcm48)]
    if len(y) < len(pcm48):
        y = np.pad(y, (0, len(pcm48) - len(y)))
    back = resample_poly(y.astype(np.float64), sample_rate, 48000).astype(np.float32)
    if len(back) < len(x):
        back = np.pad(back, (0, len(x) - len(back)))
    return back[: len(x)]
