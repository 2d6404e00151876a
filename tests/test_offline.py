"""Offline pipeline: MP4 muxing and A/V sync, the real generator + renderer end to end, the CLI."""

from __future__ import annotations

import math
import threading
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from realtime.media import decode_audio
from realtime.motion import idx, neutral
from realtime.offline import (
    Cancelled,
    GenerateParams,
    Mp4Writer,
    ParamError,
    block_seed,
    cli_main,
    generate_video,
    motion_blocks,
    n_frames_for,
    plan_batch,
)
from realtime.yuv import I420Converter, rgb_to_i420

AVATAR = Path(__file__).resolve().parent.parent / "models" / "avatars" / "astronaut.png"
FPS = 25


def write_wav(path: Path, pcm: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def padded_speech(speech: np.ndarray, lead: float = 1.0, tail: float = 1.5) -> np.ndarray:
    """Silence, speech, silence: the mouth must rest, move, then rest again."""
    return np.concatenate([np.zeros(int(lead * 16000)), speech, np.zeros(int(tail * 16000))]).astype(
        np.float32
    )


def read_video(path: Path) -> tuple[list[np.ndarray], list[float], dict[str, object]]:
    """RGB frames, their times in seconds, and stream facts."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        facts = {
            "vcodec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "acodec": a.codec_context.name,
            "size": (v.codec_context.width, v.codec_context.height),
        }
        frames, times = [], []
        for frame in c.decode(v):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
    return frames, times, facts


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types, in file order."""
    data, pos, names = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        names.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size < 8:
            break
        pos += size
    return names


# -- parameters -------------------------------------------------------------------------------------
def test_params_defaults_and_validation() -> None:
    p = GenerateParams.from_mapping(
        {"min_resolution": "384", "fps": 30, "seed": 7.0, "inference_steps": None}
    )
    assert (p.min_resolution, p.fps, p.seed, p.inference_steps) == (384, 30, 7, None)
    assert p.clip_duration(3.0) == 3.0
    assert GenerateParams(duration=10).clip_duration(3.0) == 3.0  # capped by the audio
    assert GenerateParams(duration=1.5).clip_duration(3.0) == 1.5
    bad = [
        ({"colour": 1}, "unknown"),
        ({"min_resolution": 100}, "min_resolution"),
        ({"min_resolution": 512.5}, "integer"),
        ({"expand_ratio": 0.9}, "expand_ratio"),
        ({"inference_steps": 9}, "inference_steps"),
        ({"dynamic_scale": -1}, "dynamic_scale"),
        ({"motion_scale": "lots"}, "motion_scale"),
        ({"align_mouth": 250}, "align_mouth"),
        ({"smooth_motion": 1.5}, "smooth_motion"),
        ({"fps": 24}, "fps"),
        ({"duration": 0}, "duration"),
        ({"seed": True}, "seed"),
        ({"dynamic_scale": float("nan")}, "dynamic_scale"),
    ]
    for data, word in bad:
        with pytest.raises(ParamError, match=word):
            GenerateParams.from_mapping(data)
    with pytest.raises(ParamError):
        GenerateParams.from_mapping([1, 2])  # type: ignore[arg-type]
    assert n_frames_for(2.0, 25) == 50 and n_frames_for(2.01, 25) == 51 and n_frames_for(0.001, 30) == 1


# -- muxing -----------------------------------------------------------------------------------------
def test_mp4_writer_av_sync(tmp_path: Path) -> None:
    """Beeps in the audio and white flashes on the frames meant to show them line up after muxing."""
    rate, beeps = 16000, (0.6, 1.4, 2.2)
    pcm = np.zeros(3 * rate, np.float32)
    t = np.arange(int(0.05 * rate)) / rate
    for b in beeps:
        pcm[int(b * rate) : int(b * rate) + t.size] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    clip = decode_audio(write_wav(tmp_path / "beeps.wav", pcm))
    n = n_frames_for(clip.duration, FPS)
    out = tmp_path / "sync.mp4"
    writer = Mp4Writer(out, (128, 96), FPS, clip, clip.duration)
    flash = {round(b * FPS) for b in beeps}
    for i in range(n):
        writer.write(rgb_to_i420(np.full((96, 128, 3), 255 if i in flash else 0, np.uint8)))
    writer.close()

    frames, times, facts = read_video(out)
    assert facts["vcodec"] == "h264" and facts["pix_fmt"] == "yuv420p" and facts["acodec"] == "aac"
    assert len(frames) == n == 75
    flashes = [tm for f, tm in zip(frames, times, strict=True) if f.mean() > 128]
    audio = decode_audio(out)  # our MP4 is itself a valid M4A input
    assert abs(audio.duration - clip.duration) < 1 / FPS
    loud = np.flatnonzero(np.abs(audio.pcm) > 0.1)
    onsets = [loud[0] / rate] + [
        loud[i] / rate for i in range(1, loud.size) if loud[i] - loud[i - 1] > rate // 4
    ]
    assert len(flashes) == len(onsets) == 3
    for f, o in zip(flashes, onsets, strict=True):
        assert abs(f - o) <= 0.5 / FPS + 0.005, (flashes, onsets)
    # moov before mdat: the browser can start playing before the whole file arrives.
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")


@pytest.mark.parametrize("size", [(128, 96), (334, 334), (476, 302)])
def test_mp4_writer_keeps_the_picture(tmp_path: Path, size: tuple[int, int]) -> None:
    """Frames come back as written whatever the size (frames are handed to the encoder without a copy)."""
    width, height = size
    rng = np.random.default_rng(1)
    clip = decode_audio(write_wav(tmp_path / "quiet.wav", np.zeros(16000, np.float32)))
    pictures = []
    for k in range(3):
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[:, : width // 2] = rng.integers(40, 220, 3)
        rgb[height // 3 : height // 2 + k * 4, width // 4 :] = rng.integers(40, 220, 3)
        pictures.append(rgb)
    writer = Mp4Writer(tmp_path / "pic.mp4", size, FPS, clip, 3 / FPS)
    for rgb in pictures:
        writer.write(rgb_to_i420(rgb))
    writer.close()
    frames, _, facts = read_video(tmp_path / "pic.mp4")
    assert facts["size"] == size and len(frames) == 3
    for got, want in zip(frames, pictures, strict=True):
        assert np.abs(got.astype(np.int16) - want).mean() < 3.0


# -- motion in blocks (long files) -------------------------------------------------------------------
def _envelope(segment: np.ndarray, on_fraction, block: int = 0) -> np.ndarray:  # noqa: ANN001
    """A stand-in whose frame j depends only on the audio of frame j, so blocks must stitch exactly."""
    n = math.ceil(segment.size * FPS / 16000)
    hop = 16000 // FPS
    rms = [float(np.sqrt(np.mean(segment[j * hop : (j + 1) * hop] ** 2))) for j in range(n)]
    on_fraction(1.0)
    return np.repeat(np.asarray(rms, np.float32)[:, None], 22, axis=1)


def test_motion_blocks_stitch_exactly() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    pcm = (
        rng.standard_normal(16000 * 11 + 123) * np.repeat(rng.uniform(0, 1, 111), 1600)[: 16000 * 11 + 123]
    ).astype(np.float32)
    n = n_frames_for(pcm.size / 16000, FPS)
    # 11 s in blocks of about 3 s; then blocks of 2, 4 and 5 s (short first, doubling, capped)
    for block_s, first_s, count in ((3, 3, 4), (8, 2, 3)):
        made: list[int] = []
        with ThreadPoolExecutor(1) as pool:
            blocks = list(
                motion_blocks(
                    _envelope, pcm, FPS, n, pool, block_s=block_s, first_s=first_s, progress=made.append
                )
            )
        # the first block is whole; the others lose the cross-fade second to the block before
        assert len(blocks) == count and len(blocks[0]) == (first_s - 1) * FPS
        stitched = np.concatenate(blocks)
        assert stitched.shape == (n, 22)
        np.testing.assert_allclose(stitched, _envelope(pcm, lambda f: None), atol=1e-6)
        assert made == sorted(made) and made[-1] >= n


def test_motion_blocks_real_model_has_no_seams(engine, talk_clip) -> None:
    from realtime.generator import generate_motion

    def generate(segment: np.ndarray, on_fraction, block: int) -> np.ndarray:  # noqa: ANN001
        return generate_motion(engine.motion_model, segment, 16000, FPS, progress=on_fraction)

    n = n_frames_for(talk_clip.duration, FPS)
    stitched = np.concatenate(
        list(motion_blocks(generate, talk_clip.pcm, FPS, n, engine.executor, block_s=2))
    )
    assert stitched.shape == (n, 22)
    step = np.linalg.norm(np.diff(stitched, axis=0), axis=1)
    near = np.zeros(step.size, bool)
    for seam in range(2 * FPS, n, 2 * FPS):
        near[seam - FPS - 1 : seam + 1] = True  # the cross-fade and the frame after it
    # Head motion is stochastic, so the single largest step lands near or away from a seam by chance
    # (with 2 s blocks the seam regions are half the timeline). Compare the distributions instead,
    # with the tolerance the generator's chunk-boundary test uses: a seam must not make steps larger.
    for stat in (np.mean, lambda s: np.percentile(s, 95)):
        at_seams, elsewhere = float(stat(step[near])), float(stat(step[~near]))
        assert at_seams <= 1.3 * elsewhere + 0.005, (at_seams, elsewhere)


def test_long_silence_does_not_repeat_its_motion_every_block(engine) -> None:
    from realtime.generator import MotionControls, generate_motion, with_controls

    assert block_seed(7, 0) == 7 and len({block_seed(7, k) for k in range(50)}) == 50
    silence = np.zeros(16000 * 12, np.float32)
    controls = MotionControls(seed=7)

    def generate(segment: np.ndarray, on_fraction, block: int) -> np.ndarray:  # noqa: ANN001
        seeded = with_controls(controls, seed=block_seed(controls.seed, block))
        return generate_motion(engine.motion_model, segment, 16000, FPS, controls=seeded)

    n = n_frames_for(12.0, FPS)
    blocks = list(motion_blocks(generate, silence, FPS, n, engine.executor, block_s=4, first_s=4))
    motion = np.concatenate(blocks)
    assert motion.shape == (n, 22) and np.isfinite(motion).all()
    # blocks start at 4 and 8 s on the same silence: with one seed their first 3 s were identical
    b, c = motion[4 * FPS : 7 * FPS], motion[8 * FPS : 11 * FPS]
    assert np.abs(b - c).max() > 0.1


# -- the real pipeline --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def talk_clip(speech_16k: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    path = write_wav(tmp_path_factory.mktemp("talk") / "talk.wav", padded_speech(speech_16k))
    return decode_audio(path)


def _mouth_mask(engine, resolution: int) -> np.ndarray:
    """Pixels the renderer changes when only the jaw opens: the mouth region, found without landmarks."""
    bundle = engine.avatar("default")
    renderer = engine.renderer(bundle, resolution)
    rest = neutral()
    opened = rest.copy()
    opened[idx("jawOpen")] = 1.0
    diff = np.abs(renderer.render(opened).astype(np.int16) - renderer.render(rest).astype(np.int16)).sum(
        axis=2
    )
    mask = diff > 30
    assert mask.sum() > 20, "opening the jaw should change the picture"
    return mask


def test_roi_conversion_is_bit_identical(engine) -> None:
    """Converting only the animated region gives exactly the full-frame I420, or falls back."""
    rng = np.random.default_rng(5)
    for resolution in (256, 384):
        renderer = engine.renderer(engine.avatar("default"), resolution)
        convert = I420Converter(renderer)
        assert convert.box is not None
        for _ in range(4):
            m = neutral()
            m[:19] = rng.uniform(0, 1, 19)
            m[19:] = rng.uniform(-5, 5, 3)
            rgb = renderer.render(m)
            np.testing.assert_array_equal(convert(rgb, check=True), rgb_to_i420(rgb))
            # the offline path: only the animated region is drawn, never a whole frame
            np.testing.assert_array_equal(convert.region(renderer.render_region(m)), rgb_to_i420(rgb))
        rest = renderer.render(neutral())
        np.testing.assert_array_equal(convert.region(renderer.render_region(neutral())), rgb_to_i420(rest))
        # A renderer that breaks the contract (draws outside its roi) is caught and converted whole.
        frame = renderer.render(neutral())
        frame[-4:, :4] = 255 - frame[-4:, :4]
        np.testing.assert_array_equal(convert(frame, check=True), rgb_to_i420(frame))
        assert convert.box is None


def test_generate_video_real_engine(engine, talk_clip, speech_16k: np.ndarray, tmp_path: Path) -> None:
    params = GenerateParams(min_resolution=256, seed=3, motion_scale=0.0)
    progress: list[float] = []
    out = tmp_path / "talk.mp4"
    result = generate_video(
        engine,
        talk_clip,
        out,
        params,
        bundle=engine.avatar("default"),
        progress=lambda f, s: progress.append(f),
    )
    assert result.path == out and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]  # no temporary files left
    assert progress[-1] == 1.0 and all(a <= b for a, b in zip(progress, progress[1:], strict=False))

    frames, times, facts = read_video(out)
    expected = math.ceil(talk_clip.duration * FPS)
    assert abs(len(frames) - expected) <= 1 and result.frames == expected
    assert min(facts["size"]) == 256
    assert times[:3] == [0.0, 1 / FPS, 2 / FPS]

    # The sound track is the input audio, in time with the picture.
    audio = decode_audio(out)
    assert abs(audio.duration - talk_clip.duration) < 1 / FPS
    n = min(audio.pcm.size, talk_clip.pcm.size)
    lags = range(-400, 401, 4)
    corr = [np.corrcoef(np.roll(audio.pcm[:n], k), talk_clip.pcm[:n])[0, 1] for k in lags]
    assert max(corr) > 0.9 and abs(list(lags)[int(np.argmax(corr))]) <= 16000 // FPS // 2

    # The mouth moves during speech and rests during the silences around it: frame-to-frame change
    # inside the region the jaw moves (motion_scale=0 keeps the head still, isolating the mouth).
    mask = _mouth_mask(engine, 256)
    change = np.array(
        [
            np.abs(b.astype(np.int16) - a.astype(np.int16)).sum(axis=2)[mask].mean()
            for a, b in zip(frames[:-1], frames[1:], strict=True)
        ]
    )
    t = np.arange(1, len(frames)) / FPS
    speech_end = 1.0 + speech_16k.size / 16000
    silent = change[(t < 0.8) | (t > speech_end + 0.4)]
    talking = change[(t > 1.1) & (t < speech_end - 0.1)]
    assert np.median(talking) > 3 * np.median(silent) + 1, (np.median(silent), np.median(talking))
    assert np.percentile(silent, 90) < 0.25 * np.median(talking), (
        np.percentile(silent, 90),
        np.median(talking),
    )


def test_duration_caps_and_fps30(engine, talk_clip, tmp_path: Path) -> None:
    out = tmp_path / "short.mp4"
    engine.avatar("default")
    cached = sorted(engine.avatar_cache_dir.iterdir())
    generate_video(
        engine,
        talk_clip,
        out,
        GenerateParams(duration=1.3, fps=30, min_resolution=256),
        image=AVATAR.read_bytes(),  # the same image again: registration comes from the cache
    )
    assert sorted(engine.avatar_cache_dir.iterdir()) == cached  # registered once, by content hash
    frames, times, _ = read_video(out)
    assert len(frames) == 39  # ceil(1.3 * 30)
    assert abs(decode_audio(out).duration - 1.3) < 1 / 30


def test_cancel_leaves_no_files(engine, talk_clip, tmp_path: Path) -> None:
    cancel = threading.Event()

    def progress(fraction: float, stage: str) -> None:
        if stage == "render" and fraction > 0.3:
            cancel.set()

    with pytest.raises(Cancelled):
        generate_video(
            engine,
            talk_clip,
            tmp_path / "never.mp4",
            GenerateParams(min_resolution=256),
            bundle=engine.avatar("default"),
            progress=progress,
            cancel=cancel,
        )
    assert list(tmp_path.iterdir()) == []


# -- CLI --------------------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str) -> int:
    return cli_main(
        [
            *args,
            "--quiet",
            "--config",
            '{"min_resolution": 256}',
            "--set",
            f"avatars.cache_dir={tmp_path / 'cache'}",
        ]
    )


def test_cli_single_and_batch(
    tmp_path: Path, speech_16k: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    write_wav(audio_dir / "one.wav", speech_16k[: 16000 * 1])
    write_wav(audio_dir / "two.wav", speech_16k[16000 : 16000 + 12000])
    (audio_dir / "notes.txt").write_text("not audio: skipped")

    single = tmp_path / "single.mp4"
    assert (
        _cli(tmp_path, "--image", str(AVATAR), "--audio", str(audio_dir / "one.wav"), "--output", str(single))
        == 0
    )
    assert len(read_video(single)[0]) == 25
    assert "real time" in capsys.readouterr().out

    out_dir = tmp_path / "batch"
    assert _cli(tmp_path, "--image", str(AVATAR), "--audio", str(audio_dir), "--output", str(out_dir)) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["one.mp4", "two.mp4"]
    assert len(read_video(out_dir / "two.mp4")[0]) == math.ceil(0.75 * FPS)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"definitely not audio")
    rc = _cli(
        tmp_path, "--image", str(AVATAR), "--audio", str(bad_audio), "--output", str(tmp_path / "o.mp4")
    )
    assert rc == 1 and "not_audio" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
    assert cli_main(["--image", str(AVATAR), "--audio", "/nope.wav", "--output", "x.mp4"]) == 2
    assert (
        cli_main(["--image", str(AVATAR), "--audio", str(bad_audio), "--output", "x.mp4", "--config", "{bad"])
        == 2
    )


def test_plan_batch_pairs_by_name(tmp_path: Path) -> None:
    images, audio = tmp_path / "img", tmp_path / "aud"
    images.mkdir()
    audio.mkdir()
    for stem in ("ann", "bob"):
        (images / f"{stem}.png").write_bytes(AVATAR.read_bytes())
    write_wav(audio / "ann.wav", np.zeros(1600))
    write_wav(audio / "cid.wav", np.zeros(1600))
    plan = plan_batch(images, audio, tmp_path / "out")
    assert [(i.name, a.name, o.name) for i, a, o in plan] == [("ann.png", "ann.wav", "ann.mp4")]
    assert len(plan_batch(images, audio / "ann.wav", tmp_path / "out")) == 2
