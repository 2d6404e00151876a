"""Torch vs onnxruntime parity of the shipped motion model and of a fresh export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from realtime.config import ROOT
from realtime.export import export_onnx, parity, quantize_denoiser
from realtime.generator import (
    CONFIG,
    ONNX_DENOISER,
    ONNX_DENOISER_INT8,
    WEIGHTS,
    MotionControls,
    MotionModel,
    generate_motion,
    stream_motion,
)
from realtime.model import MotionConfig, MotionDenoiser
from realtime.targets import mouth_aperture

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
    # dynamic axes: other batch and window sizes than the export example, float and int8 graphs
    for precision in ("fp32", "int8"):
        model = MotionModel.load(tmp_path, backend="onnx", precision=precision)
        assert model.backend_name == ("onnx-int8" if precision == "int8" else "onnx")
        x = np.random.default_rng(0).standard_normal((5, 40, cfg.n_channels)).astype(np.float32)
        v = model.backend.velocity(x, np.full(5, 0.3, np.float32), x, np.zeros((5, 40, 1), np.float32),
                                   np.zeros((5, 40, cfg.hidden), np.float32))  # fmt: skip
        assert v.shape == x.shape and np.isfinite(v).all()


def test_shipped_int8_denoiser_is_the_quantized_float_graph(tmp_path: Path) -> None:
    """Reproducible: quantizing the shipped float graph again gives the shipped int8 file, byte for byte."""
    (tmp_path / ONNX_DENOISER).write_bytes((MODEL_DIR / ONNX_DENOISER).read_bytes())
    assert quantize_denoiser(tmp_path).read_bytes() == (MODEL_DIR / ONNX_DENOISER_INT8).read_bytes()


def test_int8_denoiser_moves_the_mouth_as_the_float_one(speech_16k: np.ndarray) -> None:
    """int8 weights change the motion far less than another seed does (the lip-sync evaluation of
    both is in docs/bench/eval.md). Measured on this sentence: mouth aperture r 0.9998 whole file,
    0.992 streamed (a stream feeds its own output back, so small differences can shift a gesture)."""
    fp32 = MotionModel.load(MODEL_DIR, backend="onnx", precision="fp32")
    int8 = MotionModel.load(MODEL_DIR, backend="onnx", precision="int8")
    controls = MotionControls(seed=0)
    for make, least in ((generate_motion, 0.995), (stream_motion, 0.97)):
        a, b = (mouth_aperture(make(m, speech_16k, 16000, controls=controls)) for m in (fp32, int8))
        other_seed = mouth_aperture(make(fp32, speech_16k, 16000, controls=MotionControls(seed=1)))
        r, r_seed = np.corrcoef(a, b)[0, 1], np.corrcoef(a, other_seed)[0, 1]
        assert r > least and r > r_seed, (make.__name__, r, r_seed)


def test_cpu_hosts_run_the_int8_denoiser_and_gpus_the_float_one() -> None:
    model = MotionModel.load(MODEL_DIR, backend="onnx")
    on_gpu = "CUDAExecutionProvider" in model.backend.audio.get_providers()
    assert model.backend_name == ("onnx" if on_gpu else "onnx-int8")
    assert MotionModel.load(MODEL_DIR, backend="onnx", precision="fp32").backend_name == "onnx"


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
