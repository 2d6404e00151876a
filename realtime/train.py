"""``avatar train``: train the motion denoiser on the corpus, save weights, ONNX and loss curves.

Data
    Utterances of the ``train`` split of ``<corpus>/manifest.jsonl`` (``val`` for the validation
    loss), each padded with 0.2-0.6 s of silence at both ends (phones ``sil``) so that the model
    sees speech onsets and idle motion. Per utterance the features (:mod:`realtime.features`) are
    cached for a few input gains (-20, 0, +8 dB; the level follower must make them alike) and, if
    :mod:`realtime.augment` is present, for one augmented copy; targets come from
    :func:`realtime.targets.motion_targets` at 25 and 30 fps, several random draws each (the
    non-verbal motion is stochastic). A share of pure-silence clips (digital zero or faint noise)
    teaches idle motion.

Objective
    Conditional flow matching (:mod:`realtime.sampling`): ``t ~ U(0, 1)``, loss = MSE of the
    velocity on the frames to generate (mouth channels weighted x2, and x(2 + closure_weight) on
    frames inside p/b/m segments: closures are short and rare, yet a missed one is what a viewer
    sees, and what the loudness baseline, helped by silent stop closures, gets right). Each step draws one window
    shape for the whole batch: ``c`` context frames (0..context_frames, mostly the maximum) and
    ``n`` new frames (1-2 half the time, as when streaming; up to ``max_new_frames`` otherwise, as
    offline). With probability 0.1 a window gets the null-audio embedding and a mouth at rest
    (classifier-free guidance with a "silent" unconditional branch, see :mod:`realtime.generator`).
    Context frames get Gaussian noise (std up to 0.3 normalised units) in half of the windows:
    when streaming, the context is the model's own output, and a model trained only on clean
    context drifts (exposure bias; measured: head pose ran away in 1-frame streaming without it).
    ``--rollout P`` (stage 3 of the shipped weights: 1): in that share of streaming-shaped windows
    the context mouth is the model's own, made frame by frame as a stream makes it
    (:func:`rollout_context`). It fixed streamed lip rounding and shrank the network's streamed head
    motion to a quarter, which is why the shipped config takes the head pose from the targets' head
    model (``head_process``; docs/bench/eval.md).
    AdamW, warm-up then cosine decay over the step cap, EMA of the weights (the EMA weights are
    shipped). The step cap is the only rule that ends a normal run, so the weights do not depend on
    the machine's speed; ``minutes`` is a safety limit: a run that hits it first stops, saves what it
    has, flags ``stopped_early`` in ``config.json`` and the command exits non-zero.

Fine-tuning: ``--init DIR`` starts from the weights in ``DIR`` (same architecture; its normalisation
stats are kept).

Reproduce the shipped weights (2-core CPU; two stages, see models/motion/MODEL_CARD.md)::

    # stage 1: 20,000 steps on an `avatar data build --size full-base` corpus
    nice -n 19 avatar train --corpus data/corpus_base --out /tmp/base --seed 0 --closure-weight 0
    # stage 2: fine-tune on the `--size full` corpus (one command line; both with --threads 2 --workers 2)
    nice -n 19 avatar train --corpus data/corpus --out /tmp/stage2 --init /tmp/base --steps 2500
        --lr 0.0005 --closure-weight 2 --seed 0
    # stage 3: rollout contexts, then set "head_process": true in the config.json it writes
    avatar train --corpus data/corpus --out models/motion --init /tmp/stage2 --steps 1200 --lr 0.0003
        --closure-weight 2 --seed 0 --rollout 1
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.features import FeatureExtractor, frame_windows, last_mel_index
from realtime.motion import MOUTH_CHANNELS, N_CHANNELS
from realtime.phones import CLASSES

log = logging.getLogger(__name__)

FPS_CHOICES = (25, 30)
GAINS_DB = (-20.0, 0.0, 8.0)
N_DRAWS = 3
NULL_AUDIO_P = 0.1
SILENCE_P = 0.06
MOUTH_WEIGHT = 2.0
CTX_NOISE = 0.3  # max std (normalised units) of the noise added to context frames, half of the batches
CLOSURE_WEIGHT = 2.0  # extra loss weight (x MOUTH_WEIGHT) on the mouth channels of frames inside p/b/m
# Share of streaming-shaped batches (1-2 new frames after a context of 4+) whose context mouth is a
# rollout of the model itself, made as a stream makes it (--rollout; 1 in the shipped stage 3).
ROLLOUT_P = 0.0
BILABIALS = frozenset(CLASSES["bilabial"])


@dataclass
class Clip:
    """One cached training utterance: feature versions and target draws per fps."""

    feats: list[np.ndarray]  # (n_mel, N_MELS) per gain / augmentation
    targets: dict[int, list[np.ndarray]]  # fps -> draws of (n_frames, N_CHANNELS)
    closure: dict[int, np.ndarray]  # fps -> (n_frames,) 1.0 inside p/b/m segments, else 0.0


def closure_frames(phones: list, n_frames: int, fps: int) -> np.ndarray:
    """1.0 on frames whose time falls inside a bilabial (p/b/m) segment, else 0.0."""
    t = np.arange(n_frames) / float(fps)
    out = np.zeros(n_frames, np.float32)
    for phone, start, end in phones:
        if phone in BILABIALS:
            out[(t >= float(start)) & (t < float(end))] = 1.0
    return out


def _read_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    pcm, rate = sf.read(str(path), dtype="float32", always_2d=True)
    pcm = pcm.mean(axis=1)
    if rate != 16000:
        from realtime.features import resample

        pcm = resample(pcm, int(rate)).astype(np.float32)
    return pcm


def load_manifest(corpus: Path, split: str) -> list[dict]:
    """Rows of one split of ``manifest.jsonl`` (``split='all'`` for every row)."""
    path = corpus / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no corpus manifest at {path} (run 'avatar data build')")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split == "all" or r.get("split") == split]


def _features(pcm: np.ndarray, dur: float, lookahead_ms: int) -> np.ndarray:
    """Features of ``pcm`` padded with silence far enough for the last frame at every training fps."""
    need = (
        max(last_mel_index(int(math.ceil(dur * fps)) - 1, fps, lookahead_ms) + 2 for fps in FPS_CHOICES) * 160
    )
    x = np.concatenate([pcm, np.zeros(max(0, need - pcm.size), np.float32)])
    return FeatureExtractor().push(x)[0]


def build_clip(
    pcm: np.ndarray, phones: list, rng: np.random.Generator, lookahead_ms: int, augment: bool
) -> Clip:
    """Pad with silence, cache features for several gains and targets for each fps."""
    pre, post = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6)
    n_pre, n_post = int(pre * 16000), int(post * 16000)
    x = np.concatenate([np.zeros(n_pre, np.float32), pcm.astype(np.float32), np.zeros(n_post, np.float32)])
    dur = x.size / 16000
    shifted = [[p, float(a) + n_pre / 16000, float(b) + n_pre / 16000] for p, a, b in phones]
    shifted = [["sil", 0.0, n_pre / 16000], *shifted, ["sil", shifted[-1][2] if shifted else 0.0, dur]]
    feats = []
    for g in GAINS_DB:
        feats.append(_features(x * 10 ** (g / 20), dur, lookahead_ms))
    if augment:
        try:
            from realtime.augment import augment as aug

            y, scale = aug(
                x,
                16000,
                rng,
                [k for k in ("noise", "reverb", "bandlimit", "gain") if rng.random() < 0.5] or ["noise"],
            )
            if abs(scale - 1.0) < 1e-6 and y.size == x.size:
                feats.append(_features(np.asarray(y, np.float32), dur, lookahead_ms))
        except Exception as exc:  # augmentation is optional: a failure must not stop training
            log.debug("augmentation skipped: %s", exc)
    targets = _targets(shifted, x, dur, rng)
    return Clip(feats, targets, {f: closure_frames(shifted, len(d[0]), f) for f, d in targets.items()})


def _targets(
    phones: list, x: np.ndarray, dur: float, rng: np.random.Generator
) -> dict[int, list[np.ndarray]]:
    """Target draws on a 100 fps grid, resampled to each training fps (targets are fps-independent)."""
    from realtime.targets import motion_targets

    n100 = int(math.ceil(dur * 100)) + 1
    grid = np.arange(n100) / 100.0
    out: dict[int, list[np.ndarray]] = {fps: [] for fps in FPS_CHOICES}
    for _ in range(N_DRAWS):
        dense = motion_targets(phones, x, 16000, n100, 100, rng)
        for fps in FPS_CHOICES:
            t = np.arange(int(math.ceil(dur * fps))) / fps
            out[fps].append(
                np.stack([np.interp(t, grid, dense[:, ch]) for ch in range(N_CHANNELS)], 1).astype(np.float32)
            )
    return out


def silence_clip(rng: np.random.Generator, lookahead_ms: int) -> Clip:
    """A few seconds of digital silence or faint noise: idle motion only."""
    dur = float(rng.uniform(2.0, 6.0))
    n = int(dur * 16000)
    level = 0.0 if rng.random() < 0.4 else 10 ** (rng.uniform(-75, -50) / 20)
    x = (level * rng.standard_normal(n)).astype(np.float32)
    phones = [["sil", 0.0, dur]]
    feats = [_features(x, dur, lookahead_ms)]
    targets = _targets(phones, x, dur, rng)
    return Clip(feats, targets, {f: np.zeros(len(d[0]), np.float32) for f, d in targets.items()})


def _load_one(args: tuple) -> Clip | None:
    corpus, row, seed, lookahead_ms, augment = args
    try:
        pcm = _read_wav(corpus / row["wav"])
    except Exception as exc:
        log.warning("skipping %s: %s", row.get("id"), exc)
        return None
    if pcm.size < 1600 or not row.get("phones"):
        return None
    return build_clip(
        pcm, row["phones"], np.random.default_rng([seed, hash_id(row.get("id", ""))]), lookahead_ms, augment
    )


def hash_id(text: str) -> int:
    """A stable 32-bit hash of an utterance id (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(str(text).encode())


def load_clips(
    corpus: Path,
    rows: list[dict],
    seed: int,
    lookahead_ms: int,
    augment: bool,
    progress: bool = True,
    workers: int = 1,
) -> list[Clip]:
    """Read, pad and cache every row (features + targets), optionally in worker processes."""
    from tqdm import tqdm

    jobs = [(corpus, row, seed, lookahead_ms, augment) for row in rows]
    if workers > 1 and len(jobs) > 8:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(
                tqdm(
                    pool.map(_load_one, jobs, chunksize=8),
                    total=len(jobs),
                    desc="caching",
                    disable=not progress,
                    unit="utt",
                )
            )
    else:
        results = [_load_one(j) for j in tqdm(jobs, desc="caching", disable=not progress, unit="utt")]
    return [c for c in results if c is not None]


class Batcher:
    """Random training windows from cached clips (one window shape per batch)."""

    def __init__(self, clips: list[Clip], silence: list[Clip], config, rng: np.random.Generator) -> None:
        self.clips, self.silence, self.cfg, self.rng = clips, silence, config, rng

    def shape(self) -> tuple[int, int]:
        cfg, rng = self.cfg, self.rng
        c = cfg.context_frames if rng.random() < 0.75 else int(rng.integers(0, cfg.context_frames + 1))
        n = int(rng.integers(1, 3)) if rng.random() < 0.5 else int(rng.integers(3, cfg.max_new_frames + 1))
        return c, n

    def batch(self, size: int, c: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> (motion (B, W, C), mel windows (B, W, K, M), null flags (B,), closure frames (B, W))."""
        cfg, rng = self.cfg, self.rng
        w = c + n
        motion = np.zeros((size, w, N_CHANNELS), np.float32)
        closure = np.zeros((size, w), np.float32)
        windows = np.zeros((size, w, cfg.audio_frames, cfg.n_mels), np.float32)
        null = rng.random(size) < NULL_AUDIO_P
        for b in range(size):
            pool = self.silence if (self.silence and rng.random() < SILENCE_P) else self.clips
            clip = pool[int(rng.integers(len(pool)))]
            fps = FPS_CHOICES[int(rng.integers(len(FPS_CHOICES)))]
            draws = clip.targets[fps]
            target = draws[int(rng.integers(len(draws)))]
            total = len(target)
            start = int(rng.integers(-c, max(1, total - w + 1)))  # windows may start before the clip
            frames = np.clip(np.arange(start, start + w), 0, total - 1)
            frames_a = np.minimum(np.arange(start, start + w), total - 1)  # before the clip: silence
            motion[b] = target[frames]
            closure[b] = clip.closure[fps][frames] * (np.arange(start, start + w) >= 0)
            feats = clip.feats[int(rng.integers(len(clip.feats)))]
            windows[b] = frame_windows(
                feats, np.maximum(frames_a, -100), fps, cfg.lookahead_ms, cfg.audio_frames
            )
            if null[b]:
                motion[b, :, : len(MOUTH_CHANNELS)] = 0.0
                closure[b] = 0.0
        return motion, windows, null, closure


def rollout_context(model, x1, audio, null_audio, c: int, temperature: float, guidance: float):
    """``x1`` (B, W, C, normalised) with the mouth of its first ``c`` frames replaced by the model's own.

    Frame by frame, as a live stream makes them: each frame's mouth is the first sampler call's clean
    estimate (``x0 + v(x0, 0)``, mouth noise scaled by ``temperature``, guidance ``guidance`` against the
    null-audio branch), given the frames before it, whose mouths are already the model's. Clipped to
    the contract's 0..1 like a stream's output. Trained on GT context only, a stream fed back its own
    hedged, half-rounded mouth during a closure and let it grow (puckering after /p/, docs/bench/eval.md).
    """
    import torch

    nm = len(MOUTH_CHANNELS)
    b, _, ch = x1.shape
    k = model.config.context_frames
    lo_m = (0.0 - model.motion_mean[:nm]) / model.motion_std[:nm]
    hi_m = (1.0 - model.motion_mean[:nm]) / model.motion_std[:nm]
    est = x1.clone()
    with torch.no_grad():
        for i in range(c):
            lo = max(0, i - k)
            w = i + 1 - lo
            z = torch.randn(b, 1, ch)
            z[..., :nm] *= temperature
            x = torch.cat([torch.zeros(b, w - 1, ch), z], dim=1)
            ctx = torch.cat([est[:, lo:i], torch.zeros(b, 1, ch)], dim=1)
            mask = torch.zeros(b, w, 1)
            mask[:, : w - 1] = 1.0
            t0 = torch.zeros(b)
            a = audio[:, lo : i + 1]
            v = model(x, t0, ctx, mask, a)[:, -1, :nm]
            if abs(guidance - 1.0) > 1e-6:
                vn = model(x, t0, ctx, mask, null_audio.expand_as(a))[:, -1, :nm]
                v = vn + guidance * (v - vn)
            est[:, i, :nm] = torch.maximum(torch.minimum(z[:, 0, :nm] + v, hi_m), lo_m)
    return est


def compute_stats(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Feature mean/std per mel band and motion mean/std per channel over the training clips."""
    feats = np.concatenate([c.feats[0] for c in clips])
    motion = np.concatenate([d for c in clips for d in c.targets[25]])
    m_std = np.maximum(motion.std(axis=0), 0.05)
    m_std[len(MOUTH_CHANNELS) :] = np.maximum(m_std[len(MOUTH_CHANNELS) :], 0.05)
    return feats.mean(axis=0), np.maximum(feats.std(axis=0), 0.1), motion.mean(axis=0), m_std


def train(
    corpus: Path,
    out: Path,
    *,
    minutes: float = 120.0,
    steps: int = 20000,
    seed: int = 0,
    closure_weight: float = CLOSURE_WEIGHT,
    init: Path | None = None,
    tiny: bool = False,
    batch_size: int = 48,
    lr: float = 2e-3,
    threads: int = 1,
    workers: int = 2,
    progress: bool = True,
    config_overrides: dict | None = None,
    rollout: float = ROLLOUT_P,
) -> dict:
    """Train, save ``config.json``, ``motion.pt``, ONNX files and ``loss.png`` into ``out``."""
    import torch
    from tqdm import tqdm

    from realtime.model import MotionConfig, MotionDenoiser, count_parameters
    from realtime.sampling import interpolate

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = MotionConfig(**(config_overrides or {}))
    if tiny:
        cfg = MotionConfig(
            **{**cfg.to_dict(), "hidden": 32, "audio_hidden": 64, "n_layers": 2, **(config_overrides or {})}
        )
    train_rows = load_manifest(corpus, "train")
    val_rows = load_manifest(corpus, "val")
    if tiny:
        train_rows, val_rows = train_rows[:6], val_rows[:2]
    if not train_rows:
        raise ValueError(f"{corpus}: the manifest has no 'train' rows")
    t0 = time.time()
    clips = load_clips(
        corpus, train_rows, seed, cfg.lookahead_ms, augment=not tiny, progress=progress, workers=workers
    )
    val_clips = load_clips(
        corpus, val_rows, seed + 1, cfg.lookahead_ms, augment=False, progress=progress, workers=workers
    )
    val_clips = val_clips or clips[:2]
    silence = [silence_clip(rng, cfg.lookahead_ms) for _ in range(4 if tiny else 40)]
    if not clips:
        raise ValueError(f"{corpus}: no usable training utterances")
    cache_s = time.time() - t0
    if init is not None:
        from realtime.generator import CONFIG

        init_cfg = MotionConfig.from_dict(json.loads((Path(init) / CONFIG).read_text())["config"])
        if init_cfg.architecture() != cfg.architecture():  # sampler settings may differ (defaults change)
            raise ValueError(f"{init}: its model architecture differs from this run's; cannot start from it")
        # the sampler settings chosen for the starting weights carry over: a rollout samples with them
        cfg = MotionConfig.from_dict({**init_cfg.to_dict(), **(config_overrides or {})})
    net = MotionDenoiser(cfg)
    if init is not None:
        # Fine-tune: same architecture, and the starting weights' normalisation stats are kept (the
        # network was trained against them).
        from realtime.generator import WEIGHTS

        net.load_state_dict(torch.load(Path(init) / WEIGHTS, map_location="cpu", weights_only=True))
    else:
        fm, fs, mm, ms = compute_stats(clips)
        net.feat_mean.copy_(torch.from_numpy(fm))
        net.feat_std.copy_(torch.from_numpy(fs))
        net.motion_mean.copy_(torch.from_numpy(mm))
        net.motion_std.copy_(torch.from_numpy(ms))
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    weights = torch.ones(cfg.n_channels)
    weights[: len(MOUTH_CHANNELS)] = MOUTH_WEIGHT
    mouth = torch.zeros(cfg.n_channels)
    mouth[: len(MOUTH_CHANNELS)] = MOUTH_WEIGHT * closure_weight
    batcher = Batcher(clips, silence, cfg, rng)
    val_batcher = Batcher(val_clips, silence[:2], cfg, np.random.default_rng(seed + 7))
    val_set = [val_batcher.batch(32, cfg.context_frames, n) for n in (1, 2, 16)]
    val_t = torch.from_numpy(np.random.default_rng(seed + 8).random(32).astype(np.float32))
    val_noise = [
        torch.from_numpy(np.random.default_rng(seed + 9 + i).standard_normal(v[0].shape).astype(np.float32))
        for i, v in enumerate(val_set)
    ]
    max_steps = 40 if tiny else steps
    budget = minutes * 60.0
    warm = max(1, min(300, max_steps // 20))
    history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "val": []}

    def loss_of(
        model: MotionDenoiser,
        motion: np.ndarray,
        windows: np.ndarray,
        null: np.ndarray,
        closure: np.ndarray,
        c: int,
        t: torch.Tensor,
        noise: torch.Tensor,
        ctx_noise: bool = False,
        roll: bool = False,
    ) -> torch.Tensor:
        x1 = model.normalize(torch.from_numpy(motion))
        audio = model.encode_audio(torch.from_numpy(windows))
        nullm = torch.from_numpy(null)[:, None, None]
        audio = torch.where(nullm, model.null_audio.expand_as(audio), audio)
        mask = torch.zeros(x1.shape[0], x1.shape[1], 1)
        mask[:, :c] = 1.0
        xt, v = interpolate(noise, x1, t)
        ctx = x1
        if roll:  # the context mouth a stream would have fed back (its own), not the targets'
            ctx = rollout_context(
                model,
                x1,
                audio.detach(),
                model.null_audio.detach(),
                c,
                cfg.mouth_temperature,
                cfg.stream_guidance_scale,
            )
        if ctx_noise:  # context frames come from the model when streaming: make it robust to their errors
            sigma = CTX_NOISE * torch.rand(x1.shape[0], 1, 1) * (torch.rand(x1.shape[0], 1, 1) < 0.5)
            ctx = ctx + sigma * torch.randn_like(x1) * mask
        pred = model(xt, t, ctx, mask, audio)
        w = weights + torch.from_numpy(closure)[:, :, None] * mouth  # (B, W, C)
        err = ((pred - v) ** 2 * w)[:, c:]
        return err.mean()

    def validate(model: MotionDenoiser) -> float:
        with torch.no_grad():
            vals = [
                float(loss_of(model, m, w, nl, cl, cfg.context_frames, val_t, nz))
                for (m, w, nl, cl), nz in zip(val_set, val_noise, strict=True)
            ]
        return float(np.mean(vals))

    bar = tqdm(total=max_steps, desc="training", disable=not progress, unit="step")
    start = time.time()
    step = 0
    running = None
    while step < max_steps and time.time() - start < budget:
        frac = step / max_steps  # the schedule follows steps only: same weights on a slower machine
        lr_now = lr * min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr_now
        c, n = batcher.shape()
        motion, windows, null, closure = batcher.batch(batch_size, c, n)
        t = torch.rand(batch_size)
        noise = torch.randn(motion.shape)
        net.train()
        roll = n <= 2 and c >= 4 and rng.random() < rollout
        loss = loss_of(net, motion, windows, null, closure, c, t, noise, ctx_noise=True, roll=roll)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1.0 - decay)
        step += 1
        lv = float(loss.detach())
        running = lv if running is None else 0.98 * running + 0.02 * lv
        history["step"].append(step)
        history["loss"].append(lv)
        if step % (10 if tiny else 250) == 0:
            vl = validate(ema)
            history["val_step"].append(step)
            history["val"].append(vl)
            bar.set_postfix(loss=f"{running:.3f}", val=f"{vl:.3f}", lr=f"{lr_now:.1e}")
        bar.update(1)
    bar.close()
    train_s = time.time() - start
    stopped_early = step < max_steps
    if stopped_early:
        log.warning(
            "stopped by the %.0f-minute safety limit after %d of %d steps: these are not the reproducible "
            "weights (give more --minutes, or fewer --steps)",
            budget / 60,
            step,
            max_steps,
        )
    final_val = validate(ema)
    history["val_step"].append(step)
    history["val"].append(final_val)
    meta = {
        "config": cfg.to_dict(),
        "training": {
            "corpus": str(corpus),
            "train_utterances": len(clips),
            "train_minutes_audio": round(sum(len(c.targets[25][0]) for c in clips) / 25 / 60, 2),
            "val_utterances": len(val_clips),
            "steps": step,
            "step_cap": max_steps,
            "stopped_early": stopped_early,
            "closure_weight": closure_weight,
            "rollout": rollout,
            "init": str(init) if init is not None else None,
            "init_training": (
                json.loads((Path(init) / "config.json").read_text()).get("training")
                if init is not None
                else None
            ),
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "tiny": tiny,
            "cache_seconds": round(cache_s, 1),
            "train_seconds": round(train_s, 1),
            "final_val_loss": round(final_val, 4),
            "parameters": count_parameters(net),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    }
    before_path = Path(init) / "loss_history.json" if init is not None else None
    before = (
        json.loads(before_path.read_text()) if before_path is not None and before_path.is_file() else None
    )
    save(ema, out, meta, history, before)
    return meta


def save(
    net, out: Path, meta: dict, history: dict[str, list[float]], before: dict[str, list[float]] | None = None
) -> None:
    """Weights, config, ONNX graphs (with a parity check) and the loss-curve plot."""
    import torch

    from realtime.export import export_onnx, parity
    from realtime.generator import CONFIG, WEIGHTS

    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, out / WEIGHTS)
    export_onnx(net, out)
    (out / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    diffs = parity(out)
    meta["training"]["onnx_parity_max_abs"] = {k: float(f"{v:.2e}") for k, v in diffs.items()}
    (out / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "loss_history.json").write_text(
        json.dumps({k: [round(x, 5) for x in v] for k, v in history.items()}) + "\n"
    )
    plot_loss(history, out / "loss.png", before)
    if max(diffs.values()) > 1e-3:
        raise RuntimeError(f"ONNX parity check failed: {diffs}")


def plot_loss(
    history: dict[str, list[float]], path: Path, before: dict[str, list[float]] | None = None
) -> None:
    """Training loss (smoothed) and validation loss against steps; a fine-tuning run also shows the
    curves of the run it started from (``before``, grey), its own steps continuing theirs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    offset = 0
    if before and before.get("step"):
        offset = int(before["step"][-1])
        b_loss = np.asarray(before["loss"])
        k = max(1, b_loss.size // 100)
        smooth = np.convolve(b_loss, np.ones(k) / k, mode="valid")
        ax.plot(
            np.asarray(before["step"])[: smooth.size] + k // 2,
            smooth,
            color="0.6",
            label="starting run: train",
        )
        if before.get("val"):
            ax.plot(
                before["val_step"], before["val"], "o-", color="0.3", ms=3, label="starting run: validation"
            )
        ax.axvline(offset, color="k", lw=0.8, ls="--")
    steps = np.asarray(history["step"]) + offset
    loss = np.asarray(history["loss"])
    if loss.size:
        k = max(1, loss.size // 100)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[: smooth.size] + k // 2, smooth, label="train (smoothed)")
    if history["val"]:
        ax.plot(
            np.asarray(history["val_step"]) + offset, history["val"], "o-", label="validation (EMA weights)"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cli_main(argv: list[str]) -> int:
    """``avatar train [--corpus data/corpus] [--out models/motion] [--minutes N] [--steps N] [--seed 0] [--tiny]``."""
    from realtime.config import ROOT

    p = argparse.ArgumentParser(
        prog="avatar train", description="Train the motion model and export it to ONNX."
    )
    p.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    p.add_argument("--out", default=str(ROOT / "models" / "motion"))
    p.add_argument(
        "--minutes",
        type=float,
        default=120.0,
        help="safety limit on training time (after caching): a run stopped by it saves its weights, "
        "flags stopped_early and exits 3; the step cap is what ends a normal run",
    )
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps (the step cap)")
    p.add_argument("--init", default=None, help="start from the weights in this model folder (fine-tune)")
    p.add_argument(
        "--closure-weight",
        type=float,
        default=CLOSURE_WEIGHT,
        help="extra loss weight on mouth channels inside p/b/m segments (0 = none)",
    )
    p.add_argument(
        "--rollout",
        type=float,
        default=ROLLOUT_P,
        help="share of streaming-shaped batches whose context mouth is the model's own rollout",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--workers", type=int, default=2, help="processes for caching features and targets")
    p.add_argument("--tiny", action="store_true", help="smoke test: a few utterances, a tiny model, seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        meta = train(
            Path(args.corpus),
            Path(args.out),
            minutes=args.minutes,
            steps=args.steps,
            seed=args.seed,
            tiny=args.tiny,
            batch_size=args.batch_size,
            lr=args.lr,
            threads=args.threads,
            workers=args.workers,
            closure_weight=args.closure_weight,
            init=Path(args.init) if args.init else None,
            rollout=args.rollout,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"avatar train: {exc}")
        return 2
    print(json.dumps(meta["training"], indent=2))
    if meta["training"]["stopped_early"]:
        print(f"avatar train: stopped by --minutes {args.minutes} before the step cap ({args.steps})")
        return 3
    return 0


def _init_line(tr: dict) -> str:
    """Model-card line naming the weights a fine-tuning run started from (empty for a run from scratch)."""
    base = tr.get("init_training")
    if not base:
        return ""
    return (
        f"- Fine-tuned from `{tr['init']}`: {base['steps']} steps on `{base['corpus']}` "
        f"({base['train_utterances']} train utterances, closure weight {base.get('closure_weight', 0.0)}, "
        f"lr {base['lr']}, seed {base['seed']}, {base['date']}).\n"
    )


def write_model_card(out: Path, eval_summary: str = "") -> Path:
    """``MODEL_CARD.md`` from ``config.json`` (data, command, training figures) plus evaluation text."""
    meta = json.loads((out / "config.json").read_text())
    cfg, tr = meta["config"], meta["training"]
    chunk = int(cfg.get("stream_chunk_frames", 1))
    size_mb = (
        sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "MODEL_CARD.md") / 2**20
    )
    text = f"""# Motion model card

Audio (16 kHz speech) -> ARKit-named motion (14 mouth channels, blinks, brows, head pose) for the
talking avatar. A few-step flow-matching denoiser over a sliding window of motion frames.

## Model

- Architecture: `realtime/model.py` `MotionDenoiser`: per-frame audio MLP over {
        cfg["audio_frames"]
    } log-mel frames
  ({cfg["n_mels"]} bands, 10 ms hop, 25 ms window), then {cfg["n_layers"]} residual 1-D conv blocks
  (hidden {cfg["hidden"]}, kernel {cfg["kernel"]}, FiLM on the flow time), a learned null-audio embedding.
- Parameters: {tr["parameters"]:,}. Files: `motion.pt` (torch state dict), `audio_encoder.onnx` +
  `denoiser.onnx` (opset 17), `denoiser_int8.onnx` (the same graph with int8 weights, run on CPU),
  `config.json`, `loss.png`, `loss_history.json`; {size_mb:.1f} MB in all.
- Lookahead: {cfg["lookahead_ms"]} ms. Streaming chunk: {chunk} frame(s) ({chunk * 40} ms at 25 fps,
  {chunk * 33.3:.0f} ms at 30 fps); `latency_ms` = {chunk * 1000 / 25 + cfg["lookahead_ms"]:.0f} at 25 fps
  ({chunk * 1000 / 30 + cfg["lookahead_ms"]:.1f} at 30 fps).
- Context: the last {cfg["context_frames"]} emitted frames (inpainted). Offline windows: {
        cfg["max_new_frames"]
    } new frames.
- Sampler: Euler on the rectified-flow ODE, default {cfg["default_steps"]} steps (1..8 allowed).
  `dynamic_scale` is classifier-free guidance on the mouth channels against the null-audio branch.
  Mouth-channel initial noise is scaled by {
        cfg.get("mouth_temperature", 0.3)
    } (mouth targets are deterministic
  given the phones; full-temperature mouth noise only adds jitter).
- ONNX parity (max abs diff torch vs onnxruntime): {tr.get("onnx_parity_max_abs")}.

## Data

- Corpus: `{tr["corpus"]}`, split `train`: {tr["train_utterances"]} utterances, {
        tr["train_minutes_audio"]
    } min
  of audio after silence padding; `val`: {tr["val_utterances"]} utterances (validation loss only).
  Built by `avatar data build` (TTS voices flite/festival/MBROLA/pico and festvox-ru real Russian speech;
  held-out voices and the Allison real-speech prompts are never trained on, see docs/DATA.md).
- Targets: `realtime.targets.motion_targets` (viseme table + Cohen-Massaro coarticulation for the mouth,
  stochastic blinks / head nods / brows), {N_DRAWS} random draws per utterance, at 25 and 30 fps.
- Augmentation: input gains {GAINS_DB} dB and one `realtime.augment` copy (noise, reverb, band limits)
  per utterance; {int(SILENCE_P * 100)}% silence clips (digital zero or faint noise).

## Training

- Command: `nice -n 19 avatar train --corpus {tr["corpus"]} --out models/motion --seed {tr["seed"]}
  --steps {tr.get("step_cap", tr["steps"])} --lr {tr["lr"]} --closure-weight {tr.get("closure_weight", 0.0)}{
        f" --init {tr['init']}" if tr.get("init") else ""
    }` on the 2-core
  CPU dev machine (shared with other jobs). The step cap ends the run (`--minutes` is only a safety
  limit; stopped early: {tr.get("stopped_early", "n/a")}), so the result does not depend on machine speed.
{_init_line(tr)}- Loss: flow-matching MSE, mouth channels x{MOUTH_WEIGHT}, and x{
        MOUTH_WEIGHT
    } more per unit of closure weight
  on frames inside p/b/m segments.
- Steps: {tr["steps"]}, batch {tr["batch_size"]}, AdamW lr {tr["lr"]} (warm-up, cosine), EMA 0.999,
  {tr["train_seconds"] / 60:.1f} min of training after {tr["cache_seconds"] / 60:.1f} min of caching.
  Final validation loss (EMA weights): {tr["final_val_loss"]}. Curves: `loss.png`. Date: {tr["date"]}.

## Evaluation

{eval_summary or "See docs/bench/eval.md (`avatar eval lipsync`)."}

## Limits

- Mouth shapes are learned from rule-based targets driven by phone timings, not from video of faces.
- Non-verbal motion (blinks, nods, brows) imitates a hand-made stochastic model.
- The context window is short ({cfg["context_frames"]} frames): blink timing has no long memory.
"""
    path = out / "MODEL_CARD.md"
    path.write_text(text)
    return path
