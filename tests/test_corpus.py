"""The corpus builder: a real tiny build, its manifest, splits, reproducibility, augmentation, drops."""

from __future__ import annotations

import dataclasses
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime import augment as aug
from realtime.corpus import build as corpus_build
from realtime.corpus import cli_main, engines
from realtime.corpus.align import Aligner, compare_timings
from realtime.corpus.build import TEST_VOICES, Job, clean_phones, process
from realtime.phones import PHONES, SILENCE

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")


def _rows(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    corpus_build.build(out, seed=0, size="tiny", jobs=2, progress=False)
    return out


def test_tiny_manifest_rows_are_valid(tiny: Path) -> None:
    rows = _rows(tiny)
    assert len(rows) >= 10
    keys = {
        "id",
        "split",
        "source",
        "voice",
        "speaker",
        "lang",
        "wav",
        "duration",
        "phones",
        "text",
        "augment",
    }
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert keys <= set(row)
        assert row["split"] in ("train", "val", "test")
        assert row["source"] in corpus_build.SOURCES
        with wave.open(str(tiny / row["wav"]), "rb") as handle:
            assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (16000, 1, 2)
            n = handle.getnframes()
            pcm = np.frombuffer(handle.readframes(n), dtype="<i2")
        assert abs(n / 16000 - row["duration"]) < 1e-3
        assert np.abs(pcm).max() > 100
        segs = row["phones"]
        assert segs[0][1] == 0.0
        assert abs(segs[-1][2] - row["duration"]) < 1e-3
        for (p, s, e), nxt in zip(segs, [*segs[1:], None], strict=True):
            assert p in PHONES
            assert e > s
            if nxt is not None:
                assert abs(nxt[1] - e) < 1e-6  # contiguous, monotonic
        assert any(p != SILENCE for p, _, _ in segs)


def test_tiny_covers_sources_and_augments(tiny: Path) -> None:
    rows = _rows(tiny)
    sources = {r["source"] for r in rows}
    for source in corpus_build.SOURCES:
        if engines.available(source):
            assert source in sources, source
    assert any(r["augment"] for r in rows)
    assert all(r["augment"] is None for r in rows if r["split"] == "test")


def test_splits_hold_out_whole_voices(tiny: Path) -> None:
    rows = _rows(tiny)
    splits_by_voice: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        splits_by_voice.setdefault((row["source"], row["voice"]), set()).add(row["split"])
    for voice, splits in splits_by_voice.items():
        if voice in TEST_VOICES or voice[0] == "allison":
            assert splits == {"test"}, voice
        else:
            assert "test" not in splits, voice
    assert {r["split"] for r in rows if r["source"] == "allison"} <= {"test"}


def test_same_seed_same_corpus_and_atomic_publish(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    sources = ["flite", "festvox_ru"]
    corpus_build.build(out, seed=0, size="tiny", jobs=1, progress=False, sources=sources)
    first = out.resolve()
    manifest = (out / "manifest.jsonl").read_bytes()
    rows = _rows(out)
    assert rows and any(r["augment"] for r in rows)
    # Same seed with a different worker count: byte-identical manifest and audio.
    corpus_build.build(out, seed=0, size="tiny", jobs=2, progress=False, sources=sources)
    assert (out / "manifest.jsonl").read_bytes() == manifest
    for row in rows:
        assert (out / row["wav"]).read_bytes() == (first / row["wav"]).read_bytes()
    assert out.is_symlink() and out.resolve() != first
    assert (first / "manifest.jsonl").exists()  # the previous build stays readable
    assert not list(tmp_path.glob(".corpus.tmp-*"))


def test_different_seed_differs() -> None:
    a = corpus_build.plan(0, "tiny", ["flite"])
    b = corpus_build.plan(1, "tiny", ["flite"])
    assert [j.text for j in a] != [j.text for j in b] or [j.params for j in a] != [j.params for j in b]


def test_extra_training_utterances_leave_test_and_val_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    base = corpus_build.SizeSpec(
        per_tts_voice=4, festvox_ru=0, allison=0, augment_fraction=0.5, val_fraction=0.3
    )
    more = dataclasses.replace(base, extra_train_per_tts_voice=3)
    monkeypatch.setitem(corpus_build.SIZES, "base", base)
    monkeypatch.setitem(corpus_build.SIZES, "more", more)
    a = corpus_build.plan(0, "base", ["flite"])
    b = corpus_build.plan(0, "more", ["flite"])
    assert b[: len(a)] == a  # every job of the smaller plan, test and val included, is unchanged
    extra = b[len(a) :]
    train_voices = {j.voice for j in a if j.split != "test"}
    assert len(extra) == 3 * len(train_voices) and {j.voice for j in extra} == train_voices
    assert all(j.split == "train" and (j.source, j.voice) not in TEST_VOICES for j in extra)
    assert len({j.id for j in b}) == len(b)
    assert corpus_build.plan(0, "more", ["flite"]) == b  # reproducible


def test_disagreeing_timings_are_dropped(tmp_path: Path) -> None:
    job = Job(
        "flite-rms-x", "flite", "rms", "flite-rms", "en", "train", "Bob bought a maple boat by the pool."
    )
    speech = engines.flite(job.text, "rms", tmp_path)
    aligner = corpus_build._LazyAligner()
    good = process(job, speech, tmp_path / "out", aligner)
    assert good.dropped is None and good.boundary_error_s is not None and good.boundary_error_s < 0.04
    assert good.rows and (tmp_path / "out" / good.rows[0]["wav"]).exists()
    # Same audio, timings stretched by 40%: the aligner disagrees and the utterance is dropped.
    warped = engines.Speech(speech.pcm, [(p, 1.4 * s, 1.4 * e) for p, s, e in speech.phones or []])
    bad = process(job, warped, tmp_path / "out2", aligner)
    assert bad.dropped is not None and bad.dropped.startswith("timing check")
    assert not bad.rows


def test_unknown_phone_drops_utterance(tmp_path: Path) -> None:
    job = Job("flite-rms-y", "flite", "rms", "flite-rms", "en", "train", "hello")
    speech = engines.flite("hello there", "rms", tmp_path)
    broken = engines.Speech(speech.pcm, [("qq", 0.0, 0.5), *(speech.phones or [])[1:]])
    result = process(job, broken, tmp_path / "out", corpus_build._LazyAligner())
    assert result.dropped == "unknown phone: 'qq' (flite)"


def test_aligner_agrees_with_flite(tmp_path: Path) -> None:
    from realtime.corpus.build import _normalize

    speech = engines.flite("The quick brown fox jumps over the lazy dog.", "slt", tmp_path)
    ref = _normalize(speech.phones or [], "flite")
    aligned = Aligner().align(speech.pcm, "the quick brown fox jumps over the lazy dog".split())
    check = compare_timings(ref, aligned)
    assert check.match_ratio > 0.8
    assert check.median_error_s < 0.03


def test_clean_phones_makes_contiguous_cover() -> None:
    segs = clean_phones([("sil", 0.0, 0.1), ("sil", 0.1, 0.2), ("aa", 0.25, 0.5), ("b", 0.5, 0.5)], 1.0)
    assert segs == [("sil", 0.0, 0.25), ("aa", 0.25, 0.5), ("sil", 0.5, 1.0)]
    assert clean_phones([("aa", 0.0, 2.0)], 1.0) == [("aa", 0.0, 1.0)]


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["build", "--sources", "klatt"]) == 2
    assert "unknown source" in capsys.readouterr().err
    assert cli_main(["build", "--jobs", "0"]) == 2
    with pytest.raises(SystemExit):
        cli_main(["build", "--size", "huge"])


# --- augmentation -------------------------------------------------------------------------------------


def _speechlike(seconds: float = 1.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    env = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float64)  # syllable-like on/off
    return (0.3 * env * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 900 * t + 1)).astype(np.float32)


