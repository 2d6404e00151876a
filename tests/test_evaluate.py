"""Lip-sync evaluation: metric functions on constructed signals, the baseline on real speech, the CLI."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.evaluate import (
    balanced_accuracy,
    best_threshold,
    cli_main,
    closure_hits,
    estimate_lag_ms,
    frame_labels,
    lag_and_peak,
    load_manifest,
    loudness_aperture,
    pearson,
    roc_auc,
    score,
)
from realtime.motion import MOUTH_CHANNELS
from realtime.targets import mouth_aperture, mouth_targets

SENTENCE = [
    ("sil", 0.3), ("p", 0.08), ("l", 0.05), ("iy", 0.12), ("z", 0.1), ("b", 0.08), ("r", 0.05),
    ("ih", 0.08), ("ng", 0.1), ("m", 0.07), ("iy", 0.1), ("ah", 0.05), ("b", 0.07), ("ah", 0.1),
    ("m", 0.07), ("p", 0.07), ("iy", 0.12), ("p", 0.09), ("ih", 0.08), ("l", 0.1), ("ow", 0.15),
    ("sil", 0.4),
]  # fmt: skip


def _phones(scale: float = 1.0, shift: float = 0.0) -> list[list[object]]:
    out, t = [], shift
    for p, d in SENTENCE:
        out.append([p, t, t + d * scale])
        t += d * scale
    return out


def _smooth_signal(t: np.ndarray) -> np.ndarray:
    return (
        np.sin(2 * np.pi * 1.3 * t)
        + 0.6 * np.sin(2 * np.pi * 3.1 * t + 1.0)
        + 0.3 * np.sin(2 * np.pi * 0.4 * t)
    )


def test_balanced_accuracy() -> None:
    y = np.array([1, 1, 1, 1, 0, 0], bool)
    assert balanced_accuracy(y, y) == 1.0
    assert balanced_accuracy(y, ~y) == 0.0
    assert balanced_accuracy(y, np.ones(6, bool)) == 0.5  # all "open": chance, whatever the imbalance
    assert balanced_accuracy(y, np.array([1, 1, 0, 0, 0, 1], bool)) == pytest.approx(0.5 * (0.5 + 0.5))
    assert np.isnan(balanced_accuracy(np.ones(3, bool), np.ones(3, bool)))
    with pytest.raises(ValueError, match="differ"):
        balanced_accuracy(y, y[:3])


def test_roc_auc() -> None:
    y = np.array([0, 0, 1, 1, 0, 1], bool)
    assert roc_auc(y, y.astype(float)) == 1.0  # a perfect predictor
    assert roc_auc(y, -y.astype(float)) == 0.0
    assert roc_auc(y, np.zeros(6)) == 0.5  # ties count half
    # Against a brute-force pair count on random scores.
    rng = np.random.default_rng(0)
    yy = rng.uniform(size=300) < 0.3
    s = np.round(rng.normal(size=300) + yy, 1)
    pos, neg = s[yy], s[~yy]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert roc_auc(yy, s) == pytest.approx(brute)
    assert np.isnan(roc_auc(np.ones(4, bool), np.arange(4.0)))


def test_best_threshold_separates() -> None:
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    s = np.array([0.0, 0.02, 0.05, 0.3, 0.5, 0.7])
    thr = best_threshold(y, s)
    assert 0.05 < thr <= 0.3
    assert balanced_accuracy(y, s >= thr) == 1.0
    with pytest.raises(ValueError):
        best_threshold(np.ones(3, bool), np.arange(3.0))


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("shift_ms", [80.0, -40.0, 30.0, 0.0])
def test_lag_of_a_shifted_signal(fps: int, shift_ms: float) -> None:
    t = np.arange(0, 8.0, 1 / fps)
    target = _smooth_signal(t)
    late = _smooth_signal(t - shift_ms / 1000)  # the same signal, shift_ms later
    lag = estimate_lag_ms(late, target, fps)
    assert lag == pytest.approx(shift_ms, abs=4.0)


def test_lag_pooled_over_utterances_and_on_targets() -> None:
    fps = 25
    # Target apertures from phones, and the same phones 80 ms later: the mouth is 80 ms late.
    targets = [mouth_aperture(mouth_targets(_phones(s), 80, fps)) for s in (0.8, 1.0, 1.3)]
    late = [mouth_aperture(mouth_targets(_phones(s, shift=0.08), 80, fps)) for s in (0.8, 1.0, 1.3)]
    assert estimate_lag_ms(late, targets, fps) == pytest.approx(80.0, abs=8.0)
    assert lag_and_peak(late, targets, fps)[1] > 0.8  # a clear peak
    # Unrelated noise has a weak peak.
    rng = np.random.default_rng(1)
    assert lag_and_peak([rng.normal(size=t.size) for t in targets], targets, fps)[1] < 0.3
    assert estimate_lag_ms(targets, targets, fps) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(estimate_lag_ms(np.zeros(50), np.zeros(50), fps))


def test_pearson() -> None:
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert np.isnan(pearson(x, np.ones(10)))


def test_frame_labels_and_closure_hits() -> None:
    fps = 25
    phones = _phones()
    n = 80
    labels = frame_labels(phones, n, fps)
    # The /p/ spans 0.30-0.38 s: frame 8 (0.32 s) is inside it, frame 9 (0.36 s) is a transition.
    assert labels[8] == 0 and labels[9] == -1
    assert frame_labels(phones, n, fps, guard_s=0.0)[9] == 0
    assert (labels == 1).sum() >= 10 and (labels == 0).sum() >= 5
    target = mouth_aperture(mouth_targets(phones, n, fps))
    hits, total = closure_hits(target, phones, fps, threshold=0.08)
    assert total == sum(p[0] in ("p", "b", "m") for p in phones)
    assert hits == total
    # A mouth that never closes hits none.
    assert closure_hits(np.full(n, 0.5), phones, fps, threshold=0.08)[0] == 0


def test_oracle_scores_near_perfect() -> None:
    fps = 25
    preds, labels, phones_list = [], [], []
    for s in (0.7, 0.9, 1.0, 1.2, 1.5):
        phones = _phones(s)
        n = int(np.ceil(phones[-1][2] * fps))
        preds.append(mouth_aperture(mouth_targets(phones, n, fps)))
        labels.append(frame_labels(phones, n, fps))
        phones_list.append(phones)
    lab = np.concatenate(labels)
    pr = np.concatenate(preds)
    thr = best_threshold(lab[lab >= 0] == 1, pr[lab >= 0])
    m = score(preds, preds, labels, phones_list, fps, thr)
    assert m["balanced_accuracy"] >= 0.95
    assert m["auc"] >= 0.97
    assert m["closure_hits"] == 1.0
    assert m["lag_ms"] == pytest.approx(0.0, abs=1e-6)
    assert m["pearson"] == pytest.approx(1.0)
    # A constant "model" is at chance.
    flat = [np.full_like(p, 0.3) for p in preds]
    m = score(flat, preds, labels, phones_list, fps, thr)
    assert m["balanced_accuracy"] == 0.5 and m["auc"] == 0.5


def test_phone_means() -> None:
    from realtime.evaluate import _Collected, phone_means

    phones = _phones()
    target = mouth_aperture(mouth_targets(phones, 80, 25))
    means = phone_means(_Collected([target], [target], [], [phones], ["flite"]), 25)
    assert means["p"] < 0.02 and means["m"] < 0.02
    assert means["iy"] > 0.1 and means["ow"] > 0.2


def test_loudness_baseline_on_real_speech(speech_16k: np.ndarray) -> None:
    fps = 25
    n = int(np.ceil(len(speech_16k) / 16000 * fps))
    ap = loudness_aperture(speech_16k, 16000, n, fps)
    assert ap.shape == (n,) and ap.dtype == np.float32
    assert 0.0 <= ap.min() and ap.max() <= 1.0
    # Leading silence is closed; speech opens the "mouth" well.
    assert ap[:3].max() < 0.3
    assert np.quantile(ap, 0.9) > 0.8
    assert not loudness_aperture(np.zeros(16000), 16000, 25, fps).any()
    assert loudness_aperture(speech_16k, 16000, 0, fps).shape == (0,)


def _write_wav(path: Path, pcm: np.ndarray, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def _synthetic_corpus(root: Path) -> Path:
    """A tiny corpus whose audio loudness follows the target aperture (noise-modulated)."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True)
    lines = []
    k = 0
    for split in ("val", "test"):
        for source in ("allison", "flite"):
            for s in (0.8, 1.1):
                phones = _phones(s)
                dur = float(phones[-1][2])
                n = int(dur * 16000)
                t = np.arange(n) / 16000
                env = np.interp(
                    t,
                    np.arange(int(dur * 100)) / 100,
                    mouth_aperture(mouth_targets(phones, int(dur * 100), 100)),
                )
                pcm = 0.3 * env * rng.standard_normal(n) + 1e-4 * rng.standard_normal(n)
                wav = f"wav/u{k}.wav"
                _write_wav(root / wav, pcm.astype(np.float32))
                rec = {"id": f"u{k}", "split": split, "source": source, "voice": "v", "speaker": "s",
                       "lang": "en", "wav": wav, "duration": dur, "phones": phones, "text": "x",
                       "augment": None}  # fmt: skip
                lines.append(json.dumps(rec))
                k += 1
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_cli_without_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _synthetic_corpus(tmp_path / "corpus")
    assert len(load_manifest(corpus, "test")) == 4
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    rc = cli_main(
        ["lipsync", "--corpus", str(corpus), "--no-model", "--json", str(out_json), "--plot", str(out_png)]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "baseline" in table and "oracle" in table
    report = json.loads(out_json.read_text())
    assert set(report["groups"]) == {"real", "tts"}
    oracle = report["groups"]["real"]["oracle"]
    assert oracle["balanced_accuracy"] >= 0.95 and oracle["auc"] >= 0.97 and oracle["lag_ms"] == 0.0
    assert "oracle" in report["thresholds"]  # chosen on val
    # The baseline here is loudness built from the targets: it should be well above chance.
    assert report["groups"]["tts"]["baseline"]["auc"] > 0.8
    assert out_png.stat().st_size > 10_000


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["lipsync", "--corpus", str(tmp_path), "--no-model"]) == 2
    assert "no manifest" in capsys.readouterr().err
    (tmp_path / "manifest.jsonl").write_text('{"id": 1}\n')
    assert cli_main(["lipsync", "--corpus", str(tmp_path), "--no-model"]) == 2
    assert "bad manifest line" in capsys.readouterr().err
    corpus = _synthetic_corpus(tmp_path / "c")
    assert cli_main(["lipsync", "--corpus", str(corpus), "--model", str(tmp_path / "nope")]) == 2
    assert "no model" in capsys.readouterr().err or "not available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["nonsense"])


