"""Torch vs onnxruntime parity of the shipped motion model and of a fresh export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from realtime.config import ROOT
from realtime.export import export_onnx, parity
from realtime.generator import CONFIG, WEIGHTS, MotionModel
from realtime.model import MotionConfig, MotionDenoiser

MODEL_DIR = ROOT / "models" / "motion"


def test_shipped_onnx_matches_the_shipped_weights() -> None:
    diffs = parity(MODEL_DIR)
    assert diffs["audio_encoder"] < 1e-4
    assert diffs["denoiser"] < 1e-4
    assert diffs["sequence"] < 1e-3  # a whole sampled sequence, errors accumulate over the windows


def test_shipped_files_agree_with_the_model_card() -> None:
    meta = json.loads((MODEL_DIR / CONFIG).read_text())
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    assert f"{meta['training']['parameters']:,}" in card
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert total <= 20 * 1024 * 1024


def test_fresh_export_has_parity_with_random_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = MotionConfig(hidden=48, audio_hidden=64, n_layers=2)
    net = MotionDenoiser(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised output layers would make parity trivial
            p.add_(0.05 * torch.randn_like(p))
    torch.save(net.state_dict(), tmp_path / WEIGHTS)
    (tmp_path / CONFIG).write_text(json.dumps({"config": cfg.to_dict()}))
    export_onnx(net, tmp_path)
    diffs = parity(tmp_path, seconds=2.0)
    assert max(diffs.values()) < 1e-3, diffs
    # dynamic axes: other batch and window sizes than the export example
    model = MotionModel.load(tmp_path, backend="onnx")
    x = np.random.default_rng(0).standard_normal((5, 40, cfg.n_channels)).astype(np.float32)
    v = model.backend.velocity(x, np.full(5, 0.3, np.float32), x, np.zeros((5, 40, 1), np.float32),
                               np.zeros((5, 40, cfg.hidden), np.float32))  # fmt: skip
    assert v.shape == x.shape


def test_shipped_denoiser_has_its_convolutions_as_matmuls() -> None:
    """The export writes each block's time convolution as one MatMul (same weights): onnxruntime's
    Conv made a 9-frame streaming call about a quarter slower. A re-export must keep that form."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(MODEL_DIR / "denoiser.onnx")).graph.node}
    assert "Conv" not in ops and "MatMul" in ops


def test_shipped_denoiser_computes_every_film_in_one_matmul() -> None:
    """The export computes all blocks' FiLM (time modulation) in one Linear split at constant
    offsets; per-block FiLM layers traced as 8 small nodes each made a streamed call slower."""
    import onnx

    ops = [node.op_type for node in onnx.load(str(MODEL_DIR / "denoiser.onnx")).graph.node]
    assert ops.count("Split") == 1 and "Shape" not in ops
    assert ops.count("Gemm") == 3  # the FiLM and the two layers of the time embedding's MLP
