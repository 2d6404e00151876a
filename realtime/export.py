"""ONNX export of the motion model (opset 17) and the torch-vs-onnxruntime parity check.

Two graphs, both with dynamic batch and time axes:

* ``audio_encoder.onnx``: ``windows`` (n, audio_frames, n_mels) -> ``embedding`` (n, hidden);
* ``denoiser.onnx``: one velocity evaluation ``x, t, ctx, mask, audio`` -> ``v`` (the sampler's step);
* ``denoiser_int8.onnx``: the same graph with int8 weights (dynamic quantization), which
  onnxruntime runs on CPU in about half the time.

The sampler, guidance and streaming state stay in Python (:mod:`realtime.sampling`,
:mod:`realtime.generator`), so both backends share them exactly.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from realtime.model import Block, MotionDenoiser

OPSET = 17


class _MatmulBlock(Block):
    """A :class:`~realtime.model.Block` whose time convolution is one MatMul over shifted copies.

    The same weights and, up to float rounding, the same result. onnxruntime runs a Conv1d over a
    9-frame streaming window through its general convolution path, which cost more than a third of
    the denoiser call; as a matmul on ``(frames, kernel * hidden)`` it is one small GEMM, and the
    transposes around it go too.
    """

    def __init__(self, block: Block) -> None:
        out_ch, in_ch, k = block.conv.weight.shape
        super().__init__(int(in_ch), int(k))
        self.load_state_dict(block.state_dict())
        self.pad = int(block.conv.padding[0])
        # out[t, o] = sum_i sum_c W[o, c, i] * padded[t + i, c]  ->  rows ordered (i, c)
        weight = block.conv.weight.detach().permute(2, 1, 0).reshape(k * in_ch, out_ch)
        self.register_buffer("conv_matrix", weight.clone())

    def time_conv(self, y: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(y, (0, 0, self.pad, self.pad))
        # shifted copies by constant slice bounds (an end counted from the back): no shape arithmetic
        # in the graph, whose small nodes each cost about as much as a small matmul
        last = self.conv.kernel_size[0] - 1
        cols = torch.cat([padded[:, i : (i - last) or None] for i in range(last + 1)], dim=-1)
        return cols @ self.conv_matrix + self.conv.bias


class _ExportDenoiser(MotionDenoiser):
    """A :class:`~realtime.model.MotionDenoiser` whose blocks' FiLM layers run as one Linear.

    The same weights and result. Each block's own FiLM (a Linear, a split into scale and shift
    traced as shape arithmetic, and ``1 + scale``) was 8 small graph nodes; here all blocks'
    come from one matmul split at constant offsets, with the 1 folded into the bias. A streamed
    denoiser call (9 frames) takes 0.92x the time at batch 1 and 2 (docs/bench/motion.md).
    Built from copies of ``net``'s weights; ``net`` itself is left as it is.
    """

    def __init__(self, net: MotionDenoiser) -> None:
        super().__init__(net.config)
        self.load_state_dict(net.state_dict())
        self.blocks = torch.nn.ModuleList(_MatmulBlock(b) for b in net.blocks)
        hidden = net.config.hidden
        ones = torch.cat([torch.ones(hidden), torch.zeros(hidden)])  # the 1 of (1 + scale)
        weight = torch.cat([b.film.weight.detach() for b in net.blocks])
        bias = torch.cat([b.film.bias.detach() + ones for b in net.blocks])
        self.films = torch.nn.Linear(hidden, weight.shape[0])
        with torch.no_grad():
            self.films.weight.copy_(weight)
            self.films.bias.copy_(bias)

    def modulations(self, temb: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = torch.split(self.films(temb)[:, None, :], self.config.hidden, dim=-1)
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(len(self.blocks))]


def _for_export(net: MotionDenoiser) -> MotionDenoiser:
    """A copy of ``net`` in the form onnxruntime runs fastest (same weights)."""
    return _ExportDenoiser(net).eval()


class _AudioEncoder(torch.nn.Module):
    def __init__(self, net: MotionDenoiser) -> None:
        super().__init__()
        self.net = net

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.net.encode_audio(windows)


def export_onnx(net: MotionDenoiser, folder: str | Path) -> tuple[Path, Path, Path]:
    """Write ``audio_encoder.onnx``, ``denoiser.onnx`` and ``denoiser_int8.onnx`` for ``net``."""
    from realtime.generator import ONNX_AUDIO, ONNX_DENOISER

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    cfg = net.config
    windows = torch.randn(3, cfg.audio_frames, cfg.n_mels)
    b, t = 2, 9
    args = (
        torch.randn(b, t, cfg.n_channels),
        torch.rand(b),
        torch.randn(b, t, cfg.n_channels),
        torch.ones(b, t, 1),
        torch.randn(b, t, cfg.hidden),
    )
    audio_path, den_path = folder / ONNX_AUDIO, folder / ONNX_DENOISER
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _AudioEncoder(net),
            (windows,),
            str(audio_path),
            input_names=["windows"],
            output_names=["embedding"],
            dynamic_axes={"windows": {0: "n"}, "embedding": {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            _for_export(net),
            args,
            str(den_path),
            input_names=["x", "t", "ctx", "mask", "audio"],
            output_names=["v"],
            dynamic_axes={
                "x": {0: "batch", 1: "time"},
                "t": {0: "batch"},
                "ctx": {0: "batch", 1: "time"},
                "mask": {0: "batch", 1: "time"},
                "audio": {0: "batch", 1: "time"},
                "v": {0: "batch", 1: "time"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return audio_path, den_path, quantize_denoiser(folder)


def quantize_denoiser(folder: str | Path) -> Path:
    """Write ``denoiser_int8.onnx`` from ``denoiser.onnx``: int8 weights, activations quantized per call.

    Per output channel, every MatMul and Gemm. A streamed call (9 frames) takes about half the CPU
    time; the audio encoder, a twentieth of the model's time, stays float. The output is
    deterministic, so re-running this on the shipped float graph reproduces the shipped file.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from realtime.generator import ONNX_DENOISER, ONNX_DENOISER_INT8

    folder = Path(folder)
    out = folder / ONNX_DENOISER_INT8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run shape-inference pre-processing first does not apply
    try:
        quantize_dynamic(
            folder / ONNX_DENOISER,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        root.setLevel(level)
    return out


def parity(folder: str | Path, seed: int = 0, seconds: float = 4.0) -> dict[str, float]:
    """Max abs differences torch vs onnxruntime (float graphs): random inputs, and a full sampled sequence."""
    from realtime.generator import MotionControls, MotionModel, generate_motion

    folder = Path(folder)
    torch_model = MotionModel.load(folder, backend="torch")
    onnx_model = MotionModel.load(folder, backend="onnx", precision="fp32")
    cfg = torch_model.config
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((17, cfg.audio_frames, cfg.n_mels)).astype(np.float32) - 8.0
    enc = float(np.abs(torch_model.encode_audio(windows) - onnx_model.encode_audio(windows)).max())
    b, t = 3, cfg.context_frames + 5
    x = rng.standard_normal((b, t, cfg.n_channels)).astype(np.float32)
    tt = rng.random(b).astype(np.float32)
    ctx = rng.standard_normal((b, t, cfg.n_channels)).astype(np.float32)
    mask = (rng.random((b, t, 1)) < 0.5).astype(np.float32)
    audio = rng.standard_normal((b, t, cfg.hidden)).astype(np.float32)
    den = float(
        np.abs(
            torch_model.backend.velocity(x, tt, ctx, mask, audio)
            - onnx_model.backend.velocity(x, tt, ctx, mask, audio)
        ).max()
    )
    # a full sequence: speech-like noise bursts through the whole sampler (4 steps, guidance on)
    sr = 16000
    n = int(seconds * sr)
    env = (np.sin(np.arange(n) / sr * 2 * np.pi * 3.0) > 0).astype(np.float32)
    pcm = (0.1 * env * rng.standard_normal(n)).astype(np.float32)
    controls = MotionControls(dynamic_scale=1.5, seed=seed)
    seq = float(
        np.abs(
            generate_motion(torch_model, pcm, sr, controls=controls)
            - generate_motion(onnx_model, pcm, sr, controls=controls)
        ).max()
    )
    return {"audio_encoder": enc, "denoiser": den, "sequence": seq}