@pytest.mark.parametrize("stream", [False, True])
def test_evaluate_runs_a_real_model(tmp_path: Path, stream: bool) -> None:
    """Integration with the generator contract, on a small untrained model (metrics only need to exist);
    ``stream`` scores what a live session would show, frame for frame as long as the file."""
    gen = pytest.importorskip("realtime.generator")
    model_mod = pytest.importorskip("realtime.model")
    import torch

    from realtime.evaluate import evaluate

    torch.manual_seed(0)
    cfg = model_mod.MotionConfig(hidden=32, audio_hidden=32, n_layers=2)
    model = gen.MotionModel.from_module(model_mod.MotionDenoiser(cfg).eval())
    corpus = _synthetic_corpus(tmp_path / "corpus")
    report, signals = evaluate(corpus, model_dir=None, model=model, limit=1, val_limit=2, stream=stream)
    assert report["model"]["mode"] == ("stream (10 ms pushes)" if stream else "whole file")
    for group in ("real", "tts"):
        m = report["groups"][group]["model"]
        assert m["utterances"] == 1 and m["frames"] > 40
        assert 0.0 <= m["auc"] <= 1.0 and np.isfinite(m["lag_ms"])
        n = len(signals[group]["oracle"].preds[0])
        assert len(signals[group]["model"].preds[0]) == n
        # every mouth channel is scored, the rounding ones too (the aperture leaves them out)
        assert set(m["channel_r"]) == set(MOUTH_CHANNELS) and "rounding_r" in m and "rounding_auc" in m
        assert signals[group]["model"].mouth[0].shape == (n, len(MOUTH_CHANNELS))
        assert "channel_r" not in report["groups"][group]["baseline"]
    assert "model" in report["thresholds"]