@pytest.mark.parametrize("kind", [k for k in aug.KINDS if k != "rate"])
def test_augment_keeps_length(kind: str) -> None:
    x = _speechlike()
    y, scale = aug.augment(x, 16000, np.random.default_rng(0), kinds=[kind])
    assert y.shape == x.shape and y.dtype == np.float32 and scale == 1.0
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert not np.allclose(y, x)


def test_augment_rate_scales_time() -> None:
    x = (_speechlike() * 20000).astype(np.int16)
    result = aug.apply(x, 16000, np.random.default_rng(3), kinds=["rate"])
    assert result.pcm.dtype == np.int16
    assert abs(result.time_scale - len(result.pcm) / len(x)) < 1e-9
    assert result.time_scale != 1.0 and result.description.startswith("rate(")
    # The on/off envelope moves with the time scale: onsets land where scaled phone times say.
    env_in = np.abs(x.astype(np.float32)) > 1000
    env_out = np.abs(result.pcm.astype(np.float32)) > 1000
    first_on_in = np.argmax(env_in[100:] & ~env_in[99:-1]) + 100
    first_on_out = np.argmax(env_out[100:] & ~env_out[99:-1]) + 100
    assert abs(first_on_out - first_on_in * result.time_scale) < 0.01 * 16000


