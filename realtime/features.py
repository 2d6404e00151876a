"""Causal, streaming log-mel features for the motion model.

Audio is 16 kHz mono float32. A DC blocker (one-pole high-pass at ~13 Hz) removes offsets, then
frame ``j`` is the 25 ms Hann window over samples ``[160 (j+1) - 400, 160 (j+1))``: it *ends* at
``10 (j+1)`` ms, so it is known as soon as that sample has arrived (causal, no hidden lookahead).
Samples before the stream start are zeros. ``N_MELS`` triangular mel bands span 60-7800 Hz;
features are ``ln(gain-corrected mel power + EPS)``.

Gain does not matter: a peak follower tracks the stream's speech level (frame log-energy; fast
attack, slow release, never below ``LEVEL_FLOOR`` so that background noise in long silences is not
boosted into "speech"; the release falls at a fixed 4 dB/s, so it is the same at any gain) and every frame is shifted by ``LEVEL_REF - level``. A stream therefore
starts as if its speech were at the reference level and adapts to its real level within the
first syllables. The global mean/std normalisation is the model's (stored with its weights).

:class:`FeatureExtractor` gives the same frames for any chunking of the input as
:func:`logmel` on the whole signal (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_FFT = 512
N_MELS = 40
FMIN, FMAX = 60.0, 7800.0
EPS = 1e-7
DC_POLE = 0.995
# Level tracking, in natural-log units of frame energy (1 unit = 4.34 dB).
LEVEL_REF = 1.0  # frame log-energy of speech peaks at about -12 dBFS (measured on TTS at full level)
LEVEL_FLOOR = LEVEL_REF - 9.2  # 40 dB below the reference: quieter "speech" is treated as noise
ATTACK = 0.3  # per 10 ms frame
RELEASE = 4.0 / 4.343 * 0.01  # falls at 4 dB/s: a fixed rate in log units is gain-invariant
MAX_BOOST = 6.9  # at most +30 dB of gain correction for quiet streams
SILENT_FEATURE = float(np.log(EPS))  # value of every band for digital silence at the reference level


def _mel_filterbank() -> np.ndarray:
    """(N_FFT//2+1, N_MELS) triangular filters on the HTK mel scale."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(FMIN)), hz_to_mel(np.array(FMAX)), N_MELS + 2))
    fb = np.zeros((freqs.size, N_MELS))
    for i in range(N_MELS):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, i] = np.maximum(0.0, np.minimum(up, down))
    return fb.astype(np.float64)


MEL_FB = _mel_filterbank()
WINDOW = np.hanning(WIN + 1)[:WIN]  # periodic Hann


def sanitize(pcm: np.ndarray) -> np.ndarray:
    """Mono float64 samples: NaN/inf become 0, values are clipped to -4..4 (very loud input)."""
    x = np.asarray(pcm, dtype=np.float64)
    if x.ndim == 2:  # (n, channels) -> mono
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"pcm must be 1-D (or (n, channels)), got shape {x.shape}")
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), -4.0, 4.0)


