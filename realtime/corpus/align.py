"""Forced alignment with pocketsphinx 5, and the check of an engine's phone timings against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from realtime.phones import SILENCE, normalize_phone

Phones = list[tuple[str, float, float]]

FRAME_S = 0.01  # pocketsphinx alignment frames


class AlignmentError(RuntimeError):
    """The aligner could not align this text to this audio."""


class Aligner:
    """One pocketsphinx decoder, reused across utterances (creating one costs ~0.3 s)."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=16000, bestpath=False, loglevel="FATAL")
        self._vocabulary: list[str] | None = None  # loaded on the first typo to repair
        self._wide: Any = None  # created on first need: default beams prune fast speech out of the word pass

    def _wide_decoder(self) -> Any:
        if self._wide is None:
            from pocketsphinx import Decoder

            wide = {"beam": 1e-120, "wbeam": 1e-100, "pbeam": 1e-120, "maxhmmpf": -1}
            self._wide = Decoder(samprate=16000, bestpath=False, loglevel="FATAL", **wide)
        return self._wide

    def oov(self, words: list[str]) -> list[str]:
        """Words the aligner's dictionary does not have."""
        return [w for w in words if self._decoder.lookup_word(w) is None]

    def add_compounds(self, words: list[str]) -> None:
        """Teach the dictionary out-of-vocabulary words it can spell from known ones.

        Compounds ("touchtone" = "touch" + "tone"), short acronyms spelled as letters ("pbx"), and
        transcript typos one close match away ("represenatives" -> "representatives").
        """
        decoder = self._decoder
        for word in sorted(set(self.oov(words))):
            pron = self._compound(word) or self._acronym(word) or self._typo(word)
            if pron:
                decoder.add_word(word, pron, True)

    def _compound(self, word: str) -> str | None:
        lookup = self._decoder.lookup_word
        for cut in range(len(word) - 2, 1, -1):
            head, tail = lookup(word[:cut]), lookup(word[cut:])
            if head and tail:
                return f"{head} {tail}"
        return None

    def _acronym(self, word: str) -> str | None:
        if not (1 < len(word) <= 4 and word.isalpha()):
            return None
        # cmudict's first entry for the letter "a" is the article (AH); as a letter it is EY.
        letters = ["EY" if ch == "a" else self._decoder.lookup_word(ch) for ch in word]
        return " ".join(letters) if all(letters) else None

    def _typo(self, word: str) -> str | None:
        import difflib

        from realtime.corpus.text import load_vocabulary

        if self._vocabulary is None:
            self._vocabulary = sorted(w for w in load_vocabulary() if w.isalpha())
        candidates = [w for w in self._vocabulary if abs(len(w) - len(word)) <= 2 and w[:1] == word[:1]]
        match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.85)
        return self._decoder.lookup_word(match[0]) if match else None

    def align(self, pcm: np.ndarray, words: list[str]) -> Phones:
        """Phone segments ``[(phone, start_s, end_s)]`` in the shared inventory for 16 kHz int16 ``pcm``."""
        if not words:
            raise AlignmentError("no words to align")
        self.add_compounds(words)
        missing = self.oov(words)
        if missing:
            raise AlignmentError(f"out-of-vocabulary words: {' '.join(sorted(set(missing)))}")
        data = np.ascontiguousarray(pcm, dtype=np.int16).tobytes()
        try:
            alignment = self._run(self._decoder, data, words)
        except (RuntimeError, ValueError):
            try:
                alignment = self._run(self._wide_decoder(), data, words)
            except (RuntimeError, ValueError) as exc:
                raise AlignmentError(f"pocketsphinx failed: {exc}") from exc
        if alignment is None:
            raise AlignmentError("pocketsphinx found no alignment")
        phones: Phones = []
        for word in alignment:
            for seg in word:
                start = seg.start * FRAME_S
                phones.append(
                    (normalize_phone(seg.name, "pocketsphinx"), start, start + seg.duration * FRAME_S)
                )
        if not any(p != SILENCE for p, _, _ in phones):
            raise AlignmentError("alignment has no speech")
        return phones

    def _run(self, decoder: Any, data: bytes, words: list[str]) -> Any:
        if decoder is not self._decoder:
            for word in set(words):  # the wide decoder needs the compounds taught to the first one
                if decoder.lookup_word(word) is None and self._decoder.lookup_word(word):
                    decoder.add_word(word, self._decoder.lookup_word(word), True)
        decoder.set_align_text(" ".join(words))
        decoder.start_utt()
        decoder.process_raw(data, full_utt=True)
        decoder.end_utt()
        decoder.set_alignment()
        decoder.start_utt()
        decoder.process_raw(data, full_utt=True)
        decoder.end_utt()
        return decoder.get_alignment()


@dataclass(frozen=True)
class TimingCheck:
    """How well an engine's phone timings agree with the aligner's."""

    median_error_s: float
    p95_error_s: float
    matched: int
    reference_phones: int
    offset_s: float = 0.0  # median signed (aligner - engine) boundary difference: a voice's systematic bias

    @property
    def match_ratio(self) -> float:
        """Fraction of the engine's speech phones that the aligner's sequence matched."""
        return self.matched / max(1, self.reference_phones)


def _match(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Index pairs of equal labels on a minimum-edit-distance path between two phone sequences."""
    n, m = len(a), len(b)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = cost[i - 1, j - 1] + (0 if a[i - 1] == b[j - 1] else 1)
            cost[i, j] = min(sub, cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    pairs: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1] and cost[i, j] == cost[i - 1, j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j - 1] + 1:
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def compare_timings(reference: Phones, aligned: Phones) -> TimingCheck:
    """Median/p95 absolute boundary error over speech phones matched between two segmentations.

    Pronunciations differ between engines and the aligner's dictionary, so the two sequences are
    matched by edit distance and only boundaries of matched phones are compared.
    """
    ref = [seg for seg in reference if seg[0] != SILENCE]
    ali = [seg for seg in aligned if seg[0] != SILENCE]
    pairs = _match([p for p, _, _ in ref], [p for p, _, _ in ali])
    signed = [ali[j][k] - ref[i][k] for i, j in pairs for k in (1, 2)]
    if not signed:
        return TimingCheck(float("inf"), float("inf"), 0, len(ref), 0.0)
    errors = np.abs(signed)
    return TimingCheck(
        float(np.median(errors)),
        float(np.percentile(errors, 95)),
        len(pairs),
        len(ref),
        float(np.median(signed)),
    )
