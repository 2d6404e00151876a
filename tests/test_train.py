"""``avatar train --tiny`` end to end on a three-utterance corpus: weights, ONNX, plot, parity."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from realtime.phones import normalize_phone

TEXTS = ("Bob bought a big blue map.", "We owe you a few more apples.", "Please move the boat away.")


def _flite_corpus(root: Path) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed")
    (root / "wav").mkdir(parents=True)
    rows = []
    for i, text in enumerate(TEXTS * 2):
        voice = ("rms", "slt")[i % 2]
        wav = f"wav/{i}.wav"
        out = subprocess.run(
            ["flite", "-voice", voice, "-psdur", "-t", text, "-o", str(root / wav)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        phones, start = [], 0.0
        for token in out.split():
            label, _, end = token.rpartition(":")
            phones.append([normalize_phone(label, "flite"), start, float(end)])
            start = float(end)
        split = "val" if i == 5 else "train"
        rows.append({"id": f"t{i}", "split": split, "source": "flite", "voice": voice, "speaker": voice,
                     "lang": "en", "wav": wav, "duration": start, "phones": phones, "text": text, "augment": None})  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_tiny_training_produces_a_working_model(tmp_path: Path) -> None:
    from realtime.generator import MotionModel, MotionStream, generate_motion
    from realtime.train import cli_main

    corpus = _flite_corpus(tmp_path / "corpus")
    out = tmp_path / "model"
    assert (
        cli_main(["--corpus", str(corpus), "--out", str(out), "--tiny", "--seed", "1", "--workers", "1"]) == 0
    )
    for name in (
        "config.json",
        "motion.pt",
        "audio_encoder.onnx",
        "denoiser.onnx",
        "denoiser_int8.onnx",
        "loss.png",
        "loss_history.json",
    ):
        assert (out / name).is_file(), name
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["steps"] > 0 and meta["training"]["tiny"] is True
    # the step cap, not the clock, ended the run (the weights do not depend on machine speed)
    assert meta["training"]["steps"] == meta["training"]["step_cap"] and not meta["training"]["stopped_early"]
    assert max(meta["training"]["onnx_parity_max_abs"].values()) < 1e-3
    history = json.loads((out / "loss_history.json").read_text())
    assert np.isfinite(history["loss"]).all()
    assert np.mean(history["loss"][-10:]) < np.mean(history["loss"][:10])  # it learns something
    # fine-tuning starts from those weights (same architecture) and records where it started; sampler
    # settings saved with older weights (another default_steps, no mouth_first_estimate) do not matter
    old = json.loads((out / "config.json").read_text())
    old["config"]["default_steps"] = 4
    old["config"].pop("mouth_first_estimate", None)
    (out / "config.json").write_text(json.dumps(old))
    out2 = tmp_path / "model2"
    args = ["--corpus", str(corpus), "--out", str(out2), "--tiny", "--seed", "2", "--workers", "1"]
    # the fine-tune also trains on rollout contexts (the model's own streamed mouth as context)
    assert cli_main([*args, "--init", str(out), "--rollout", "1"]) == 0
    meta2 = json.loads((out2 / "config.json").read_text())
    assert meta2["training"]["init"] == str(out) and meta2["training"]["init_training"]["seed"] == 1
    assert meta2["training"]["rollout"] == 1.0
    assert meta2["config"]["default_steps"] == 4  # the starting weights' sampler settings carry over
    for backend, precision in (("torch", "auto"), ("onnx", "fp32"), ("onnx", "int8")):
        model = MotionModel.load(out, backend=backend, precision=precision)
        motion = generate_motion(model, np.zeros(8000, np.float32), 16000)
        assert motion.shape == (13, 22) and np.isfinite(motion).all()
        stream = MotionStream(model)
        assert len(stream.push(np.zeros(8000, np.float32)) + stream.flush()) == 13


def test_train_reports_a_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from realtime.train import cli_main

    assert cli_main(["--corpus", str(tmp_path / "nothing"), "--out", str(tmp_path / "m"), "--tiny"]) == 2
    assert "manifest" in capsys.readouterr().out


def test_closure_frames_mark_bilabial_segments() -> None:
    from realtime.train import closure_frames

    phones = [["sil", 0.0, 0.1], ["m", 0.1, 0.2], ["aa", 0.2, 0.4], ["p", 0.4, 0.44], ["sil", 0.44, 0.6]]
    assert np.flatnonzero(closure_frames(phones, 15, 25)).tolist() == [3, 4, 10]  # t = 0.12, 0.16, 0.40 s


def test_rollout_context_replaces_only_the_context_mouth() -> None:
    """The rollout writes the model's own streamed mouth (within 0..1) into the context frames only."""
    import torch

    from realtime.model import MotionConfig, MotionDenoiser
    from realtime.motion import MOUTH_CHANNELS
    from realtime.train import rollout_context

    torch.manual_seed(0)
    cfg = MotionConfig(hidden=32, audio_hidden=64, n_layers=2)
    net = MotionDenoiser(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x1, audio = torch.randn(4, 11, cfg.n_channels), torch.randn(4, 11, cfg.hidden)
    est = rollout_context(net, x1, audio, net.null_audio.detach(), 9, 0.3, 1.2)
    nm = len(MOUTH_CHANNELS)
    assert torch.equal(est[:, 9:], x1[:, 9:]) and torch.equal(est[..., nm:], x1[..., nm:])
    assert (est[:, :9, :nm] - x1[:, :9, :nm]).abs().min() > 0
    mouth = net.denormalize(est)[:, :9, :nm]
    assert mouth.min() >= -1e-5 and mouth.max() <= 1 + 1e-5