def test_opus_round_trip_is_aligned() -> None:
    x = _speechlike()
    y = aug.opus_round_trip(x, 16000, 24000)
    assert y.shape == x.shape
    mid = slice(4000, len(x) - 4000)
    lags = range(-80, 81)
    corr = [float(np.dot(x[mid], np.roll(y, -lag)[mid])) for lag in lags]
    assert abs(list(lags)[int(np.argmax(corr))]) <= 16  # within 1 ms
    assert np.corrcoef(x[mid], y[mid])[0, 1] > 0.8


def test_augment_random_kinds_reproducible_and_validated() -> None:
    x = _speechlike()
    a = aug.apply(x, 16000, np.random.default_rng(7))
    b = aug.apply(x, 16000, np.random.default_rng(7))
    assert a.description == b.description and np.array_equal(a.pcm, b.pcm)
    with pytest.raises(ValueError, match="unknown augmentation"):
        aug.augment(x, 16000, np.random.default_rng(0), kinds=["chorus"])
    with pytest.raises(ValueError, match="mono"):
        aug.augment(np.zeros((2, 100), np.float32), 16000, np.random.default_rng(0))
    silent, _ = aug.augment(
        np.zeros(16000, np.float32), 16000, np.random.default_rng(0), kinds=["noise", "opus"]
    )
    assert np.isfinite(silent).all()


def test_biased_voice_keeps_aligner_timings(tmp_path: Path) -> None:
    if not engines.voice_available("mbrola", "us3"):
        pytest.skip("mbrola us3 not installed")
    assert ("mbrola", "us3") in corpus_build.ALIGNER_TIMED_VOICES
    line = "Bob bought a maple boat by the pool."
    job = Job("mbrola-us3-x", "mbrola", "us3", "mbrola-us3", "en", "test", line)
    speech = engines.mbrola(line, "us3", tmp_path)
    aligner = corpus_build._LazyAligner()
    result = process(job, speech, tmp_path / "out", aligner)
    assert result.dropped is None
    kept = result.rows[0]["phones"]
    duration = result.rows[0]["duration"]
    aligned = aligner.get().align(speech.pcm, line.lower().strip(".").split())
    aligned = clean_phones(corpus_build.trim_silent_edges(aligned, speech.pcm), duration)
    assert kept == [list(seg) for seg in aligned]
    own = clean_phones(corpus_build._normalize(speech.phones or [], "mbrola"), duration)
    assert kept != [list(seg) for seg in own]


def test_trim_silent_edges_gives_pauses_back() -> None:
    t = np.arange(int(1.0 * 16000)) / 16000
    pcm = np.where((t >= 0.2) & (t < 0.6), 8000 * np.sin(2 * np.pi * 200 * t), 0).astype(np.int16)
    trimmed = corpus_build.trim_silent_edges([("sil", 0.0, 0.1), ("aa", 0.1, 0.9), ("sil", 0.9, 1.0)], pcm)
    assert trimmed[1][0] == "aa"
    assert abs(trimmed[1][1] - 0.2) <= 0.011 and abs(trimmed[1][2] - 0.6) <= 0.011
    # A stop's closure is silent by nature: left alone.
    kept = corpus_build.trim_silent_edges([("sil", 0.0, 0.1), ("p", 0.1, 0.25), ("aa", 0.25, 0.9)], pcm)
    assert kept[1] == ("p", 0.1, 0.25)
    cover = clean_phones(trimmed, 1.0)
    assert cover[0] == ("sil", 0.0, trimmed[1][1]) and cover[-1][0] == "sil"