def resample(pcm: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a whole signal to ``target`` Hz."""
    if not isinstance(rate, int | np.integer) or rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {rate!r}")
    x = sanitize(pcm)
    if rate == target or x.size == 0:
        return x
    rs = StreamResampler(int(rate), target)
    return np.concatenate([rs.push(x), rs.flush()])


class StreamResampler:
    """Chunk-invariant polyphase resampler to 16 kHz (Kaiser-windowed sinc, zero phase).

    Output sample ``m`` needs input up to ``(m * down + delay) / up``: a few ms of lookahead that
    :meth:`flush` pads with zeros at the end of the input.
    """

    def __init__(self, rate: int, target: int = SAMPLE_RATE, half_taps: int = 16) -> None:
        from math import gcd

        from scipy.signal import firwin

        if not isinstance(rate, int | np.integer) or not 1000 <= rate <= 384000:
            raise ValueError(f"sample_rate must be an integer in 1000..384000, got {rate!r}")
        g = gcd(int(rate), int(target))
        self.rate, self.up, self.down = int(rate), target // g, int(rate) // g
        n_taps = 2 * half_taps * max(self.up, self.down) + 1
        self.h = firwin(n_taps, 1.0 / max(self.up, self.down), window=("kaiser", 6.0)) * self.up
        self.delay = (n_taps - 1) // 2
        self._x = np.zeros(0)
        self._base = 0  # input index of self._x[0]
        self._n_in = 0
        self._m = 0  # next output index

    def _outputs(self, m_end: int) -> np.ndarray:
        ms = np.arange(self._m, m_end, dtype=np.int64)
        if ms.size == 0:
            return np.zeros(0)
        n_h = self.h.size
        k_lo = -((-(ms * self.down + self.delay - (n_h - 1))) // self.up)  # ceil
        width = (n_h + self.up - 1) // self.up + 1
        ks = k_lo[:, None] + np.arange(width)[None, :]
        taps = ms[:, None] * self.down + self.delay - ks * self.up
        ok = (taps >= 0) & (taps < n_h) & (ks >= 0) & (ks < self._n_in)
        xs = np.where(ok, self._x[np.clip(ks - self._base, 0, max(self._x.size - 1, 0))], 0.0)
        y = (xs * np.where(ok, self.h[np.clip(taps, 0, n_h - 1)], 0.0)).sum(axis=1)
        self._m = m_end
        keep_from = max(0, int(k_lo[-1]) - 1 - self._base)
        self._x = self._x[keep_from:]
        self._base += keep_from
        return y

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Input samples at ``rate`` -> the 16 kHz samples that became computable."""
        x = sanitize(pcm)
        if self.up == self.down:
            return x
        self._x = np.concatenate([self._x, x])
        self._n_in += x.size
        # output m is complete when its last input (m*down + delay)/up has arrived
        m_end = max(self._m, (((self._n_in - 1) * self.up - self.delay) // self.down) + 1)
        return self._outputs(m_end)

    def flush(self) -> np.ndarray:
        """The remaining outputs of the input so far (future input taken as zeros)."""
        if self.up == self.down:
            return np.zeros(0)
        total = -((-self._n_in * self.up) // self.down)  # ceil(n_in * up / down)
        return self._outputs(max(total, self._m))


@dataclass
class LevelState:
    """Running speech level of one stream (kept across utterances of the same session)."""

    level: float = LEVEL_REF


class FeatureExtractor:
    """Streaming log-mel: push samples, get the frames that became complete."""

    def __init__(self, level: LevelState | None = None) -> None:
        self.level = level if level is not None else LevelState()
        self._tail = np.zeros(WIN - HOP)  # the last 240 filtered samples (zeros before the start)
        self._zi = np.zeros(1)
        self.frames_out = 0

    def push(self, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """16 kHz samples -> (new frames (n, N_MELS) float32, their energy relative to level (n,))."""
        x = sanitize(pcm)
        if x.size == 0:
            return np.zeros((0, N_MELS), np.float32), np.zeros(0, np.float32)
        y, self._zi = lfilter([1.0, -1.0], [1.0, -DC_POLE], x, zi=self._zi)
        buf = np.concatenate([self._tail, y])
        n = (buf.size - (WIN - HOP)) // HOP
        if n <= 0:
            self._tail = buf
            return np.zeros((0, N_MELS), np.float32), np.zeros(0, np.float32)
        idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
        frames = buf[idx] * WINDOW
        self._tail = buf[n * HOP :]
        power = np.abs(np.fft.rfft(frames, N_FFT, axis=1)) ** 2 / WIN
        mel = power @ MEL_FB
        energy = np.log(mel.sum(axis=1) + 1e-12)
        shift = np.empty(n)
        rel = np.empty(n)
        level = self.level.level
        for i in range(n):  # the peak follower is a recurrence: a short loop per chunk
            e = energy[i]
            level = level + ATTACK * (e - level) if e > level else max(e, level - RELEASE)
            level = max(level, LEVEL_FLOOR)
            shift[i] = min(LEVEL_REF - level, MAX_BOOST)
            rel[i] = e - level
        self.level.level = level
        self.frames_out += n
        # gain first, floor second: the EPS floor then sits at the same place for every input gain
        out = np.log(mel * np.exp(shift)[:, None] + EPS)
        return out.astype(np.float32), rel.astype(np.float32)


def logmel(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Whole signal -> (frames (n, N_MELS), relative energy (n,)), as a fresh stream would give."""
    x = resample(pcm, sample_rate)
    return FeatureExtractor().push(x)


def last_mel_index(frame: int, fps: int, lookahead_ms: int) -> int:
    """Index of the last mel frame that motion frame ``frame`` may see (ends at t + lookahead)."""
    return (frame * 1000 + lookahead_ms * fps) // (10 * fps) - 1


def frame_windows(feats: np.ndarray, frames: np.ndarray, fps: int, lookahead_ms: int, k: int) -> np.ndarray:
    """Per motion frame, the ``k`` mel frames ending at its lookahead -> (len(frames), k, N_MELS).

    Mel frames before 0 are digital silence; ``feats`` must reach the last index needed.
    """
    frames = np.asarray(frames, dtype=np.int64)
    last = (frames * 1000 + lookahead_ms * fps) // (10 * fps) - 1
    idx = last[:, None] - np.arange(k - 1, -1, -1)[None, :]
    if idx.size and idx.max() >= len(feats):
        raise ValueError("not enough mel frames for these motion frames")
    padded = np.concatenate([np.full((k, N_MELS), SILENT_FEATURE, np.float32), feats.astype(np.float32)])
    return padded[np.maximum(idx + k, 0)]