def test_channel_scores() -> None:
    from realtime.evaluate import channel_scores

    rng = np.random.default_rng(0)
    target = rng.random((200, len(MOUTH_CHANNELS)))
    wrong = target.copy()
    funnel, pucker = MOUTH_CHANNELS.index("mouthFunnel"), MOUTH_CHANNELS.index("mouthPucker")
    wrong[:, [funnel, pucker]] = rng.random((200, 2))  # rounding at the wrong places
    assert channel_scores([target[:120], target[120:]], [target[:120], target[120:]])["rounding_r"] > 0.999
    got = channel_scores([wrong], [target])
    assert abs(got["rounding_r"]) < 0.2 and got["channel_r"]["jawOpen"] > 0.999
    assert got["mouth_r_mean"] < 0.9


def test_rounding_auc_scores_rounded_against_front_vowels() -> None:
    from realtime.evaluate import channel_scores, rounding_labels

    fps = 25
    phones = [["sil", 0.0, 0.2], ["uw", 0.2, 0.6], ["t", 0.6, 0.7], ["iy", 0.7, 1.1], ["w", 1.1, 1.4]]
    labels = rounding_labels(phones, 35, fps)
    assert labels[8] == 1 and labels[20] == 0 and labels[31] == 1 and labels[2] == -1 and labels[16] == -1
    rounded = np.zeros((35, len(MOUTH_CHANNELS)))
    funnel, pucker = MOUTH_CHANNELS.index("mouthFunnel"), MOUTH_CHANNELS.index("mouthPucker")
    rounded[labels == 1, funnel] = 0.6
    rounded[labels == 1, pucker] = 0.4
    assert channel_scores([rounded], [rounded], [phones], fps)["rounding_auc"] == 1.0
    spread = rounded.copy()
    spread[:, [funnel, pucker]] = 0.5 * (labels == 0)[:, None]  # rounding on /iy/ instead
    assert channel_scores([spread], [rounded], [phones], fps)["rounding_auc"] == 0.0
    assert "rounding_auc" not in channel_scores([rounded], [rounded])
