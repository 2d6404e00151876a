"""Voice activity: a speech/silence state over 16 kHz audio, from webrtcvad plus an energy gate.

Silence is a state, not an absence: while the state is silence the session feeds zeros
to the motion generator, so background noise never moves the mouth. Onset is fast (one
20 ms frame of speech flips the state, so speech resumes within one chunk); release is
slow (a hangover) so the mouth does not snap shut between words.
"""

from __future__ import annotations

import numpy as np

try:  # the C extension directly: webrtcvad.py imports pkg_resources, gone from new setuptools
    import _webrtcvad
except ImportError:  # pragma: no cover - a build without the private module name
    _webrtcvad = None

RATE = 16000
FRAME = 320  # 20 ms at 16 kHz, a size webrtcvad accepts


class _WebRtcVad:
    """The minimal webrtcvad API, without the ``webrtcvad`` module's pkg_resources import."""

    def __init__(self, mode: int) -> None:
        if _webrtcvad is not None:
            self._vad = _webrtcvad.create()
            _webrtcvad.init(self._vad)
            _webrtcvad.set_mode(self._vad, mode)
            self._impl = None
        else:  # pragma: no cover
            import webrtcvad

            self._impl = webrtcvad.Vad(mode)

    def is_speech(self, pcm16: bytes) -> bool:
        if self._impl is not None:  # pragma: no cover
            return bool(self._impl.is_speech(pcm16, RATE))
        return bool(_webrtcvad.process(self._vad, RATE, pcm16, len(pcm16) // 2))


class VoiceActivity:
    """Streaming speech/silence state; ``process`` returns the gated audio and a per-sample mask.

    ``mode`` is webrtcvad's aggressiveness (0..3). ``min_dbfs`` is an energy floor below
    which a frame is never speech (webrtcvad alone calls steady noise speech).
    ``hangover`` is how long (seconds) the state stays speech after the last speech frame.
    """

    def __init__(self, mode: int = 2, min_dbfs: float = -50.0, hangover: float = 0.3) -> None:
        if not 0 <= mode <= 3:
            raise ValueError("mode must be in 0..3")
        self._vad = _WebRtcVad(mode)
        self._floor = float(10.0 ** (min_dbfs / 20.0))
        self._hang_frames = max(0, round(hangover * RATE / FRAME))
        self._left = 0  # hangover frames left
        self._buf = np.zeros(0, np.float32)  # < FRAME samples waiting for a full VAD frame
        self.speech = False
        self.speech_frames = 0
        self.frames = 0
        self.unvoiced_run = 0  # frames since the last voiced one (the state may still be speech)

    def classify(self, frame: np.ndarray) -> bool:
        """Update the state with one 20 ms frame (320 samples) and return it."""
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if len(frame) else 0.0
        voiced = False
        if rms >= self._floor:
            pcm16 = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            voiced = self._vad.is_speech(pcm16)
        self.frames += 1
        self.unvoiced_run = 0 if voiced else self.unvoiced_run + 1
        if voiced:
            self.speech_frames += 1
            self._left = self._hang_frames
            self.speech = True
        elif self._left > 0:
            self._left -= 1
        else:
            self.speech = False
        return self.speech

    def process(self, pcm: np.ndarray) -> tuple[np.ndarray, bool]:
        """Gate a chunk of any length: silence becomes zeros. Returns (audio out, speech now).

        Output length equals input length; samples of a partial trailing frame are
        classified with the current state and their frame is re-classified when it completes.
        """
        pcm = np.asarray(pcm, dtype=np.float32)
        out = pcm.copy()
        # classify in whole frames aligned to the stream; a partial frame uses the current state
        start = -len(self._buf)
        buf = np.concatenate([self._buf, pcm]) if len(self._buf) else pcm
        n_full = len(buf) // FRAME
        pos = 0
        for i in range(n_full):
            frame = buf[i * FRAME : (i + 1) * FRAME]
            speech = self.classify(frame)
            lo, hi = max(0, start + i * FRAME), start + (i + 1) * FRAME
            if not speech and hi > lo:
                out[lo:hi] = 0.0
            pos = hi
        self._buf = buf[n_full * FRAME :].copy()
        if not self.speech and pos < len(out):
            out[pos:] = 0.0
        return out, self.speech

    def reset(self) -> None:
        """Forget the state (a new peer)."""
        self._left = 0
        self._buf = np.zeros(0, np.float32)
        self.speech = False
        self.unvoiced_run = 0
